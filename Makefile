# planfeed: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run demo test test-setup check-deploy contract-test readme-clickhouse fmt lint bench up down

## Build a release binary and start it with the default configuration (embedded store, port 8000).
run:
	$(CARGO) build --release
	./target/release/planfeed serve

## A working service in one command: the provider simulator serves the sample feeds
## (tests/fixtures/provider) in rotation, planfeed ingests them into a throwaway embedded store and
## serves the API on http://127.0.0.1:8000. Prints a search; Ctrl-C stops both.
demo:
	CARGO=$(CARGO) ./scripts/demo.sh

## The complete test suite (the layout check of ADR 13, unit, store conformance, end-to-end, then the schemathesis contract test
## against the running binary, the README's ClickHouse commands against a real server (with the
## debug build the tests made), a current ClickHouse's SQL, and the deployment files: Prometheus
## rules and a real Prometheus scraping planfeed, Dockerfile, compose files, systemd unit).
## Installs what it needs first (test-setup). A test whose server is missing fails, saying what to
## install; PLANFEED_SKIP_CLICKHOUSE=1 skips the ClickHouse and cluster tests instead (nothing of
## theirs is installed then) and the run ends by counting the skipped tests.
SKIPPED := $(or $(CARGO_TARGET_DIR),target)/skipped-tests.txt

test: test-setup
	@rm -f $(SKIPPED)
	./scripts/check-structure.sh
	$(CARGO) test --no-fail-fast
	CARGO=$(CARGO) ./scripts/contract-test.sh
	README_PROFILE=debug ./scripts/readme-clickhouse.sh
	./scripts/current-clickhouse.sh
	CARGO=$(CARGO) ./scripts/check-deploy.sh
	@if [ -s $(SKIPPED) ]; then \
		echo "$$(wc -l < $(SKIPPED)) tests SKIPPED (by choice, see $(SKIPPED)):"; sort $(SKIPPED); \
	else echo "no test skipped"; fi

## What the test suite needs besides Rust: clickhouse-server and ZooKeeper (Debian's packages; not
## with PLANFEED_SKIP_CLICKHOUSE=1), python3-venv, curl, promtool/prometheus, systemd-analyze and
## hadolint. Idempotent; .ci/run calls it too.
test-setup:
ifeq ($(PLANFEED_SKIP_CLICKHOUSE),1)
	@echo "PLANFEED_SKIP_CLICKHOUSE=1: ClickHouse and ZooKeeper are not installed; their tests are skipped"
else
	bash scripts/install-clickhouse.sh
	bash scripts/install-zookeeper.sh
endif
	bash scripts/install-test-tools.sh

## The deployment files alone: Prometheus rules (and their unit tests), a real Prometheus scraping
## a running planfeed, the Dockerfile (hadolint), the compose files and the systemd unit.
check-deploy:
	bash scripts/install-test-tools.sh
	CARGO=$(CARGO) ./scripts/check-deploy.sh

## The README's "Running on ClickHouse" block, exactly as written (release build), against a
## throwaway clickhouse-server with a password.
readme-clickhouse:
	./scripts/readme-clickhouse.sh

## The contract test alone: schemathesis against the running service and openapi.yaml.
contract-test:
	CARGO=$(CARGO) ./scripts/contract-test.sh

## Benchmarks (release build), one command per line; each prints its figures: ClickHouse writes and
## reads, criterion figures of the feed parser, the ingestion pipeline, the peak memory of
## `planfeed ingest --once` on big base plans and on a 1 GB feed, criterion micro-benchmarks of
## search, ClickHouse search (cold, warm and direct reads side by side, far dates, a random replay),
## /search over HTTP (warm 1-day and 1-month plain vs gzip, 304s, each against a bare warp handler),
## searches at 5/s over a 40 s ClickHouse freeze (p50/p99/max), then the bounded load test
## (a few seconds per run, on 127.0.0.1; installs wrk when missing), then warm 1-day searches idle and
## during continuous ingestion of a 61 MB changing feed, per ingestion profile (scripts/mixed.sh).
## See docs/performance.md.
bench:
	$(CARGO) bench --bench clickhouse
	$(CARGO) bench --bench parser
	$(CARGO) bench --bench pipeline
	$(CARGO) bench --bench ingest_memory
	$(CARGO) bench --bench search
	$(CARGO) bench --bench search_clickhouse
	$(CARGO) bench --bench http
	PLANFEED_FREEZE_SECS=40 $(CARGO) test --release --test search_cache a_hung_clickhouse_never_holds_a_search -- --nocapture
	scripts/loadtest.sh
	scripts/mixed.sh

## planfeed on ClickHouse with the provider simulator (docker-compose.yml; needs a Docker engine).
up:
	docker compose up --build -d

down:
	docker compose down

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

