#!/usr/bin/env bash
# GatewayPool developer entry point. On a fresh Debian machine:
#
#   ./dev.sh demo    router + three local gateways + real DICOM traffic + report
#   ./dev.sh test    lint, type check and the whole test suite (builds the
#                    Kubernetes control plane the first time: see README)
#   ./dev.sh pytest ARGS   pytest in the test sandbox, with the control plane
#   ./dev.sh bench   the throughput / memory benchmark (prints figures)
#   ./dev.sh bench-handover   time from a scale change to its last bucket moved
#   ./dev.sh bench-autoscale  an autoscaled pool under rising and falling load:
#                             figures, and the plot docs/autoscaling.png
#   ./dev.sh fuzz    the PDU fuzzer against a router, beside a well-formed
#                    sender: figures (--cases N --seed S --workers W)
#   ./dev.sh fuzz-scanner   the long differential run of the StudyInstanceUID
#                    scanner against pydicom (50x the suite's examples)
#   ./dev.sh docs    regenerate docs/configuration.md from the CRD
#
# Each command installs what it needs first: the DICOM peers from Debian
# (dcmtk, orthanc, libgdcm-tools) and a virtualenv in .venv with this project and its
# test tools; the tests also build dicom-rs's DICOM peers from crates.io.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${GATEWAYPOOL_VENV:-.venv}"
PY="${PYTHON:-python3}"

need_debian_packages() {
    local missing=()
    command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
    command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
    # GDCM's gdcmscu: a third DICOM network implementation (neither DCMTK nor pynetdicom).
    command -v gdcmscu >/dev/null 2>&1 || missing+=(libgdcm-tools)
    # The test sandbox and the kubelet stand-in: ip (netns, veth, bridge), unshare, nsenter.
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

need_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating virtualenv $VENV"
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "==> installing gatewaypool and its tools into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[local,test]"
        touch "$stamp"
    fi
}

# dicom-rs's dicom-storescp and dicom-storescu (Rust, from crates.io): a DICOM
# network implementation shared with neither DCMTK nor pynetdicom, as a gateway
# and a sender in the interop tests. Built once into a cache folder keyed by
# the release; later runs only check that it is there.
DICOM_RS_RELEASE=0.10.1
need_dicom_rs() {
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/gatewaypool/dicom-rs-$DICOM_RS_RELEASE"
    if [ ! -x "$dir/bin/dicom-storescp" ] || [ ! -x "$dir/bin/dicom-storescu" ]; then
        local cargo
        cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
        if [ ! -x "$cargo" ]; then
            echo "Rust's cargo is needed to build the dicom-rs test peers (dicom-storescp, dicom-storescu)" >&2
            exit 1
        fi
        echo "==> building dicom-rs $DICOM_RS_RELEASE from crates.io (the first time takes a few minutes)"
        local began=$SECONDS
        rm -rf "$dir.partial.$$"
        "$cargo" install --quiet --locked --root "$dir.partial.$$" \
            "dicom-storescp@$DICOM_RS_RELEASE" "dicom-storescu@$DICOM_RS_RELEASE"
        rm -rf "$dir"
        mv "$dir.partial.$$" "$dir"
        echo "==> dicom-rs built in $((SECONDS - began)) s: $dir/bin"
    fi
    export GATEWAYPOOL_DICOM_RS="$dir/bin"
}

# The project's image, as far as it can be had without a container engine:
# its wheels built as the Dockerfile's builder stage builds them (from the
# Dockerfile's sources only: no local/, no tests), installed with --no-index
# into a clean virtualenv as its last stage installs them. The test cluster's
# pods of the gatewaypool image (the operator, the routers) run from it, so
# they run what the image carries and nothing the tests' virtualenv adds.
# Kept in .image/ (one per checkout); the dependencies' wheels are fetched
# again only when pyproject.toml changes, the project's own wheel whenever
# its sources do (in place, in a few seconds, under a lock: runs started
# from one checkout at once do not build over each other).
IMAGE_SOURCES=(pyproject.toml README.md common router operator)
need_image() {
    local dir=.image
    local deps sources
    mkdir -p "$dir"
    exec {image_lock}>"$dir/.lock"
    flock "$image_lock"
    deps=$(sha256sum pyproject.toml | cut -c1-16)
    sources=$(find "${IMAGE_SOURCES[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    if [ ! -f "$dir/venv/.deps-$deps" ]; then
        echo "==> building the image's environment (.image/): wheels of gatewaypool and its dependencies"
        rm -rf "$dir/src" "$dir/wheels" "$dir/venv"
        mkdir -p "$dir/src"
        tar -cf - --exclude=__pycache__ "${IMAGE_SOURCES[@]}" | tar -xf - -C "$dir/src"
        "$VENV/bin/python" -m pip wheel -q "./$dir/src" -w "$dir/wheels"
        "$PY" -m venv "$dir/venv"
        "$dir/venv/bin/python" -m pip install -q --no-index --find-links "$dir/wheels" gatewaypool
        touch "$dir/venv/.deps-$deps" "$dir/venv/.sources-$sources"
    elif [ ! -f "$dir/venv/.sources-$sources" ]; then
        echo "==> rebuilding gatewaypool's wheel in the image's environment (.image/)"
        rm -rf "$dir/src" "$dir/venv"/.sources-* "$dir/wheels"/gatewaypool-*.whl
        mkdir -p "$dir/src"
        tar -cf - --exclude=__pycache__ "${IMAGE_SOURCES[@]}" | tar -xf - -C "$dir/src"
        "$VENV/bin/python" -m pip wheel -q --no-deps "./$dir/src" -w "$dir/wheels"
        "$dir/venv/bin/python" -m pip install -q --no-index --no-deps --force-reinstall \
            "$dir/wheels"/gatewaypool-*.whl
        touch "$dir/venv/.sources-$sources"
    fi
    exec {image_lock}>&-
    export GATEWAYPOOL_IMAGE="$PWD/$dir/venv"
}

# The real Kubernetes control plane (tests/controlplane), built once into a
# cache folder keyed by its go.sum and sources; later runs start it in seconds.
need_controlplane() {
    local module=tests/controlplane
    local key
    key=$(cat "$module/go.mod" "$module/go.sum" "$module"/*.go | sha256sum | cut -c1-16)
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/gatewaypool/controlplane-$key"
    if [ ! -x "$dir/controlplane" ]; then
        if ! command -v go >/dev/null 2>&1; then
            echo "Go 1.26 or newer is needed to build the test control plane (tests/controlplane)" >&2
            exit 1
        fi
        echo "==> building the Kubernetes control plane from Go modules (the first time takes a while)"
        local began=$SECONDS
        mkdir -p "$dir"
        (cd "$module" && go build -trimpath -o "$dir/controlplane.partial" .)
        mv "$dir/controlplane.partial" "$dir/controlplane"
        echo "==> control plane built in $((SECONDS - began)) s: $dir/controlplane"
    fi
    export GATEWAYPOOL_CONTROLPLANE="$dir/controlplane"
}

# metrics-server (tests/metricsserver: the upstream program, required as a Go
# tool at the release its go.mod names), built once the same way: it serves
# metrics.k8s.io in the test cluster, so the real HPA controller scales on CPU.
need_metrics_server() {
    local module=tests/metricsserver
    local key
    key=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/gatewaypool/metrics-server-$key"
    if [ ! -x "$dir/metrics-server" ]; then
        echo "==> building metrics-server from Go modules (the first time takes a few minutes)"
        local began=$SECONDS
        local version
        version=$(awk '$1 == "sigs.k8s.io/metrics-server" { print $2 }' "$module/go.mod")
        mkdir -p "$dir"
        (cd "$module" && go build -trimpath \
            -ldflags "-X k8s.io/client-go/pkg/version.gitVersion=$version" \
            -o "$dir/metrics-server.partial" sigs.k8s.io/metrics-server/cmd/metrics-server)
        mv "$dir/metrics-server.partial" "$dir/metrics-server"
        echo "==> metrics-server built in $((SECONDS - began)) s: $dir/metrics-server"
    fi
    export GATEWAYPOOL_METRICS_SERVER="$dir/metrics-server"
}

# Prometheus (tests/prometheus: the upstream program, required as a Go tool at
# the release its go.mod names, with only its Kubernetes service discovery
# compiled in) and the stand-in for Prometheus Adapter (tests/metricsadapter,
# on sigs.k8s.io/custom-metrics-apiserver), built once the same way: they
# serve the routers' studies in flight as custom.metrics.k8s.io in the test
# cluster, so the real HPA controller scales a pool on them.
need_prometheus() {
    local module=tests/prometheus
    local key
    key=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/gatewaypool/prometheus-$key"
    if [ ! -x "$dir/prometheus" ]; then
        echo "==> building Prometheus from Go modules (the first time: about 5 minutes of CPU)"
        local began=$SECONDS
        local version  # the release the module version stands for (v0.316.0: 3.16.0)
        version=$(cd "$module" && cat "$(go list -m -f '{{.Dir}}' github.com/prometheus/prometheus)/VERSION")
        mkdir -p "$dir"
        (cd "$module" && go build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
            -ldflags "-X github.com/prometheus/common/version.Version=$version" \
            -o "$dir/prometheus.partial.$$" github.com/prometheus/prometheus/cmd/prometheus)
        mv "$dir/prometheus.partial.$$" "$dir/prometheus"
        echo "==> Prometheus built in $((SECONDS - began)) s: $dir/prometheus"
    fi
    export GATEWAYPOOL_PROMETHEUS="$dir/prometheus"
}

need_metrics_adapter() {
    local module=tests/metricsadapter
    local key
    key=$(cat "$module/go.mod" "$module/go.sum" "$module"/*.go | sha256sum | cut -c1-16)
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/gatewaypool/metrics-adapter-$key"
    if [ ! -x "$dir/metricsadapter" ]; then
        echo "==> building the Prometheus Adapter stand-in from Go modules (the first time: about 4 minutes of CPU)"
        local began=$SECONDS
        mkdir -p "$dir"
        (cd "$module" && go build -trimpath -o "$dir/metricsadapter.partial.$$" .)
        mv "$dir/metricsadapter.partial.$$" "$dir/metricsadapter"
        echo "==> Prometheus Adapter stand-in built in $((SECONDS - began)) s: $dir/metricsadapter"
    fi
    export GATEWAYPOOL_METRICS_ADAPTER="$dir/metricsadapter"
}

# Whether a pytest run of these arguments may reach the tests that need
# Prometheus and the adapter: the whole suite, or any autoscaling test.
reaches_custom_metrics() {
    local arg chosen=0
    for arg in "$@"; do
        case "$arg" in
            *autoscal*) return 0 ;;
            tests/* | *.py | *::*) chosen=1 ;;
        esac
    done
    [ "$chosen" -eq 0 ]
}

cmd="${1:-help}"
shift || true
case "$cmd" in
    demo)
        need_debian_packages
        need_venv
        exec "$VENV/bin/gatewaypool" local "$@"
        ;;
    bench)
        need_debian_packages
        need_venv
        exec "$VENV/bin/gatewaypool" bench "$@"
        ;;
    bench-handover)
        need_debian_packages
        need_venv
        PYTHONPATH=tests exec "$VENV/bin/python" tests/benchmarks/handover.py "$@"
        ;;
    bench-autoscale)
        need_debian_packages
        need_venv
        "$VENV/bin/python" -c "import matplotlib" 2>/dev/null \
            || "$VENV/bin/python" -m pip install -q -e ".[local,test,plot]"
        need_controlplane
        need_image
        need_prometheus
        need_metrics_adapter
        PYTHONPATH=tests exec tests/sandbox.sh "$VENV/bin/python" tests/benchmarks/autoscaling.py "$@"
        ;;
    fuzz)
        need_debian_packages
        need_venv
        PYTHONPATH=tests exec "$VENV/bin/python" -m support.fuzzrun "$@"
        ;;
    fuzz-scanner)
        need_venv
        GATEWAYPOOL_FUZZ=long exec "$VENV/bin/pytest" tests/unit/test_scanner_differential.py \
            -p no:timeout -p no:cacheprovider --hypothesis-show-statistics "$@"
        ;;
    docs)
        need_venv
        PYTHONPATH=tests exec "$VENV/bin/python" -m support.configref "$@"
        ;;
    test)
        need_debian_packages
        need_venv
        need_dicom_rs
        echo "==> ruff"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        echo "==> mypy (strict)"
        "$VENV/bin/mypy"
        need_controlplane
        need_image
        need_metrics_server
        need_prometheus
        need_metrics_adapter
        echo "==> pytest, in the test sandbox"
        exec tests/sandbox.sh "$VENV/bin/pytest" "$@"
        ;;
    pytest)
        need_debian_packages
        need_venv
        need_dicom_rs
        need_controlplane
        need_image
        need_metrics_server
        if reaches_custom_metrics "$@"; then
            need_prometheus
            need_metrics_adapter
        fi
        exec tests/sandbox.sh "$VENV/bin/pytest" "$@"
        ;;
    *)
        sed -n '2,18p' "$0"
        exit 2
        ;;
esac
