# Sourced by the bench scripts (after they define `log`): installs Debian packages, with sudo
# when not root.
apt_install() {
  [ $# = 0 ] && return
  log "installing $*"
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$@"
}
