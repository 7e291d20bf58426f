# Build: the whole crate, release profile. protox compiles the protos, so no protoc is needed.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin finmatch

# Run: a small Debian with CA certificates, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 finmatch
COPY --from=build /src/target/release/finmatch /usr/local/bin/finmatch
USER finmatch
ENV FINMATCH_LISTEN_ADDR=0.0.0.0:50051 FINMATCH_LOG_FORMAT=json
EXPOSE 50051 9090
ENTRYPOINT ["finmatch"]
CMD ["serve"]
