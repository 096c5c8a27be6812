#!/bin/sh
# Runs a command (the test suite) in a sandbox of its own: a user, network and
# mount namespace. The real control plane's pods get a bridge, addresses and
# network namespaces there (tests/support/podnet.py), and none of it touches
# the machine's network. The sandbox has no route out: what needs the package
# registries (the image's wheels, the Go builds) is done by ./dev.sh before it.
set -eu
if [ "${GATEWAYPOOL_SANDBOX:-}" != 1 ]; then
    export GATEWAYPOOL_SANDBOX=1
    exec unshare --user --map-root-user --net --mount --propagation private -- "$0" "$@"
fi
ip link set lo up
# `ip netns add` keeps the pods' namespaces here (in this mount namespace only).
mkdir -p /run/netns 2>/dev/null || mount -t tmpfs tmpfs /run
exec "$@"
