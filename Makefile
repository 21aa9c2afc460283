# The one test command: `make test` runs every test, normal build and simulation build.
.PHONY: test test-normal test-sim
test: test-normal test-sim

test-normal:
	cargo test --workspace

# Simulation tests: the unchanged node code inside madsim (seeded, deterministic).
test-sim:
	RUSTFLAGS="--cfg madsim" cargo test -p sim
