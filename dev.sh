#!/usr/bin/env bash
# GatewayPool developer entry point. On a fresh Debian machine:
#
#   ./dev.sh demo    router + three local gateways + real DICOM traffic + report
#   ./dev.sh test    lint, type check and the whole test suite (builds the
#                    Kubernetes control plane the first time: see README),
#                    with each stage's time
#   ./dev.sh pytest ARGS   pytest in the test sandbox, with the control plane
#   ./dev.sh check   lint and type check only (no Debian packages)
#   ./dev.sh unit [ARGS]   the unit tests only (or the tests/unit paths in
#                    ARGS), in parallel (no Debian packages, no cluster:
#                    about a minute)
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
    # The spool's durability test reads the router's fsync and rename calls.
    command -v strace >/dev/null 2>&1 || missing+=(strace)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# cargo, for the router's native hot path (router/native) and the dicom-rs
# peers: on the PATH, or where rustup puts it.
need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "Rust's cargo is needed to build the router's native hot path (router/native)" >&2
        exit 1
    fi
}

# A key of the native hot path's sources: `pip install -e` built the
# extension in place, so a change to them (and not to pyproject.toml) must
# rebuild it.
native_sources_key() {
    find router/native -path router/native/target -prune -o -type f -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

need_venv() {
    need_cargo
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating virtualenv $VENV"
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
    local native="$VENV/.native-$(native_sources_key)"
    if [ ! -f "$stamp" ]; then
        echo "==> installing gatewaypool and its tools into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        rm -f "$VENV"/.native-*
        "$VENV/bin/python" -m pip install -q -e ".[local,test]"
        touch "$stamp" "$native"
    fi
    if [ ! -f "$native" ]; then
        echo "==> building the router's native hot path (router/native) into $VENV"
        "$VENV/bin/python" -m pip install -q --no-deps -e .
        rm -f "$VENV"/.native-*
        touch "$native"
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
# What the Dockerfile copies into its build, fresh, into folder $1.
copy_image_sources() {
    rm -rf "$1"
    mkdir -p "$1"
    tar -cf - --exclude=__pycache__ --exclude=router/native/target --exclude='*.so' \
        "${IMAGE_SOURCES[@]}" | tar -xf - -C "$1"
}

need_image() {
    local dir=.image
    local deps sources
    mkdir -p "$dir"
    exec {image_lock}>"$dir/.lock"
    flock "$image_lock"
    deps=$(sha256sum pyproject.toml | cut -c1-16)
    sources=$(find "${IMAGE_SOURCES[@]}" -path router/native/target -prune -o -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    # The wheel's Rust build keeps cargo's folder here: a rebuild after a
    # change of sources compiles only what changed.
    local cargo_target="$PWD/$dir/cargo-target"
    if [ ! -f "$dir/venv/.deps-$deps" ]; then
        echo "==> building the image's environment (.image/): wheels of gatewaypool and its dependencies"
        rm -rf "$dir/wheels" "$dir/venv"
        copy_image_sources "$dir/src"
        CARGO_TARGET_DIR="$cargo_target" "$VENV/bin/python" -m pip wheel -q "./$dir/src" -w "$dir/wheels"
        "$PY" -m venv "$dir/venv"
        "$dir/venv/bin/python" -m pip install -q --no-index --find-links "$dir/wheels" gatewaypool
        touch "$dir/venv/.deps-$deps" "$dir/venv/.sources-$sources"
    elif [ ! -f "$dir/venv/.sources-$sources" ]; then
        echo "==> rebuilding gatewaypool's wheel in the image's environment (.image/)"
        rm -rf "$dir/venv"/.sources-* "$dir/wheels"/gatewaypool-*.whl
        copy_image_sources "$dir/src"
        CARGO_TARGET_DIR="$cargo_target" \
            "$VENV/bin/python" -m pip wheel -q --no-deps "./$dir/src" -w "$dir/wheels"
        "$dir/venv/bin/python" -m pip install -q --no-index --no-deps --force-reinstall \
            "$dir/wheels"/gatewaypool-*.whl
        touch "$dir/venv/.sources-$sources"
    fi
    exec {image_lock}>&-
    export GATEWAYPOOL_IMAGE="$PWD/$dir/venv"
}

# A Go program of the test cluster, built once into a cache folder keyed by
# its module (go.mod, go.sum and our own .go files there); later runs only
# check that it is there. The variable VAR names the binary for the tests.
#   go_program VAR CACHE-NAME BINARY MODULE PACKAGE "WHAT" [go build flags...]
go_cache_folder() {  # CACHE-NAME MODULE
    local key
    key=$(find "$2" -maxdepth 1 -name '*.go' -print0 | LC_ALL=C sort -z \
        | xargs -0 cat "$2/go.mod" "$2/go.sum" | sha256sum | cut -c1-16)
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/gatewaypool/$1-$key"
}

go_program() {
    local variable=$1 name=$2 binary=$3 module=$4 package=$5 what=$6
    shift 6
    local dir
    dir=$(go_cache_folder "$name" "$module")
    if [ ! -x "$dir/$binary" ]; then
        if ! command -v go >/dev/null 2>&1; then
            echo "Go 1.26 or newer is needed to build $what ($module)" >&2
            exit 1
        fi
        echo "==> building $what from Go modules (the first time takes minutes: see README)"
        local began=$SECONDS
        mkdir -p "$dir"
        (cd "$module" && go build -trimpath "$@" -o "$dir/$binary.partial.$$" "$package")
        mv "$dir/$binary.partial.$$" "$dir/$binary"
        echo "==> $what built in $((SECONDS - began)) s: $dir/$binary"
    fi
    export "$variable=$dir/$binary"
}

# The real Kubernetes control plane (tests/controlplane): etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler in one program.
need_controlplane() {
    go_program GATEWAYPOOL_CONTROLPLANE controlplane controlplane tests/controlplane . \
        "the Kubernetes control plane"
}

# metrics-server (tests/metricsserver: the upstream program, required as a Go
# tool at the release its go.mod names): it serves metrics.k8s.io in the test
# cluster, so the real HPA controller scales on CPU.
need_metrics_server() {
    local version
    version=$(awk '$1 == "sigs.k8s.io/metrics-server" { print $2 }' tests/metricsserver/go.mod)
    go_program GATEWAYPOOL_METRICS_SERVER metrics-server metrics-server tests/metricsserver \
        sigs.k8s.io/metrics-server/cmd/metrics-server "metrics-server" \
        -ldflags "-X k8s.io/client-go/pkg/version.gitVersion=$version"
}

# Prometheus (tests/prometheus: the upstream program, required as a Go tool at
# the release its go.mod names, with only its Kubernetes service discovery
# compiled in) and the stand-in for Prometheus Adapter (tests/metricsadapter,
# on sigs.k8s.io/custom-metrics-apiserver): they serve the routers' studies
# in flight as custom.metrics.k8s.io in the test cluster, so the real HPA
# controller scales a pool on them.
need_prometheus() {
    # The release the module version stands for (v0.316.0: 3.16.0), read from
    # the module itself, downloading it if need be: only when building.
    local version=""
    if [ ! -x "$(go_cache_folder prometheus tests/prometheus)/prometheus" ]; then
        # `go list -m` names no folder for a module not yet downloaded (a fresh machine).
        version=$(cd tests/prometheus && go mod download github.com/prometheus/prometheus \
            && cat "$(go list -m -f '{{.Dir}}' github.com/prometheus/prometheus)/VERSION")
    fi
    go_program GATEWAYPOOL_PROMETHEUS prometheus prometheus tests/prometheus \
        github.com/prometheus/prometheus/cmd/prometheus "Prometheus" \
        -tags remove_all_sd,enable_kubernetes_sd \
        -ldflags "-X github.com/prometheus/common/version.Version=$version"
}

need_metrics_adapter() {
    go_program GATEWAYPOOL_METRICS_ADAPTER metrics-adapter metricsadapter tests/metricsadapter . \
        "the Prometheus Adapter stand-in"
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

# The comment at the top of this file, whole.
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# Prints how long the previous stage took, then the next stage's name ("" ends).
STAGE="" STAGE_BEGAN=$SECONDS
stage() {
    [ -z "$STAGE" ] || echo "==> $STAGE: $((SECONDS - STAGE_BEGAN)) s"
    STAGE=$1 STAGE_BEGAN=$SECONDS
    [ -z "$STAGE" ] || echo "==> $STAGE"
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
        need_controlplane
        need_image
        PYTHONPATH=tests exec tests/sandbox.sh "$VENV/bin/python" tools/benchmarks/handover.py "$@"
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
        PYTHONPATH=tests exec tests/sandbox.sh "$VENV/bin/python" tools/benchmarks/autoscaling.py "$@"
        ;;
    fuzz)
        need_debian_packages
        need_venv
        PYTHONPATH=tests exec "$VENV/bin/python" -m support.fuzzrun "$@"
        ;;
    fuzz-scanner)
        need_venv
        GATEWAYPOOL_FUZZ=long exec "$VENV/bin/pytest" tests/unit/router/test_scanner_differential.py \
            -p no:timeout -p no:cacheprovider --hypothesis-show-statistics "$@"
        ;;
    docs)
        need_venv
        exec "$VENV/bin/python" tools/configref.py "$@"
        ;;
    check)
        need_venv
        stage "ruff"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        stage "mypy (strict)"
        "$VENV/bin/mypy"
        stage ""
        ;;
    unit)
        need_venv
        # The paths given, or all of tests/unit; the other arguments go to pytest as they are.
        where=(tests/unit)
        for arg in "$@"; do
            case "$arg" in
                tests/unit/*) where=() ;;
            esac
        done
        exec "$VENV/bin/pytest" "${where[@]}" -n "${GATEWAYPOOL_WORKERS:-auto}" "$@"
        ;;
    test)
        stage "set-up: Debian packages, virtualenvs, the test cluster's programs"
        need_debian_packages
        need_venv
        need_dicom_rs
        need_controlplane
        need_image
        need_metrics_server
        need_prometheus
        need_metrics_adapter
        stage "ruff"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        stage "mypy (strict)"
        "$VENV/bin/mypy"
        stage "pytest, in the test sandbox"
        rc=0
        # Two workers: one takes every cluster module (one control plane), the
        # other the rest (tests/support/lanes.py); tests wait on conditions.
        tests/sandbox.sh "$VENV/bin/pytest" -n "${GATEWAYPOOL_WORKERS:-2}" --dist loadscope "$@" \
            || rc=$?
        stage ""
        exit "$rc"
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
    help | -h | --help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
esac
