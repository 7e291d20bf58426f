# syntax=docker/dockerfile:1
# Build: the whole crate, release profile. protox compiles the protos, so no protoc is needed.
# BuildKit cache mounts keep the crate registry and target/ between builds: a change to the
# sources recompiles finmatch, not its dependencies.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin finmatch \
    && cp target/release/finmatch /usr/local/bin/finmatch

# Run: a small Debian with CA certificates, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 finmatch
COPY --from=build /usr/local/bin/finmatch /usr/local/bin/finmatch
USER finmatch
ENV FINMATCH_LISTEN_ADDR=0.0.0.0:50051 FINMATCH_LOG_FORMAT=json
EXPOSE 50051 9090
# Healthy while every finmatch service answers SERVING (they answer NOT_SERVING while PostgreSQL
# is unreachable). It asks FINMATCH_SERVER, http://127.0.0.1:50051 unless set: change both when
# the listen port changes. The start period covers the wait for PostgreSQL and the migrations.
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["finmatch", "health", "--timeout-secs", "3"]
ENTRYPOINT ["finmatch"]
CMD ["serve"]
