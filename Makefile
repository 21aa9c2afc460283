# The one test command: `make test` runs every test, normal build and simulation build.
.PHONY: test test-normal test-sim deploy-test
test: test-normal test-sim

test-normal:
	cargo test --workspace

# Simulation tests: the unchanged node code inside madsim (seeded, deterministic).
test-sim:
	RUSTFLAGS="--cfg madsim" cargo test -p sim
	RUSTFLAGS="--cfg madsim" cargo test -p node --test sim_smoke

# A longer simulation campaign (not part of `make test`); the default is the swarm (each seed
# draws its own configuration), e.g.
#   make campaign SEEDS=1..1000 DURATION_S=30
#   make campaign SCENARIO=partitions SEEDS=1..1000 NODES=5 DURATION_S=60
SCENARIO ?= swarm
SEEDS ?= 1..200
NODES ?=
DURATION_S ?= 60
.PHONY: campaign
campaign:
	cargo run -p sim --release -- --seeds $(SEEDS) --scenario $(SCENARIO) --duration-s $(DURATION_S) $(if $(NODES),--nodes $(NODES))

# The mutation score: every planted bug (node/src/bugs.rs) through the default swarm campaign,
# and the same campaign without bugs; prints per bug the seeds to the first failure and the share
# of seeds failing (docs/SIMULATION.md keeps the table), e.g.
#   make mutation SEEDS=1..100 MUTATION_DURATION_S=20
MUTATION_DURATION_S ?= 20
.PHONY: mutation
mutation:
	cargo run -p sim --release -- --mutation --seeds $(if $(filter file,$(origin SEEDS)),1..100,$(SEEDS)) --duration-s $(MUTATION_DURATION_S)

# The container fault test: a Compose cluster, a checked workload, docker kill / iptables
# partition / restart, then a rolling restart (needs a Docker engine; see deploy/test.sh).
deploy-test:
	bash deploy/test.sh

# quorumkv against etcd and Redis, same machine, same YCSB driver, one run: installs what is
# missing (Debian etcd-server, redis-server, protobuf-compiler), writes target/bench/results.md
# and SVG charts. BENCH_SHORT=1: about two minutes. Knobs: workloads/bench/bench-peers.sh.
.PHONY: bench-peers
bench-peers:
	bash workloads/bench/bench-peers.sh

# The storage benchmarks of issue 11 against release binaries on loopback (ports 20000-20604):
# quorumkv vs etcd (64 and 1 writers, 256 B), growth to BENCH_STORAGE_MIB MiB per replica
# (1 KiB values, per-round puts/s, latency, RSS, disk), restart of a node holding that data,
# a node joining under 64 writers. Default 200 MiB (minutes); FULL=1 is the issue's 2 GiB.
# Installs jq, etcd-server and protobuf-compiler when missing (apt-get). Writes
# target/bench/storage.md and storage.jsonl; knobs in workloads/bench/bench-storage.sh.
BENCH_STORAGE_MIB ?= $(if $(FULL),2048,200)
.PHONY: bench-storage
bench-storage:
	BENCH_STORAGE_MIB=$(BENCH_STORAGE_MIB) bash workloads/bench/bench-storage.sh

# Every cargo-fuzz target for FUZZ_SECONDS seconds each, one after another (fuzz/README.md).
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh
