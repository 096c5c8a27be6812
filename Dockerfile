# syntax=docker/dockerfile:1
#
# The GatewayPool image: the operator and the study router are two commands
# of one program (`gatewaypool operator`, `gatewaypool router`), so a pool's
# routers run the operator's own image.
#
#   docker build -t registry.example.org/gatewaypool/gatewaypool:0.1.0 .
#
# Three stages: the Rust toolchain (for the router's native hot path,
# router/native); the builder, which turns the project and its dependencies
# into wheels, compiling that extension into gatewaypool's; the final image,
# which installs those wheels and nothing else, so no compiler, build tool,
# source tree or pip cache is shipped.
#
# The base image is pinned to an exact Python and Debian release. Pin its
# digest too (python:3.11.14-slim-bookworm@sha256:...) for builds that must
# be byte-for-byte repeatable.

# The Rust toolchain that builds router/native (PyO3): the release the
# project's machines build with. Only its cargo and rustc are taken.
FROM rust:1.95.0-slim-bookworm AS rust


FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH

# rustc links with the system's C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo

WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY router ./router
COPY operator ./operator

# Wheels of gatewaypool and of every dependency. local/ (the demo, the
# benchmark and their synthetic studies) is left out of the build, so the
# image carries neither it nor numpy; `gatewaypool --help` then lists only
# the commands the image has.
# gatewaypool's wheel carries the native extension (setuptools-rust, with
# router/native's Cargo.lock, --locked): a build without it fails here.
RUN pip wheel . -w /wheels


FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="GatewayPool" \
      org.opencontainers.image.description="Study-affine DICOM router and Kubernetes operator for pools of DICOM gateways" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GatewayPool maintainers" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# MALLOC_ARENA_MAX: glibc gives each thread that allocates its own malloc
# arena (up to 8 per core) and keeps what is freed in it. A router runs a
# thread per association, so its RSS grew with how many associations had
# ever run at once; with two arenas it returns to near its baseline (the PDU
# fuzzer's 3000 cases: 15 MiB above the baseline at peak and 3 MiB at the
# end, against 24 and 17 MiB; docs/hostile-input.md), at no throughput cost
# the benchmark can see.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    HOME=/tmp

# Only the wheels from the builder, mounted for this step and never copied
# into a layer; --no-index: nothing is fetched here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels gatewaypool \
 && python -c "import gatewaypool_router._native" \
 && groupadd --system --gid 65532 gatewaypool \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gatewaypool

# Non-root, by number, so Kubernetes can verify runAsNonRoot. The root
# filesystem may be read-only: the program writes only below /tmp.
USER 65532:65532
WORKDIR /tmp

# 11112: router DICOM; 8080: router health, readiness and metrics;
# 8081: operator liveness (kopf).
EXPOSE 11112 8080 8081

ENTRYPOINT ["gatewaypool"]
CMD ["operator"]
