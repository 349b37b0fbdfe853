# Multi-stage build of the planfeed binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/planfeed /usr/local/bin/planfeed
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["planfeed"]
CMD ["serve"]
