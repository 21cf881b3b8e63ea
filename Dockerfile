# mcas-gateway container image (README "Kubernetes"). Two stages: build with the Rust
# toolchain (cmake for Pingora's zlib-ng), run on debian:bookworm-slim as an unprivileged user.
#
#   docker build -t mcas-gateway .
#   docker run --rm -p 18080:18080 -v $PWD/conf/gateway.yaml:/etc/mcas/gateway.yaml:ro \
#     --env-file gateway.env mcas-gateway
#
# The config is mounted at /etc/mcas/gateway.yaml (a ConfigMap in Kubernetes); secrets come
# as environment variables (a Secret) and are referenced from it as ${VAR}.

FROM rust:1-bookworm AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Debug info stays out of the image; the patched Pingora comes from vendor/ ([patch] in Cargo.toml).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mcas-gateway \
    && install -m 0755 target/release/mcas-gateway /usr/local/bin/mcas-gateway

FROM debian:bookworm-slim
# ca-certificates: TLS to hosted providers verifies against the system roots.
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mcas \
    && install -d -o mcas -g mcas -m 0700 /run/mcas-gateway \
    && install -d -m 0755 /etc/mcas
COPY --from=build /usr/local/bin/mcas-gateway /usr/local/bin/mcas-gateway
COPY conf/gateway.yaml /etc/mcas/gateway.yaml
# Pid file and upgrade socket (README "Runtime directory"): writable by the user, not the
# config's directory (a read-only mount).
ENV RUNTIME_DIRECTORY=/run/mcas-gateway
USER 10001:10001
EXPOSE 18080 18081
ENTRYPOINT ["/usr/local/bin/mcas-gateway"]
CMD ["--config", "/etc/mcas/gateway.yaml"]
