"""The load a real router reports per gateway, read from its real ``/metrics``.

An autoscaler aims at gateways by what the routers export: studies in flight
per gateway (from a study's first instance until it has been quiet for
``--study-quiet-seconds``) and the counters whose ``rate()`` gives instances
and bytes per second. Here a router in front of two real gateways (DCMTK
storescp, a pynetdicom sink) and a third gateway that receives nothing
must report exactly the studies sent to each, 0 for the idle one, and
nothing in flight once the studies have gone quiet.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from gatewaypool.bucketmap import Gateway as MapGateway
from gatewaypool.bucketmap import balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.dcmtk import StoreSCP
from gatewaypool_local.peers.gateway import map_gateways
from gatewaypool_local.peers.process import LOOPBACK, free_port, wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.scu import send_files
from gatewaypool_local.synth import Study, dataset_bytes

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]

IN_FLIGHT = "gatewaypool_router_studies_in_flight"
# Long enough that every study sent is still in flight when /metrics is read
# right after the send, on a busy 2-core CI machine; short enough for a quick test.
QUIET = 2.0


def scrape(router: RouterProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} of the router's /metrics, as Prometheus parses it."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(router.http_text("/metrics")):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def per_gateway(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(labels)["gateway"]: value for labels, value in samples.items()}


def test_studies_in_flight_per_gateway_follow_the_studies_sent_and_fall_to_zero(
    start_router: RouterFactory,
    storescp_gateway: StoreSCP,
    pynetdicom_gateway: PynetdicomSink,
    ct_studies: StudyFactory,
) -> None:
    # The idle gateway is only in the map: the router connects to a gateway
    # when it has an instance for it, so nothing needs to listen there.
    idle = MapGateway(name="gw-2", host=LOOPBACK, port=free_port(), ae_title="GW-IDLE")
    router = start_router(
        [storescp_gateway, pynetdicom_gateway],
        extra_args=[
            "--gateway",
            f"{idle.ae_title}@{idle.host}:{idle.port}",
            "--study-quiet-seconds",
            str(QUIET),
        ],
    )
    names = ["gw-0", "gw-1", "gw-2"]
    # The map the router builds from its --gateway flags, in their order.
    bucket_map = balanced_map([*map_gateways([storescp_gateway, pynetdicom_gateway]), idle])

    def owner(study: Study) -> str:
        return bucket_map.gateway_for(study_bucket(study.study_uid, bucket_map.buckets)).name

    # Three studies for gw-0, two for gw-1, none for gw-2.
    wanted = {"gw-0": 3, "gw-1": 2, "gw-2": 0}
    chosen: list[Study] = []
    for study in ct_studies(16, instances=2, rows=16, columns=16):
        if sum(owner(s) == owner(study) for s in chosen) < wanted[owner(study)]:
            chosen.append(study)
    assert Counter(owner(s) for s in chosen) == {"gw-0": 3, "gw-1": 2}, "generate more studies"

    before = scrape(router)
    assert per_gateway(before[IN_FLIGHT]) == {"gw-0": 0, "gw-1": 0, "gw-2": 0}
    # Every gateway of the map has its instance and byte series from the
    # start, at 0, so rate() also counts the first instances it receives.
    for family in ("gatewaypool_router_instances_total", "gatewaypool_router_bytes_total"):
        for gateway in names:
            for outcome in ("success", "warning", "failure"):
                labels = (("gateway", gateway), ("outcome", outcome))
                assert before[family][labels] == 0, (family, labels)

    # Every study's first instance, then every study's last one, so that all
    # studies' quiet times start within the few milliseconds of the second send.
    firsts = [s.files[0] for s in chosen]
    lasts = [s.files[1] for s in chosen]
    results = send_files(router.host, router.port, firsts, called_ae=router.ae_title)
    last_instances_from = time.monotonic()
    results += send_files(router.host, router.port, lasts, called_ae=router.ae_title)
    assert [r.status for r in results] == [0] * 2 * len(chosen)

    during = scrape(router)
    assert per_gateway(during[IN_FLIGHT]) == {"gw-0": 3, "gw-1": 2, "gw-2": 0}
    # rate() of these is instances and data set bytes per second per gateway.
    for gateway in names:
        labels = (("gateway", gateway), ("outcome", "success"))
        mine = [f for s in chosen if owner(s) == gateway for f in s.files]
        assert during["gatewaypool_router_instances_total"][labels] == len(mine), gateway
        assert during["gatewaypool_router_bytes_total"][labels] == sum(
            len(dataset_bytes(f)) for f in mine
        ), gateway

    # Quiet for --study-quiet-seconds: nothing in flight, every gateway still exported.
    wait_until(
        lambda: set(per_gateway(scrape(router)[IN_FLIGHT]).values()) == {0},
        timeout=QUIET + 10,
        what="studies in flight back to 0",
    )
    assert time.monotonic() - last_instances_from >= QUIET
    assert set(per_gateway(scrape(router)[IN_FLIGHT])) == set(names)
