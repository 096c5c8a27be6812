"""The contract operator and routers share: one AE title rule, checked alike everywhere."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.bucketmap import BucketMap, Gateway, MapError, balanced_map, dump_map, parse_map
from gatewaypool.contract import (
    AE_TITLE_PATTERN,
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    UID_PATTERN,
    ae_title_problem,
    uid_problem,
)
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import parse_spec
from gatewaypool_router.config import ConfigError, RouterConfig, check_ae_title
from support.crd import CRD_PATH, version_of

TITLES = ["GATEWAY", "A", "X" * 16, "CT SCANNER 1", "a~[]{}!", " PAD "]
NOT_TITLES = ["", "X" * 17, "BACK\\SLASH", "TAB\tS", "NEW\nLINE", "ROUTER\n", "    ", "ÄRZTE"]


def operator_accepts(title: str) -> bool:
    spec: dict[str, Any] = {"gateway": {"image": "gw:1", "aeTitle": title}}
    try:
        parse_spec(spec, default_router_image="router:1")
    except SpecError:
        return False
    return True


def router_accepts(title: str) -> bool:
    try:
        check_ae_title("--aet", title)
    except ConfigError:
        return False
    return True


def map_accepts(title: str) -> bool:
    wire = json.loads(dump_map(_one_gateway_map()))
    wire["gateways"][0]["aeTitle"] = title
    try:
        parse_map(json.dumps(wire))
    except MapError:
        return False
    return True


def _one_gateway_map() -> BucketMap:
    gateway = Gateway(name="gw-0", host="gw-0.local", port=104, ae_title="GW")
    return balanced_map([gateway], buckets=4)


@pytest.mark.parametrize("title", TITLES)
def test_every_part_accepts_a_title(title: str) -> None:
    assert ae_title_problem(title) is None
    assert (operator_accepts(title), router_accepts(title), map_accepts(title)) == (True,) * 3


@pytest.mark.parametrize("title", NOT_TITLES)
def test_every_part_refuses_a_non_title(title: str) -> None:
    assert ae_title_problem(title)
    assert (operator_accepts(title), router_accepts(title), map_accepts(title)) == (False,) * 3


@given(st.text(max_size=20))
def test_the_rule_is_the_crd_pattern_less_all_spaces(title: str) -> None:
    # The API server matches the whole string (Go's RE2: $ is the end of text).
    by_pattern = re.fullmatch(AE_TITLE_PATTERN.strip("^$"), title) is not None
    assert (ae_title_problem(title) is None) == (by_pattern and bool(title.strip(" ")))


def test_the_crd_has_the_contract_coordinates() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["spec"]["group"] == API_GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    assert version_of(crd)["name"] == API_VERSION


UIDS = ["1.2", "1.2.840.10008.1.2.1", "0.0", "2.25." + "9" * 59]
NOT_UIDS = ["", "1", "1.02", "1..2", "1.2.", "a.b", "1.2.3 ", "2.25." + "9" * 60]


def operator_accepts_uid(uid: str) -> bool:
    spec: dict[str, Any] = {
        "gateway": {"image": "gw:1", "acceptedTransferSyntaxes": [uid], "sopClasses": [uid]}
    }
    try:
        parse_spec(spec, default_router_image="router:1")
    except SpecError:
        return False
    return True


def router_accepts_uid(uid: str) -> bool:
    try:
        RouterConfig(
            gateways=(Gateway(name="gw-0", host="h", port=104, ae_title="GW"),),
            accepted_transfer_syntaxes=(uid,),
            sop_classes=(uid,),
        )
    except ConfigError:
        return False
    return True


def crd_uid_schemas() -> list[dict[str, Any]]:
    gateway = version_of(yaml.safe_load(CRD_PATH.read_text()))["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"]["gateway"]["properties"]
    return [gateway[key]["items"] for key in ("acceptedTransferSyntaxes", "sopClasses")]


def crd_accepts_uid(uid: str) -> bool:
    return all(
        len(uid) <= schema["maxLength"] and re.fullmatch(schema["pattern"].strip("^$"), uid)
        for schema in crd_uid_schemas()
    )


@pytest.mark.parametrize("uid", UIDS)
def test_every_part_accepts_a_uid(uid: str) -> None:
    assert uid_problem(uid) is None
    assert (operator_accepts_uid(uid), router_accepts_uid(uid), crd_accepts_uid(uid)) == (True,) * 3


@pytest.mark.parametrize("uid", NOT_UIDS)
def test_every_part_refuses_a_non_uid(uid: str) -> None:
    assert uid_problem(uid)
    assert (operator_accepts_uid(uid), router_accepts_uid(uid), crd_accepts_uid(uid)) == (
        False,
    ) * 3


def test_the_crd_uid_lists_use_the_contract_pattern() -> None:
    assert [s["pattern"] for s in crd_uid_schemas()] == [UID_PATTERN] * 2
