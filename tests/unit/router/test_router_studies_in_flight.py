"""Studies in flight per gateway, as the router counts and exports them.

The tracker runs on the data path of every instance and its count feeds the
autoscaler, so both must hold: the count equals the definition (a study is
in flight from its first instance until quiet for ``quiet_seconds``, on the
gateway of its latest instance), and memory stays bounded however many
studies pass.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.studiesinflight import StudiesInFlight

QUIET = 30.0


class Clock:
    """Monotonic seconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(quiet: float = QUIET) -> tuple[StudiesInFlight, Clock]:
    clock = Clock()
    return StudiesInFlight(quiet_seconds=quiet, clock=clock), clock


def test_a_study_is_in_flight_until_quiet_for_quiet_seconds() -> None:
    studies, clock = tracker()
    studies.seen("1.2.1", "gw-0")
    clock.now += 20
    studies.seen("1.2.1", "gw-0")  # a later instance restarts the quiet time
    clock.now += QUIET - 0.001
    assert studies.by_gateway() == {"gw-0": 1}
    clock.now += 0.001
    assert studies.by_gateway() == {}


def test_studies_count_per_gateway_once_each() -> None:
    studies, _ = tracker()
    for instance in range(50):
        studies.seen("1.2.1", "gw-0")
        studies.seen(f"1.2.{2 + instance % 2}", "gw-1")
    assert studies.by_gateway() == {"gw-0": 1, "gw-1": 2}


def test_a_study_that_moves_counts_on_its_latest_gateway_only() -> None:
    studies, clock = tracker()
    studies.seen("1.2.1", "gw-0")
    clock.now += 1
    studies.seen("1.2.1", "gw-1")  # its bucket moved mid-study
    assert studies.by_gateway() == {"gw-1": 1}


def test_quiet_studies_are_forgotten_on_the_data_path_alone() -> None:
    """No scrape at all (Prometheus down): memory still holds two quiet periods at most."""
    studies, clock = tracker(quiet=1.0)
    step = 0.01
    peak = 0
    for index in range(20_000):  # 200 s of one new study every 10 ms
        clock.now += step
        studies.seen(f"1.2.{index}", "gw-0")
        peak = max(peak, len(studies))
    assert peak <= 2 * 1.0 / step + 1
    assert len(studies) >= 1.0 / step - 1  # the recent ones are kept


def test_a_scrape_forgets_quiet_studies() -> None:
    studies, clock = tracker()
    for index in range(100):
        studies.seen(f"1.2.{index}", "gw-0")
    clock.now += QUIET
    assert studies.by_gateway() == {}
    assert len(studies) == 0


@pytest.mark.parametrize("quiet", [0, -1.0, float("nan")])
def test_quiet_seconds_must_be_positive(quiet: float) -> None:
    with pytest.raises(ValueError, match="quiet_seconds"):
        StudiesInFlight(quiet_seconds=quiet)


def test_threads_recording_at_once_lose_no_study() -> None:
    studies = StudiesInFlight(quiet_seconds=3600)

    def send(thread: int) -> None:
        for index in range(2000):
            studies.seen(f"1.{thread}.{index % 500}", f"gw-{thread % 2}")

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert studies.by_gateway() == {"gw-0": 1000, "gw-1": 1000}


# One step: advance the clock, then one instance of a study to a gateway, or a scrape.
_steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 3.0, 9.5, 10.0, 10.5, 25.0]),  # exact binary fractions
        st.integers(min_value=0, max_value=7) | st.none(),  # None: a scrape
        st.integers(min_value=0, max_value=2),
    ),
    max_size=80,
)


@given(_steps)
def test_counts_equal_the_definition(steps: list[tuple[float, int | None, int]]) -> None:
    """Against a model that remembers everything: same counts, and bounded memory."""
    quiet = 10.0
    studies, clock = tracker(quiet=quiet)
    model: dict[str, tuple[float, str]] = {}
    for advance, study, gateway in steps:
        clock.now += advance
        if study is not None:
            model[f"1.2.{study}"] = (clock.now, f"gw-{gateway}")
            studies.seen(f"1.2.{study}", f"gw-{gateway}")
            recent = [uid for uid, (seen, _) in model.items() if clock.now - seen < 2 * quiet]
            assert len(studies) <= len(recent)
        else:
            expected = Counter(gw for seen, gw in model.values() if clock.now - seen < quiet)
            assert studies.by_gateway() == dict(expected)


# --- the exported gauge ------------------------------------------------------


def test_the_gauge_exports_every_map_gateway_and_any_that_left_with_studies() -> None:
    metrics = RouterMetrics()
    studies, clock = tracker()
    in_map = ["pool-gw-0", "pool-gw-1", "pool-gw-2"]
    metrics.export_studies_in_flight(studies, lambda: in_map)
    studies.seen("1.2.1", "pool-gw-1")
    studies.seen("1.2.2", "pool-gw-1")
    studies.seen("1.2.3", "pool-gw-3")  # routed before the map dropped pool-gw-3

    def sample(gateway: str) -> float | None:
        return metrics.registry.get_sample_value(
            "gatewaypool_router_studies_in_flight", {"gateway": gateway}
        )

    assert [sample(g) for g in [*in_map, "pool-gw-3"]] == [0, 2, 0, 1]
    clock.now += QUIET
    assert [sample(g) for g in [*in_map, "pool-gw-3"]] == [0, 0, 0, None]


def test_map_gateways_get_instance_and_byte_series_at_zero() -> None:
    """``rate()`` counts a gateway's first instances only if its series existed before."""
    metrics = RouterMetrics()
    metrics.gateways_known(["pool-gw-0", "pool-gw-1"])
    for gateway in ("pool-gw-0", "pool-gw-1"):
        for outcome in ("success", "warning", "failure"):
            labels = {"gateway": gateway, "outcome": outcome}
            assert (
                metrics.registry.get_sample_value("gatewaypool_router_instances_total", labels) == 0
            )
            assert metrics.registry.get_sample_value("gatewaypool_router_bytes_total", labels) == 0
    metrics.record_instance(gateway="pool-gw-1", outcome="success", size=1000, seconds=0.01)
    labels = {"gateway": "pool-gw-1", "outcome": "success"}
    assert metrics.registry.get_sample_value("gatewaypool_router_instances_total", labels) == 1
    assert metrics.registry.get_sample_value("gatewaypool_router_bytes_total", labels) == 1000
