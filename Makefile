# planfeed: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test fmt lint bench up down

## Build a release binary and start it with the default configuration (embedded store, port 8000).
run:
	$(CARGO) build --release
	./target/release/planfeed serve

## The complete test suite (unit, store conformance, end-to-end). The ClickHouse tests need
## clickhouse-server on PATH: run scripts/install-clickhouse.sh once (CI does).
test:
	$(CARGO) test --all-targets --no-fail-fast

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## Benchmarks: criterion micro-benchmarks, then the bounded load test (a few seconds per run, on
## 127.0.0.1; installs wrk and oha when missing). Figures and how to read them: docs/performance.md.
bench:
	$(CARGO) bench --bench search
	scripts/loadtest.sh
