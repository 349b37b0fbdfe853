# planfeed's image: `docker build -t planfeed .`, then
#   docker run -p 8000:8000 -v planfeed-data:/data planfeed
# The embedded store and the spool live in the volume /data; set PLANFEED__* variables to configure
# (config/default.toml lists every key), or mount a local.toml into /etc/planfeed.

# Build stage. Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Stub targets so that cargo compiles the dependencies alone: the library, the binary, and every
# [[bench]] the manifest declares (cargo refuses a manifest whose declared bench file is missing).
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"/\1/p}' Cargo.toml \
       | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches
COPY . .
# COPY keeps the sources' modification times, which may be older than the stubs' build: touch
# them so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin planfeed

FROM debian:bookworm-slim
# curl: the HEALTHCHECK's probe. ca-certificates: https provider feeds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin planfeed \
    && mkdir -p /data /etc/planfeed \
    && chown planfeed:planfeed /data
COPY --from=build /src/target/release/planfeed /usr/local/bin/planfeed
# Listen on every interface inside the container (the built-in default is loopback only, right for
# a process on a host but unreachable through a published port); store and spool in the volume.
ENV PLANFEED__SERVER__LISTEN=0.0.0.0:8000 \
    PLANFEED__STORE__PATH=/data/planfeed.db \
    PLANFEED__SPOOL__PATH=/data/spool \
    PLANFEED_CONFIG_DIR=/etc/planfeed
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000
# /health answers while the process serves HTTP (every role does); the port follows the listen
# address if it is overridden.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${PLANFEED__SERVER__LISTEN##*:}/health\" || exit 1"]
ENTRYPOINT ["planfeed"]
CMD ["serve"]
