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

## Benchmarks; each prints its figures.
bench:
	$(CARGO) bench --bench clickhouse
	$(CARGO) bench --bench pipeline

fmt:
	$(CARGO) fmt

## Benchmarks (release build): ingestion throughput and peak memory. One line per command.

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## planfeed + ClickHouse + the provider simulator in containers (needs a Docker engine).
up:
	docker compose up --build -d

down:
	docker compose down
