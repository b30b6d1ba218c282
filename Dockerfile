# syntax=docker/dockerfile:1
# The Keyward operator image: one static binary (musl; rustls with ring, so no OpenSSL) on distroless "static"
# (CA certificates and /etc/passwd, no shell, no package manager), running as the non-root user 65532.
#
#   docker build -t keyward:dev .
#   docker run --rm keyward:dev --help
#
# NB: this image is NOT built in CI (there is no container engine on the CI machine); CI checks the chart that runs
# it and the operator binary itself. The Helm chart sets `args: [run, --leader-elect, ...]`, replacing CMD.

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# Native builds only (amd64 → x86_64, arm64 → aarch64): under `docker buildx --platform` the builder runs as the
# target platform, so no cross toolchain is needed.
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
# A smaller, faster release binary without touching Cargo.toml's profiles.
ENV CARGO_PROFILE_RELEASE_LTO=thin \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_DEBUG=false
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --target "$target" --bin keyward \
 && cp "target/$target/release/keyward" /keyward \
 && /keyward --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="keyward" \
      org.opencontainers.image.description="Kubernetes operator for the lifecycle of API keys" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /keyward /keyward
# The distroless "nonroot" user; the chart's securityContext asks for the same (runAsUser 65532, runAsNonRoot).
USER 65532:65532
ENTRYPOINT ["/keyward"]
CMD ["run"]
