# Footfall's container image: every role in one binary (built with the Kafka log and the
# columnar engine, so that dashboards answer any filter with any breakdown),
# chosen per container with `serve --role …` (deploy/k8s). Build from the repository
# root: `docker build -t footfall:0.1.0 .`
#
# Stage 1 builds in the Rust image. The enrichment rules (user agents, bots, referrers)
# are fetched from npm and PyPI here and compiled into the binary, so the running
# container downloads nothing.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/fetch-rules.sh \
    && cargo build --release --locked -p footfall --features kafka,columnar \
    && strip target/release/footfall

# Stage 2: the binary on a slim Debian with CA certificates (TLS to S3 and databases)
# and curl for the health check; no shell tools beyond the base image's.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 footfall \
    && useradd --system --uid 10001 --gid footfall --home-dir /var/lib/footfall --create-home footfall
COPY --from=build /src/target/release/footfall /usr/local/bin/footfall
USER 10001:10001
WORKDIR /var/lib/footfall
# The data directory: the embedded log and rollups (single-node use), or small local
# state for cluster roles.
VOLUME ["/var/lib/footfall"]
EXPOSE 8080
# /healthz says only that the process lives; orchestrators use /readyz for traffic.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["footfall"]
CMD ["--data-dir", "/var/lib/footfall", "serve", "--listen", "0.0.0.0:8080"]
