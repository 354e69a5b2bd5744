# premium-operator image: a static (musl) binary on distroless, running as a non-root user.
#
#   docker build -t premium-operator:dev .
#
# x86_64 only as written: ring's C code is compiled with musl-gcc from musl-tools; another
# architecture needs its musl cross compiler (set CC_<target> and RUST_TARGET).
# The chart runs it with a read-only root filesystem: the binary writes nothing to disk.
# Not built in this repository's CI (no container runtime there); the binary it packages is.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_TARGET=x86_64-unknown-linux-musl
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "${RUST_TARGET}"
WORKDIR /src
# Cargo checks every target Cargo.toml declares (lib, bin, bench), so all of them come in.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY bench ./bench
RUN cargo build --release --locked --target "${RUST_TARGET}" --bin premium-operator \
    && cp "target/${RUST_TARGET}/release/premium-operator" /premium-operator

# distroless/static: no shell, no package manager, CA certificates and a nonroot user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /premium-operator /usr/local/bin/premium-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/premium-operator"]
CMD ["run", "--metrics-address=0.0.0.0:8080"]
