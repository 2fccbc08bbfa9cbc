# Sluice container image: the `sluice` binary, ONNX Runtime baked in from the pinned PyPI wheel,
# the bundled models, a non-root user and /data as the data directory. See deploy/README-image.md.
#
# From source, on public images (needs crates.io, PyPI and Debian's mirrors at build time only):
#   docker build -t sluice .
# From a binary built on the host (no Rust toolchain image needed; what deploy/build-image.sh does):
#   docker build --target prebuilt -t sluice .   # needs target/release/sluice and ONNX Runtime in
#                                                # target/test-runtime/runtimes/onnxruntime-<version>/
# Other base images (e.g. one made by deploy/base-image.sh, or a mirror of the public ones):
#   --build-arg RUNTIME_IMAGE=sluice-base:bookworm --build-arg BUILD_IMAGE=my-mirror/rust:1-bookworm
#
# Works with the legacy builder (DOCKER_BUILDKIT=0), which runs every stage before its target: the
# prebuilt stages come first, so `--target prebuilt` never starts the Rust build, and they tolerate
# missing files, so the default target builds without them.

# Debian bookworm on both sides, so the binary built in the build stage finds the glibc it was
# linked against in the runtime stage.
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# Keep in step with ORT_VERSION in crates/backend-ort/src/provision.rs.
ARG ORT_VERSION=1.32.0

# ---------------------------------------------------------------------------------------------
# What both final images share: user, directories, models, environment, ports, entrypoint.
FROM ${RUNTIME_IMAGE} AS runtime-base
ARG ORT_VERSION

RUN set -eu; \
    groupadd --system --gid 10001 sluice; \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin sluice; \
    mkdir -p /data /opt/sluice/lib /opt/sluice/models; \
    chown 10001:10001 /data; \
    chmod 0750 /data

COPY models/*.onnx /opt/sluice/models/

# SLUICE_HOME: registry, artifacts, control plane state, replica logs; the only place sluice
#   writes apart from /tmp, so the root filesystem can be read-only.
# SLUICE_ORT_LIB: the baked-in ONNX Runtime; sluice never fetches one (no pip, no network).
# SLUICE_MODELS_DIR: what `sluice up` registers and deploys.
# SLUICE_HOST / SLUICE_CONTROL_HOST: listen on all interfaces (serve and gateway on 8000,
#   control plane on 8001); replicas started by the control plane stay on 127.0.0.1.
ENV SLUICE_HOME=/data \
    SLUICE_ORT_LIB=/opt/sluice/lib/libonnxruntime.so.${ORT_VERSION} \
    SLUICE_MODELS_DIR=/opt/sluice/models \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_CONTROL_HOST=0.0.0.0 \
    HOME=/data \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000 8001
ENTRYPOINT ["sluice"]
CMD ["up"]

# ---------------------------------------------------------------------------------------------
# Final image from files in the build context (`--target prebuilt`), for tests and CI: a release
# binary built on a glibc no newer than the runtime image's (Debian 12: 2.36), and the two files of
# the onnxruntime wheel laid out as sluice provisions them (target/test-runtime is where the tests
# keep theirs). deploy/build-image.sh stages exactly these in a small context.
#
# The legacy builder (DOCKER_BUILDKIT=0) runs every stage before the one it builds, so these two
# stages also run when it builds the default target from source, where the files may be absent.
# The models (always in the context) make the COPYs succeed then; the stage says what is missing.
FROM runtime-base AS prebuilt-files
ARG ORT_VERSION
USER root
COPY models/*.onnx target/release/sluic[e] /prebuilt/bin/
COPY models/*.onnx target/test-runtime/runtimes/onnxruntime-${ORT_VERSION}/libonnxruntime.s[o].${ORT_VERSION} target/test-runtime/runtimes/onnxruntime-${ORT_VERSION}/libonnxruntime_providers_shared.s[o] /prebuilt/lib/
RUN set -eu; \
    rm -f /prebuilt/bin/*.onnx /prebuilt/lib/*.onnx; \
    for f in bin/sluice lib/libonnxruntime.so.${ORT_VERSION} lib/libonnxruntime_providers_shared.so; do \
      [ -e /prebuilt/$f ] || echo "prebuilt-files: $f is not in the build context: fine for the default target, but an image built with --target prebuilt lacks it"; \
    done

FROM runtime-base AS prebuilt
COPY --from=prebuilt-files /prebuilt/lib/ /opt/sluice/lib/
COPY --from=prebuilt-files /prebuilt/bin/ /usr/local/bin/

# ---------------------------------------------------------------------------------------------
# Build stage: ONNX Runtime from the pinned wheel (pip only here, never in the final image), then
# the release binary.
FROM ${BUILD_IMAGE} AS build
ARG ORT_VERSION
# pip's own settings for a mirror or a TLS-intercepting proxy, e.g.
# --build-arg PIP_INDEX_URL=https://mirror/simple, --build-arg PIP_TRUSTED_HOST="pypi.org files.pythonhosted.org".
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN set -eux; \
    if ! python3 -m pip --version >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip; \
      rm -rf /var/lib/apt/lists/*; \
    fi
RUN set -eux; \
    python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
      -d /tmp/wheel "onnxruntime==${ORT_VERSION}"; \
    mkdir -p /out/ort; \
    python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open("/out/ort/" + n, "wb").write(z.read("onnxruntime/capi/" + n)) for n in sys.argv[2:]]' \
      /tmp/wheel/onnxruntime-*.whl "libonnxruntime.so.${ORT_VERSION}" libonnxruntime_providers_shared.so; \
    rm -rf /tmp/wheel; \
    ls -l /out/ort

WORKDIR /src
# Only what the workspace's manifests name: the runtime image gets the models separately.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY tests tests
# Without the release profile's line tables (about 100 of its 130 MB): symbols stay, so a
# panic's backtrace still names its functions.
RUN set -eux; \
    cargo build --release --locked -p sluice-cli; \
    strip --strip-debug -o /out/sluice target/release/sluice; \
    /out/sluice --version

# ---------------------------------------------------------------------------------------------
# Final image from source (the default target).
FROM runtime-base AS runtime
ARG ORT_VERSION
COPY --from=build /out/ort/ /opt/sluice/lib/
COPY --from=build /out/sluice /usr/local/bin/sluice
RUN ["sluice", "--version"]
