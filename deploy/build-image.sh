#!/usr/bin/env bash
# Builds the quorumkv image from this machine's release binary, without a registry:
# FROM scratch + the stripped binary + the libraries `ldd` lists + the dynamic loader.
#   deploy/build-image.sh            # cargo build --release, then docker build
#   QUORUMKV_IMAGE=quorumkv:dev SKIP_CARGO=1 deploy/build-image.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=${QUORUMKV_IMAGE:-quorumkv:latest}
uid=10001

profile=${QKV_PROFILE:-release}   # or debug (stripped, like release)
if [ -z "${SKIP_CARGO:-}" ]; then
    (cd "$root" && cargo build $([ "$profile" = release ] && echo --release) -p node --bin quorumkv)
fi
binary=$root/target/$profile/quorumkv
[ -x "$binary" ] || { echo "error: $binary not built" >&2; exit 2; }

stage=$root/deploy/rootfs
rm -rf "$stage"
mkdir -p "$stage/usr/local/bin" "$stage/data" "$stage/etc"
strip -o "$stage/usr/local/bin/quorumkv" "$binary"
# Every library the binary links (resolved through symlinks, kept at its path) and the loader.
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done
# Name lookups (member host names) through /etc/hosts and Docker's DNS.
printf 'hosts: files dns\n' > "$stage/etc/nsswitch.conf"
printf 'root:x:0:0::/:/nonexistent\nquorumkv:x:%s:%s::/data:/nonexistent\n' $uid $uid > "$stage/etc/passwd"
printf 'root:x:0:\nquorumkv:x:%s:\n' $uid > "$stage/etc/group"

chown -R $uid:$uid "$stage/data"
tar --numeric-owner -C "$stage" -cf "$root/deploy/rootfs.tar" .
docker build -q -t "$image" -f "$root/deploy/Dockerfile" "$root/deploy" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image: $((size / 1000)) kB ($(ls "$stage"/lib*/* "$stage"/usr/lib*/*/* 2>/dev/null | wc -l) libraries)"
