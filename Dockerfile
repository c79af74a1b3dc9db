# syntax=docker/dockerfile:1.7
#
# One image per Floodgate binary, all from this file:
#
#   docker build --build-arg BIN=ingress -t ghcr.io/floodgate/ingress:0.1.0 .
#
# BIN is one of: ingress, waiting-room, booking-worker, payment-worker, notifier,
# gateway-simulator, smtp-sink (loadgen too, though it is not deployed). The Kubernetes
# manifests (k8s/) expect ghcr.io/floodgate/<BIN>:<tag>.
#
# Builder: the official Rust image (Debian bookworm, the same glibc as the runtime image).
# Runtime: distroless/cc (glibc, libgcc, CA certificates, no shell, no package manager), the
# binary alone, as a fixed non-root user.
#
# What the binaries need at run time, from the workspace's Cargo.toml:
# - TLS is rustls everywhere (sqlx, redis, lapin, reqwest, lettre, jsonwebtoken) with aws-lc-rs
#   as its crypto provider, compiled into the binary: no OpenSSL, no libssl.
# - redis and lapin (rustls-native-certs) and reqwest (rustls-platform-verifier) trust the
#   system CA store (/etc/ssl/certs), which distroless/cc ships; lettre and sqlx carry
#   webpki-roots. PostgreSQL's private CA comes from a mounted file (PGSSLROOTCERT).
# - Migrations are embedded at build time (common/src/db.rs: sqlx::migrate!("../migrations")),
#   so `ingress migrate` needs no migrations folder in the image.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
ARG BIN
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io downloads and the compiled dependencies between builds, so a
# change to one crate recompiles that crate and what depends on it. The target directory is a
# cache mount, hence the binary is copied out in the same step. `--locked`: Cargo.lock decides.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    if [ -z "${BIN:-}" ]; then echo "--build-arg BIN=<binary> is required" >&2; exit 1; fi; \
    cargo build --release --locked --bin "${BIN}"; \
    install -D -m 0755 "target/release/${BIN}" /out/floodgate

# :nonroot is uid/gid 65532. Pin it by digest in CI (gcr.io/distroless/cc-debian12@sha256:...).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG BIN
LABEL org.opencontainers.image.title="floodgate-${BIN}" \
      org.opencontainers.image.description="Floodgate ${BIN}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The binary under one fixed name, so that ENTRYPOINT (which cannot expand build arguments)
# is the same for every image; the image's name says which binary it is.
COPY --from=builder /out/floodgate /usr/local/bin/floodgate
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# Default ports (DESIGN.md "Processes"): ingress API 8080; admin ports ingress 9100,
# waiting-room 9101, booking-worker 9102, payment-worker 9103, notifier 9104; gateway-simulator
# 8090; smtp-sink 2525. The binaries listen on 127.0.0.1 unless API_LISTEN / ADMIN_LISTEN /
# GATEWAY_SIM_LISTEN / SMTP_SINK_LISTEN say otherwise (the manifests set 0.0.0.0:<port>).
EXPOSE 8080 8090 2525 9100 9101 9102 9103 9104
# SIGTERM (the default stop signal) makes every process drain.
ENTRYPOINT ["/usr/local/bin/floodgate"]
