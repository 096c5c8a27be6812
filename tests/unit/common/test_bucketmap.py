"""The bucket map: wire format, round trips, and errors that name field and value."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.bucketmap import (
    BucketMap,
    Gateway,
    MapError,
    Readiness,
    balanced_map,
    dump_map,
    dump_readiness,
    load_map,
    parse_map,
    parse_readiness,
)


def gateway(index: int, **changes: Any) -> Gateway:
    fields = {
        "name": f"gw-{index}",
        "host": f"gw-{index}.pool-gw.ns.svc.cluster.local",
        "port": 104,
        "ae_title": "GATEWAY",
    }
    return Gateway(**{**fields, **changes})


def good_wire_map() -> dict[str, Any]:
    """A valid map over 3 gateways and 8 buckets, with one bucket moving."""
    return {
        "version": 3,
        "buckets": 8,
        "gateways": [gateway(i).to_dict() for i in range(3)],
        "owners": [0, 1, 2, 0, 1, 2, 0, 1],
        "moving": {"7": 2},
    }


# --- strategies --------------------------------------------------------------

LABEL = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=1,
    max_size=30,
).filter(lambda text: all(char.isprintable() and not char.isspace() for char in text))
AE_TITLE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=16,
).filter(lambda text: text.strip(" ") != "")


@st.composite
def bucket_maps(draw: st.DrawFn) -> BucketMap:
    names = draw(st.lists(LABEL, min_size=1, max_size=6, unique=True))
    gateways = tuple(
        Gateway(
            name=name, host=draw(LABEL), port=draw(st.integers(1, 65535)), ae_title=draw(AE_TITLE)
        )
        for name in names
    )
    addresses = {(g.host.lower(), g.port, g.ae_title.strip(" ")) for g in gateways}
    if len(addresses) < len(gateways):
        gateways = tuple(dataclasses.replace(g, port=1000 + i) for i, g in enumerate(gateways))
    buckets = draw(st.integers(1, 200))
    owners = tuple(
        draw(st.lists(st.integers(0, len(gateways) - 1), min_size=buckets, max_size=buckets))
    )
    moving: dict[int, int] = {}
    if len(gateways) > 1:
        for bucket in draw(st.sets(st.integers(0, buckets - 1), max_size=10)):
            others = [i for i in range(len(gateways)) if i != owners[bucket]]
            moving[bucket] = draw(st.sampled_from(others))
    version = draw(st.integers(0, 2**53))
    return BucketMap(
        version=version, buckets=buckets, gateways=gateways, owners=owners, moving=moving
    )


# --- round trips -------------------------------------------------------------


@given(bucket_maps())
def test_dump_then_parse_gives_an_equal_map(bucket_map: BucketMap) -> None:
    text = dump_map(bucket_map)
    assert parse_map(text) == bucket_map
    assert dump_map(parse_map(text)) == text  # stable: same map, same text


@given(bucket_maps())
def test_yaml_form_of_a_map_parses_to_the_same_map(bucket_map: BucketMap) -> None:
    assert parse_map(yaml.safe_dump(bucket_map.to_dict())) == bucket_map


def test_dump_is_compact_sorted_json() -> None:
    text = dump_map(BucketMap.from_dict(good_wire_map()))
    assert " " not in text.replace("pool-gw", "")  # no padding between tokens
    assert list(json.loads(text)) == ["buckets", "gateways", "moving", "owners", "version"]
    assert json.loads(text)["gateways"][0] == {
        "aeTitle": "GATEWAY",
        "host": "gw-0.pool-gw.ns.svc.cluster.local",
        "name": "gw-0",
        "port": 104,
    }
    assert json.loads(text)["moving"] == {"7": 2}


def test_hand_written_yaml_loads() -> None:
    text = """
    # Written by hand for a test cluster.
    version: 3
    buckets: 4
    gateways:
      - {name: gw-0, host: gw-0.pool-gw.ns.svc.cluster.local, port: 104, aeTitle: GATEWAY}
      - name: gw-1
        host: 10.0.0.7
        port: 11112
        aeTitle: "GW 1"
    owners: [0, 1, 0, 1]
    moving:
      3: 0        # unquoted keys are integers in YAML; accepted
    """
    bucket_map = parse_map(text)
    assert bucket_map.gateways[1] == Gateway("gw-1", "10.0.0.7", 11112, "GW 1")
    assert dict(bucket_map.moving) == {3: 0}


def test_yaml_flow_mapping_that_is_not_json_still_loads() -> None:
    text = (
        "{version: 1, buckets: 1, owners: [0], gateways: [{name: a, host: b, port: 1, aeTitle: X}]}"
    )
    assert parse_map(text).gateways[0].name == "a"


def test_moving_defaults_to_empty() -> None:
    data = good_wire_map()
    del data["moving"]
    assert dict(BucketMap.from_dict(data).moving) == {}


# --- files ---------------------------------------------------------------------


def test_load_map_reads_json_and_yaml_files(tmp_path: Path) -> None:
    expected = BucketMap.from_dict(good_wire_map())
    json_file = tmp_path / "map.json"
    json_file.write_text(dump_map(expected), encoding="utf-8")
    yaml_file = tmp_path / "map.yaml"
    yaml_file.write_text(yaml.safe_dump(good_wire_map()), encoding="utf-8")
    bom_file = tmp_path / "bom.json"
    bom_file.write_bytes(b"\xef\xbb\xbf" + dump_map(expected).encode())
    assert load_map(json_file) == expected
    assert load_map(str(yaml_file)) == expected
    assert load_map(bom_file) == expected


@pytest.mark.parametrize("content", ["- 1\n- 2\n", "just a string\n", "42\n", "", "null\n"])
def test_a_file_that_is_not_an_object_is_a_map_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MapError, match="must be an object") as caught:
        load_map(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert caught.value.source == str(path)


def test_a_file_error_keeps_the_field_path(tmp_path: Path) -> None:
    data = good_wire_map()
    data["gateways"][2]["port"] = 70000
    path = tmp_path / "map.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(MapError) as caught:
        load_map(path)
    assert str(caught.value) == f"{path}: gateways[2].port: 70000 is not a TCP port (1..65535)"
    assert caught.value.path == "gateways[2].port"


def test_a_file_that_is_not_text_is_a_map_error(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MapError, match="not UTF-8"):
        load_map(path)


def test_a_missing_file_is_an_os_error_not_a_map_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_map(tmp_path / "absent.json")


# --- syntax errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"version": 3,\n "buckets": 8,,\n}', "line 2, column 15"),
        ("version: 3\nowners: [0, 1\n", "line 3, column 1"),
        ("version: 3\n  buckets: 8\n", "line 2, column 10"),
    ],
)
def test_syntax_errors_say_where(text: str, where: str) -> None:
    with pytest.raises(MapError, match=where):
        parse_map(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 3, "version": 4}',
        "version: 3\nversion: 4\n",
    ],
)
def test_duplicate_keys_are_refused(text: str) -> None:
    with pytest.raises(MapError, match="duplicate key 'version'"):
        parse_map(text)


# --- validation: every error names the field and the value -----------------------

Mutation = Callable[[dict[str, Any]], object]


def set_key(*path: Any, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def delete_key(*path: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


BAD_MAPS: list[tuple[str, Mutation, str, str]] = [
    # id, mutation, field path, the value as the message quotes it
    ("version string", set_key("version", value="3"), "version", "'3'"),
    ("version bool", set_key("version", value=True), "version", "True"),
    ("version negative", set_key("version", value=-1), "version", "-1"),
    ("version float", set_key("version", value=3.0), "version", "3.0"),
    ("version missing", delete_key("version"), "version", "missing"),
    ("buckets zero", set_key("buckets", value=0), "buckets", "0"),
    ("buckets too many", set_key("buckets", value=65537), "buckets", "65537"),
    ("buckets bool", set_key("buckets", value=True), "buckets", "True"),
    ("unknown key", set_key("owner", value=[0]), "owner", "'owner'"),
    ("gateways empty", set_key("gateways", value=[]), "gateways", "[]"),
    ("gateways not list", set_key("gateways", value={"a": 1}), "gateways", "{'a': 1}"),
    ("gateway not mapping", set_key("gateways", 1, value="gw-1"), "gateways[1]", "'gw-1'"),
    (
        "gateway unknown key",
        set_key("gateways", 1, "aetitle", value="X"),
        "gateways[1].aetitle",
        "'aetitle'",
    ),
    ("gateway key missing", delete_key("gateways", 2, "aeTitle"), "gateways[2].aeTitle", "missing"),
    ("name empty", set_key("gateways", 0, "name", value=""), "gateways[0].name", "''"),
    ("name space", set_key("gateways", 0, "name", value="gw 0"), "gateways[0].name", "'gw 0'"),
    ("name not str", set_key("gateways", 0, "name", value=7), "gateways[0].name", "7"),
    ("name too long", set_key("gateways", 0, "name", value="g" * 254), "gateways[0].name", "'ggg"),
    ("name duplicate", set_key("gateways", 2, "name", value="gw-0"), "gateways[2].name", "'gw-0'"),
    ("host empty", set_key("gateways", 1, "host", value=""), "gateways[1].host", "''"),
    ("host whitespace", set_key("gateways", 1, "host", value="gw 1"), "gateways[1].host", "'gw 1'"),
    (
        "host control",
        set_key("gateways", 1, "host", value="gw\x001"),
        "gateways[1].host",
        "'gw\\x001'",
    ),
    ("port too big", set_key("gateways", 2, "port", value=70000), "gateways[2].port", "70000"),
    ("port zero", set_key("gateways", 2, "port", value=0), "gateways[2].port", "0"),
    ("port string", set_key("gateways", 2, "port", value="104"), "gateways[2].port", "'104'"),
    ("port bool", set_key("gateways", 2, "port", value=True), "gateways[2].port", "True"),
    ("ae empty", set_key("gateways", 0, "aeTitle", value=""), "gateways[0].aeTitle", "''"),
    (
        "ae too long",
        set_key("gateways", 0, "aeTitle", value="A" * 17),
        "gateways[0].aeTitle",
        "'AAAAAAAAAAAAAAAAA'",
    ),
    (
        "ae backslash",
        set_key("gateways", 0, "aeTitle", value="GW\\1"),
        "gateways[0].aeTitle",
        "'GW\\\\1'",
    ),
    (
        "ae control",
        set_key("gateways", 0, "aeTitle", value="GW\n1"),
        "gateways[0].aeTitle",
        "'GW\\n1'",
    ),
    ("ae spaces", set_key("gateways", 0, "aeTitle", value="   "), "gateways[0].aeTitle", "'   '"),
    (
        "ae non-ascii",
        set_key("gateways", 0, "aeTitle", value="GAT\u00c9"),
        "gateways[0].aeTitle",
        "'GAT\u00c9'",
    ),
    ("ae bool", set_key("gateways", 0, "aeTitle", value=False), "gateways[0].aeTitle", "False"),
    (
        "address duplicate",
        set_key(
            "gateways",
            2,
            value={
                **gateway(0, name="gw-2").to_dict(),
                "host": "GW-0.pool-gw.ns.svc.cluster.local",
            },
        ),
        "gateways[2]",
        "'GATEWAY@GW-0.pool-gw.ns.svc.cluster.local:104'",
    ),
    ("owners short", set_key("owners", value=[0, 1, 2]), "owners", "3 entries"),
    ("owners not list", set_key("owners", value="0,1"), "owners", "'0,1'"),
    ("owner out of range", set_key("owners", 5, value=3), "owners[5]", "3"),
    ("owner negative", set_key("owners", 5, value=-1), "owners[5]", "-1"),
    ("owner string", set_key("owners", 5, value="1"), "owners[5]", "'1'"),
    ("owner bool", set_key("owners", 5, value=True), "owners[5]", "True"),
    ("moving not mapping", set_key("moving", value=[7, 2]), "moving", "[7, 2]"),
    ("moving key word", set_key("moving", "x", value=1), "moving", "'x'"),
    ("moving key padded", set_key("moving", "07", value=1), "moving", "'07'"),
    ("moving key range", set_key("moving", "8", value=1), "moving", "8"),
    ("moving key twice", set_key("moving", 7, value=1), "moving", "7"),
    ("moving target range", set_key("moving", "7", value=3), "moving[7]", "3"),
    ("moving target bool", set_key("moving", "7", value=True), "moving[7]", "True"),
    ("moving to owner", set_key("moving", "7", value=1), "moving[7]", "1"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "shown"),
    [pytest.param(mutate, path, shown, id=name) for name, mutate, path, shown in BAD_MAPS],
)
def test_invalid_maps_are_refused_naming_field_and_value(
    mutate: Mutation, path: str, shown: str
) -> None:
    data = good_wire_map()
    mutate(data)
    attempts: list[Callable[[], BucketMap]] = [lambda: BucketMap.from_dict(copy.deepcopy(data))]
    if json.loads(json.dumps(data)) == data:  # as a document too, when JSON can say it
        attempts.append(lambda: parse_map(json.dumps(data)))
    for attempt in attempts:
        with pytest.raises(MapError) as caught:
            attempt()
        message = str(caught.value)
        assert caught.value.path == path, message
        assert message.startswith(f"{path}: "), message
        assert shown in caught.value.problem, message


def test_the_documented_example_message() -> None:
    data = good_wire_map()
    data["gateways"][2]["port"] = 70000
    with pytest.raises(MapError) as caught:
        BucketMap.from_dict(data)
    assert str(caught.value) == "gateways[2].port: 70000 is not a TCP port (1..65535)"


@pytest.mark.parametrize("data", [[1, 2], "map", 3, None])
def test_a_document_that_is_not_an_object_is_a_map_error(data: object) -> None:
    with pytest.raises(MapError, match="the bucket map must be an object"):
        BucketMap.from_dict(data)


# --- the model -----------------------------------------------------------------


def test_gateway_for_follows_owners_also_while_moving() -> None:
    bucket_map = BucketMap.from_dict(good_wire_map())
    assert bucket_map.gateway_for(0).name == "gw-0"
    assert bucket_map.gateway_for(7).name == "gw-1"  # moving to gw-2, still sent to gw-1
    for bucket in (-1, 8):
        with pytest.raises(ValueError, match="bucket"):
            bucket_map.gateway_for(bucket)


def test_bucket_counts_list_every_gateway_in_order() -> None:
    data = good_wire_map()
    data["owners"] = [0, 0, 1, 0, 1, 0, 0, 1]
    data["moving"] = {}
    assert BucketMap.from_dict(data).bucket_counts() == {"gw-0": 5, "gw-1": 3, "gw-2": 0}


def test_address_is_for_logs() -> None:
    assert gateway(0).address() == "GATEWAY@gw-0.pool-gw.ns.svc.cluster.local:104"
    assert Gateway("gw", "fd00::7", 11112, "GW").address() == "GW@[fd00::7]:11112"


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(MapError, match=r"^port: 0 is not a TCP port"):
        gateway(0, port=0)
    with pytest.raises(MapError, match=r"^owners\[1\]: 4 is not a gateway index"):
        BucketMap(version=1, buckets=2, gateways=(gateway(0),), owners=(0, 4))


def test_a_map_does_not_share_the_callers_moving_dict() -> None:
    moving = {1: 0}
    bucket_map = BucketMap(
        version=1, buckets=4, gateways=(gateway(0), gateway(1)), owners=(0, 1, 0, 1), moving=moving
    )
    moving[2] = 1
    assert dict(bucket_map.moving) == {1: 0}
    assert isinstance(bucket_map.moving, MappingProxyType)  # read-only
    assert hash(bucket_map) == hash(BucketMap.from_dict(bucket_map.to_dict()))


def test_repr_is_short_enough_for_a_log_line() -> None:
    bucket_map = balanced_map([gateway(i) for i in range(3)])
    assert repr(bucket_map) == (
        "BucketMap(version=1, buckets=4096, gateways=('gw-0', 'gw-1', 'gw-2'), moving=0 buckets)"
    )


def test_balanced_map_deals_buckets_round_robin() -> None:
    bucket_map = balanced_map([gateway(i) for i in range(3)], buckets=10, version=5)
    assert bucket_map.version == 5
    assert bucket_map.owners == (0, 1, 2, 0, 1, 2, 0, 1, 2, 0)
    assert bucket_map.bucket_counts() == {"gw-0": 4, "gw-1": 3, "gw-2": 3}
    assert dict(bucket_map.moving) == {}


@pytest.mark.parametrize(
    ("gateways", "buckets", "path"),
    [([], 8, "gateways"), ([gateway(0), gateway(1)], 1, "gateways"), ([gateway(0)], 0, "buckets")],
)
def test_balanced_map_refuses_impossible_pools(
    gateways: list[Gateway], buckets: int, path: str
) -> None:
    with pytest.raises(MapError) as caught:
        balanced_map(gateways, buckets=buckets)
    assert caught.value.path == path


def test_closing_buckets_round_trip_and_must_be_moving() -> None:
    wire = good_wire_map()
    wire["closing"] = [7]
    closing = BucketMap.from_dict(wire)
    assert closing.closing == frozenset({7})
    assert parse_map(dump_map(closing)) == closing
    assert json.loads(dump_map(closing))["closing"] == [7]
    assert "closing" not in json.loads(dump_map(BucketMap.from_dict(good_wire_map())))
    wire["closing"] = [3]
    with pytest.raises(MapError, match="closing"):
        BucketMap.from_dict(wire)
    wire["closing"] = ["7"]
    with pytest.raises(MapError, match=r"closing\[0\]"):
        BucketMap.from_dict(wire)


# --- readiness (beside the map, not in it) ------------------------------------


@given(st.frozensets(LABEL, max_size=6))
def test_readiness_round_trips_in_one_text(names: frozenset[str]) -> None:
    readiness = Readiness(not_ready=names)
    text = dump_readiness(readiness)
    assert parse_readiness(text) == readiness
    assert text == dump_readiness(Readiness(not_ready=frozenset(sorted(names, reverse=True))))
    assert all(readiness.ready(name) is (name not in names) for name in [*names, "other"])


def test_readiness_reads_yaml_and_says_all_ready_when_empty() -> None:
    assert parse_readiness("notReady: [pool-gw-1]\n") == Readiness(frozenset({"pool-gw-1"}))
    assert dump_readiness(Readiness()) == '{"notReady":[]}'
    assert Readiness().ready("pool-gw-0")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("{}", "notReady"),
        ('{"notReady": []} ', None),
        ('{"notReady": [], "ready": []}', "ready"),
        ('{"notReady": "gw-1"}', "notReady"),
        ('{"notReady": ["gw-1", "gw-1"]}', "notReady"),
        ('{"notReady": [1]}', "notReady[0]"),
        ('{"notReady": [""]}', "notReady[0]"),
        ('{"notReady": ["gw 1"]}', "notReady[0]"),
        ('{"notReady": [], "notReady": ["gw-1"]}', ""),
        ("[]", ""),
    ],
)
def test_readiness_refuses_anything_but_distinct_gateway_names(text: str, path: str | None) -> None:
    if path is None:
        assert parse_readiness(text) == Readiness()
        return
    with pytest.raises(MapError) as caught:
        parse_readiness(text)
    assert caught.value.path == path


def test_a_map_with_readiness_inside_is_refused() -> None:
    """Readiness lives beside the map: the map's strict parser still refuses it inside."""
    wire = good_wire_map()
    wire["notReady"] = ["gw-1"]
    with pytest.raises(MapError) as caught:
        BucketMap.from_dict(wire)
    assert caught.value.path == "notReady"
