"""The operator's bucket map: balanced, fewest moves, no spurious versions, tolerant reads."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.bucketmap import BucketMap, Gateway, balanced_map, dump_map
from gatewaypool_operator.mapgateways import desired_gateways, read_published
from gatewaypool_operator.spec.parse import parse_spec
from gatewaypool_operator.spec.types import PoolSpec

NAME = "ct-triage"
NAMESPACE = "radiology"


def pool_spec(*, port: int = 104, ae_title: str = "GATEWAY") -> PoolSpec:
    return parse_spec(
        {"replicas": 3, "gateway": {"image": "gw:1", "port": port, "aeTitle": ae_title}},
        default_router_image="op:1",
    )


def gateways(count: int, **attributes: object) -> tuple[Gateway, ...]:
    return desired_gateways(
        name=NAME,
        namespace=NAMESPACE,
        spec=pool_spec(**attributes),  # type: ignore[arg-type]
        count=count,
    )


def first_map(count: int, buckets: int) -> BucketMap:
    return balanced_map(gateways(count), buckets=buckets)


def assert_balanced(owners: Sequence[int], count: int) -> None:
    counts = Counter(owners)
    assert set(counts) == set(range(count)), "every gateway owns a bucket, no other index"
    assert max(counts.values()) - min(counts.values()) <= 1


# --- gateways -------------------------------------------------------------------


def test_desired_gateways_are_the_statefulset_pods() -> None:
    result = gateways(3, port=4242, ae_title="ORTHANC")
    assert result == (
        Gateway(
            name="ct-triage-gw-0",
            host="ct-triage-gw-0.ct-triage-gw.radiology.svc.cluster.local",
            port=4242,
            ae_title="ORTHANC",
        ),
        Gateway(
            name="ct-triage-gw-1",
            host="ct-triage-gw-1.ct-triage-gw.radiology.svc.cluster.local",
            port=4242,
            ae_title="ORTHANC",
        ),
        Gateway(
            name="ct-triage-gw-2",
            host="ct-triage-gw-2.ct-triage-gw.radiology.svc.cluster.local",
            port=4242,
            ae_title="ORTHANC",
        ),
    )
    assert gateways(0) == ()
    with pytest.raises(ValueError, match="count"):
        gateways(-1)


@given(count=st.integers(1, 300))
def test_gateway_names_and_hosts_are_unique_dns_names(count: int) -> None:
    result = gateways(count)
    assert len({gateway.name for gateway in result}) == count
    assert len({gateway.host for gateway in result}) == count
    for ordinal, gateway in enumerate(result):
        assert gateway.host == f"{gateway.name}.ct-triage-gw.radiology.svc.cluster.local"
        assert gateway.name == f"ct-triage-gw-{ordinal}"


# --- first map ------------------------------------------------------------------


# --- published form -------------------------------------------------------------------


def test_a_published_map_reads_back_equal() -> None:
    current = first_map(3, 64)
    assert read_published({"map.json": dump_map(current)}).bucket_map == current


@pytest.mark.parametrize("data", [None, {}, {"other": "x"}])
def test_nothing_published(data: dict[str, str] | None) -> None:
    published = read_published(data)
    assert (published.bucket_map, published.problem) == (None, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "line 1"),
        ("[]", "an object"),
        ('{"version": 1}', "required key is missing"),
        ("", "an object"),
    ],
)
def test_an_unusable_map_reads_as_none_with_the_reason(text: str, reason: str) -> None:
    published = read_published({"map.json": text})
    assert published.bucket_map is None
    assert published.problem is not None
    assert published.problem.startswith("map.json: ")
    assert reason in published.problem


def test_a_map_with_an_invalid_owner_is_refused() -> None:
    wire = first_map(2, 4).to_dict()
    wire["owners"][3] = 7
    published = read_published({"map.json": json.dumps(wire)})
    assert published.bucket_map is None
    assert published.problem is not None
    assert "owners[3]" in published.problem


def test_a_non_text_value_is_refused_not_crashed_on() -> None:
    published = read_published({"map.json": 3})  # type: ignore[dict-item]
    assert published.bucket_map is None
    assert published.problem is not None
