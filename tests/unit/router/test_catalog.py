"""When the gateway catalog probes a gateway again that gave it no answer.

A gateway down when the router first probed it (a pod restarting, or one
that listens after the router started) must not stay unknown for the
map's life: unknown, it does not narrow what senders may send, and every
instance in a transfer syntax it refuses would fail. The end-to-end case,
with DCMTK ``storescp`` starting late, is in
``tests/integration/test_router_interop.py``.
"""

from __future__ import annotations

import socket
import time

import pytest

from gatewaypool.bucketmap import Gateway, balanced_map
from gatewaypool_router.acceptance import GatewayAccepts
from gatewaypool_router.catalog import GatewayCatalog, _Entry, key_of, reprobe_delay
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (40, 30.0)],
)
def test_the_delay_doubles_up_to_half_a_minute(failures: int, delay: float) -> None:
    assert reprobe_delay(failures) == delay


def _refusing_port() -> int:
    """A loopback port nothing listens on: a probe of it fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_gateway_without_an_answer_is_due_again_and_at_once_when_reached() -> None:
    down = Gateway(name="gw-0", host="127.0.0.1", port=_refusing_port(), ae_title="DOWN")
    holder = MapHolder(RouterMetrics())
    catalog = GatewayCatalog(RouterConfig(gateways=(down,), connect_timeout=1.0), holder)
    holder.offer(balanced_map([down], buckets=8), source="test")
    entry = catalog._entries[key_of(down)] = _Entry()  # as a map naming it leaves it
    assert catalog._due(0.0)[0] == []  # its first probe is still under way
    catalog.probe(down)
    catalog.probe(down)  # two failures in a row: the next one 4 s after the last
    due, wait = catalog._due(entry.checked)
    assert due == []
    assert wait == pytest.approx(4.0)
    assert entry.failures == 2
    assert entry.reachable is False
    assert catalog._due(entry.checked + 3.9)[0] == []
    assert catalog._due(entry.checked + 4.0)[0] == [down]
    # A sender's association reached it: probed again now, not in seconds.
    catalog.reached(down, reachable=True, associated=True)
    assert catalog._due(time.monotonic())[0] == [down]
    assert entry.failures == 0


def test_a_gateway_refusing_what_its_probe_accepted_is_due_again() -> None:
    gateway = Gateway(name="gw-0", host="127.0.0.1", port=_refusing_port(), ae_title="GW")
    holder = MapHolder(RouterMetrics())
    catalog = GatewayCatalog(RouterConfig(gateways=(gateway,)), holder)
    holder.offer(balanced_map([gateway], buckets=8), source="test")
    ct, jpeg_ls, explicit = (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.1",
    )
    entry = catalog._entries[key_of(gateway)] = _Entry(
        reachable=True,
        accepts=GatewayAccepts(
            asked=frozenset({ct}),
            sop_classes=frozenset({ct}),
            pairs_asked=frozenset({(ct, jpeg_ls), (ct, explicit)}),
            pairs=frozenset({(ct, explicit)}),
        ),
        checked=time.monotonic() - 60,
    )
    assert catalog._due(time.monotonic())[0] == []
    # Refusing what it was known to refuse says nothing new.
    catalog.contradicted(gateway, [(ct, jpeg_ls)])
    assert not entry.stale
    assert catalog._due(time.monotonic())[0] == []
    catalog.contradicted(gateway, [(ct, explicit)])
    assert entry.stale
    assert catalog._due(time.monotonic())[0] == [gateway]
    # Probed (it is down now): what was known stays, and so does the doubt.
    catalog.probe(gateway)
    assert entry.accepts is not None
    assert entry.stale
