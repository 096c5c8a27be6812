"""The router's configuration: every refusal names the option and the value.

A wrong flag in a Deployment is diagnosed from the pod's first log line, so
each message must say which option and which value; and the command line
must reach the same model the tests construct directly.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewaypool.bucketmap import Gateway
from gatewaypool.cli import build_parser
from gatewaypool_router.cli import config_from_args
from gatewaypool_router.config import ConfigError, ConnectTo, RouterConfig, parse_gateway

MAP = Path("/etc/gatewaypool/map.json")


def gateways(count: int) -> tuple[Gateway, ...]:
    return tuple(parse_gateway(f"GW{i}@gw-{i}.local:104", i) for i in range(count))


def config(**changes: Any) -> RouterConfig:
    fields: dict[str, Any] = {"map_file": MAP}
    fields.update(changes)
    return RouterConfig(**fields)


def assert_names(exc: pytest.ExceptionInfo[ConfigError], option: str, value: object) -> None:
    message = str(exc.value)
    assert option in message, message
    assert repr(value) in message or str(value) in message, message


# --- RouterConfig ------------------------------------------------------------


def test_defaults_are_valid() -> None:
    built = config()
    assert built.ae_title == "GATEWAYPOOL"
    assert built.port == 11112
    assert built.max_pdu == 262144
    assert built.connect_to == ()
    # The same default as the pool's spec.handover.quietSeconds.
    assert built.study_quiet_seconds == 30


def test_port_zero_asks_the_kernel() -> None:
    # The documented exception: tests and the local demo listen on a free port.
    assert config(port=0, http_port=0).port == 0


@pytest.mark.parametrize(
    ("changes", "option", "value"),
    [
        ({"port": 70000}, "--port", 70000),
        ({"port": -1}, "--port", -1),
        ({"port": 65536}, "--port", 65536),
        ({"port": "x"}, "--port", "x"),
        ({"http_port": 70000}, "--http-port", 70000),
        ({"http_port": -5}, "--http-port", -5),
        ({"ae_title": ""}, "--aet", ""),
        ({"ae_title": "A" * 17}, "--aet", "A" * 17),
        ({"ae_title": "ROUTER\\1"}, "--aet", "ROUTER\\1"),
        ({"ae_title": "    "}, "--aet", "    "),
        ({"ae_title": "ROUT\tER"}, "--aet", "ROUT\tER"),
        ({"ae_title": "RÖUTER"}, "--aet", "RÖUTER"),
        ({"allowed_calling_aes": frozenset({"OK", "B\\D"})}, "--allow-calling-aet", "B\\D"),
        ({"allowed_calling_aes": frozenset({"X" * 17})}, "--allow-calling-aet", "X" * 17),
        ({"buckets": 0}, "--buckets", 0),
        ({"buckets": -3}, "--buckets", -3),
        ({"buckets": 65537}, "--buckets", 65537),
        ({"max_associations": 0}, "--max-associations", 0),
        ({"max_associations": 10001}, "--max-associations", 10001),
        ({"max_pdu": 4095}, "--max-pdu", 4095),
        ({"max_pdu": 0}, "--max-pdu", 0),
        ({"max_pdu": 16 * 1024 * 1024 + 1}, "--max-pdu", 16 * 1024 * 1024 + 1),
        ({"gateway_timeout": 0}, "--gateway-timeout", 0),
        ({"gateway_timeout": -1.5}, "--gateway-timeout", -1.5),
        ({"gateway_timeout": math.nan}, "--gateway-timeout", "nan"),
        ({"connect_timeout": 0.0}, "--connect-timeout", 0.0),
        ({"connect_timeout": -2}, "--connect-timeout", -2),
        ({"acse_timeout": 0}, "--acse-timeout", 0),
        ({"acse_timeout": -0.1}, "--acse-timeout", -0.1),
        ({"idle_timeout": 0}, "--idle-timeout", 0),
        ({"idle_timeout": -600}, "--idle-timeout", -600),
        ({"header_limit": 1023}, "--header-limit", 1023),
        ({"header_limit": 0}, "--header-limit", 0),
        ({"study_quiet_seconds": 0}, "--study-quiet-seconds", 0),
        ({"study_quiet_seconds": 0.5}, "--study-quiet-seconds", 0.5),
        ({"study_quiet_seconds": -30}, "--study-quiet-seconds", -30),
        ({"study_quiet_seconds": math.nan}, "--study-quiet-seconds", "nan"),
        ({"study_quiet_seconds": 3601}, "--study-quiet-seconds", 3601),
        ({"forwarding": "zerocopy"}, "--forwarding", "zerocopy"),
    ],
)
def test_invalid_option(changes: dict[str, Any], option: str, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config(**changes)
    assert_names(exc, option, value)


@pytest.mark.parametrize(
    "changes",
    [
        {"map_file": None},  # neither
        {"map_file": None, "gateways": ()},  # neither, explicitly
        {"map_file": MAP, "gateways": gateways(1)},  # both
    ],
    ids=["neither", "neither-explicit", "both"],
)
def test_map_xor_gateways(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        RouterConfig(**changes)
    assert "--map" in str(exc.value)
    assert "--gateway" in str(exc.value)


def test_more_gateways_than_buckets() -> None:
    with pytest.raises(ConfigError) as exc:
        RouterConfig(gateways=gateways(3), buckets=2)
    assert_names(exc, "--gateway", 3)
    assert "2 buckets" in str(exc.value)


def test_as_many_gateways_as_buckets() -> None:
    assert len(RouterConfig(gateways=gateways(3), buckets=3).gateways) == 3


@pytest.mark.parametrize("title", ["A", "A" * 16, "MY AE", "~!#$%^&*()_+[]{"])
def test_valid_ae_titles(title: str) -> None:
    assert config(ae_title=title).ae_title == title


@pytest.mark.parametrize("title", ["ROUTER\n", "A" * 16 + "\n"])
def test_ae_title_with_trailing_newline(title: str) -> None:
    try:
        built = config(ae_title=title)
    except ConfigError as exc:
        assert "--aet" in str(exc)
        return
    raise AssertionError(f"accepted AE title {built.ae_title!r}")


# --- --gateway and --connect-to ----------------------------------------------


def test_parse_gateway() -> None:
    assert parse_gateway("GW-A@gw-0.pool.ns.svc.cluster.local:104", 2) == Gateway(
        name="gw-2", host="gw-0.pool.ns.svc.cluster.local", port=104, ae_title="GW-A"
    )


@pytest.mark.parametrize(
    "text",
    [
        "GW@host:0",
        "GW@host:70000",
        "GW@host:x",
        "GW@host",
        "host:104",
        "@host:104",
        "GW@:104",
        "GW@host:104:5",
        "GW@ho st:104",
        "",
    ],
)
def test_parse_gateway_invalid(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_gateway(text, 0)
    assert "--gateway" in str(exc.value)
    port = text.rpartition(":")[2]
    assert repr(text) in str(exc.value) or repr(port) in str(exc.value), str(exc.value)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("A" * 17 + "@host:104", "A" * 17),
        ("A\\B@host:104", "A\\B"),
        ("   @host:104", "   "),
    ],
)
def test_parse_gateway_invalid_ae_title(text: str, bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_gateway(text, 0)
    assert_names(exc, "--gateway", bad)


def test_connect_to_parse() -> None:
    assert ConnectTo.parse("gw-0.svc:104:127.0.0.1:11113") == ConnectTo(
        "gw-0.svc", 104, "127.0.0.1", 11113
    )
    assert ConnectTo.parse("::localhost:") == ConnectTo("", None, "localhost", None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("host:104:other", "host:104:other"),
        ("nothing", "nothing"),
        ("host:104::11112", "host:104::11112"),
        (":::", ":::"),
        ("host:0:other:1", "0"),
        ("host:70000:other:1", "70000"),
        ("host:x:other:1", "x"),
        ("host:104:other:0", "0"),
        ("host:104:other:99999", "99999"),
        ("host:104:other:y", "y"),
    ],
)
def test_connect_to_invalid(text: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ConnectTo.parse(text)
    assert_names(exc, "--connect-to", value)


def test_resolve_first_match_wins() -> None:
    built = config(
        connect_to=(
            ConnectTo.parse("gw-0.svc:104:10.0.0.1:2000"),
            ConnectTo.parse("gw-0.svc::10.0.0.2:"),  # any port of gw-0.svc
            ConnectTo.parse(":105:10.0.0.3:3000"),  # any host on port 105
            ConnectTo.parse("::fallback:"),  # anything
        )
    )
    assert built.resolve("gw-0.svc", 104) == ("10.0.0.1", 2000)
    assert built.resolve("gw-0.svc", 105) == ("10.0.0.2", 105)  # rule 2 before rule 3
    assert built.resolve("gw-1.svc", 105) == ("10.0.0.3", 3000)
    assert built.resolve("gw-1.svc", 104) == ("fallback", 104)


def test_resolve_without_rules_or_without_a_match() -> None:
    assert config().resolve("gw-0.svc", 104) == ("gw-0.svc", 104)
    built = config(connect_to=(ConnectTo.parse("gw-0.svc:104:x:1"),))
    assert built.resolve("gw-0.svc", 105) == ("gw-0.svc", 105)
    assert built.resolve("gw-1.svc", 104) == ("gw-1.svc", 104)


# --- the command line --------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["router", *argv])


def test_cli_gateways() -> None:
    built = config_from_args(
        parse(
            "--gateway",
            "GWA@gw-a.local:104",
            "--gateway",
            "GWB@gw-b.local:11112",
            "--buckets",
            "16",
            "--aet",
            "ROUTER",
            "--port",
            "0",
            "--allow-calling-aet",
            "CT01",
            "--allow-calling-aet",
            "MR02 ",
            "--require-called-aet",
            "--max-pdu",
            "65536",
            "--gateway-timeout",
            "2.5",
            "--study-quiet-seconds",
            "45",
            "--connect-to",
            "gw-a.local:104:127.0.0.1:4104",
            "--connect-to",
            "::127.0.0.1:",
        )
    )
    assert built.map_file is None
    assert built.gateways == (
        Gateway("gw-0", "gw-a.local", 104, "GWA"),
        Gateway("gw-1", "gw-b.local", 11112, "GWB"),
    )
    assert built.buckets == 16
    assert built.ae_title == "ROUTER"
    assert built.port == 0
    assert built.allowed_calling_aes == frozenset({"CT01", "MR02"})
    assert built.require_called_ae is True
    assert built.forward_calling_ae is False
    assert built.max_pdu == 65536
    assert built.gateway_timeout == 2.5
    assert built.study_quiet_seconds == 45
    assert built.resolve("gw-a.local", 104) == ("127.0.0.1", 4104)
    assert built.resolve("gw-b.local", 11112) == ("127.0.0.1", 11112)


def test_cli_map_and_defaults(tmp_path: Path) -> None:
    map_file = tmp_path / "map.json"
    built = config_from_args(parse("--map", str(map_file)))
    assert built.map_file == map_file
    assert built.gateways == ()
    reference = RouterConfig(map_file=map_file)
    for name in (
        "ae_title",
        "bind",
        "port",
        "http_bind",
        "http_port",
        "buckets",
        "max_associations",
        "max_pdu",
        "gateway_timeout",
        "connect_timeout",
        "acse_timeout",
        "idle_timeout",
        "header_limit",
        "shutdown_grace",
        "study_quiet_seconds",
        "forwarding",
    ):
        assert getattr(built, name) == getattr(reference, name), name


def test_cli_readiness_file_goes_with_a_map_file(tmp_path: Path) -> None:
    readiness = tmp_path / "readiness.json"
    built = config_from_args(parse("--map", "m.json", "--readiness", str(readiness)))
    assert built.readiness_file == readiness
    assert config_from_args(parse("--map", "m.json")).readiness_file is None
    with pytest.raises(ConfigError, match="--readiness needs --map"):
        config_from_args(parse("--gateway", "GW@h:104", "--readiness", str(readiness)))


@pytest.mark.parametrize("mode", ["auto", "splice", "copy"])
def test_cli_forwarding(mode: str) -> None:
    assert config_from_args(parse("--gateway", "GW@h:104", "--forwarding", mode)).forwarding == mode


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither --map nor --gateway
        ["--map", "m.json", "--gateway", "GW@h:104"],  # both
        ["--gateway", "GW@h:104", "--port", "x"],  # not an int
        ["--gateway", "GW@h:104", "--log-level", "chatty"],
        ["--gateway", "GW@h:104", "--forwarding", "zerocopy"],
    ],
)
def test_cli_parser_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option", "value"),
    [
        (["--gateway", "GW@h:104", "--port", "70000"], "--port", 70000),
        (["--gateway", "GW@h:0"], "--gateway", "0"),
        (["--gateway", "not-a-gateway"], "--gateway", "not-a-gateway"),
        (["--gateway", "GW@h:104", "--buckets", "0"], "--buckets", 0),
        (["--gateway", "GW@h:104", "--max-pdu", "100"], "--max-pdu", 100),
        (["--gateway", "GW@h:104", "--idle-timeout", "0"], "--idle-timeout", 0.0),
        (["--gateway", "GW@h:104", "--study-quiet-seconds", "0"], "--study-quiet-seconds", 0.0),
        (["--gateway", "GW@h:104", "--aet", "A" * 17], "--aet", "A" * 17),
        (["--gateway", "GW@h:104", "--allow-calling-aet", "B\\D"], "--allow-calling-aet", "B\\D"),
        (["--gateway", "GW@h:104", "--connect-to", "h:1:x"], "--connect-to", "h:1:x"),
        (["--gateway", "A@h:1", "--gateway", "B@h:2", "--buckets", "1"], "--gateway", 2),
    ],
)
def test_cli_config_errors(argv: list[str], option: str, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_args(parse(*argv))
    assert_names(exc, option, value)


def test_default_timeouts_answer_before_the_senders_give_up() -> None:
    """0xA702 must reach a sender before its own DIMSE timeout aborts the association.

    pynetdicom's default DIMSE timeout is 30 s (DCMTK storescu waits without
    limit by default); a stall is logged before the gateway timeout fires.
    """
    from pynetdicom import AE

    defaults = RouterConfig(gateways=(Gateway(name="gw-0", host="h", port=104, ae_title="GW"),))
    assert defaults.gateway_timeout < AE().dimse_timeout
    assert defaults.stall_warning < defaults.gateway_timeout


def test_study_quiet_seconds_takes_every_quiet_seconds_a_pool_may_have() -> None:
    """The operator passes spec.handover.quietSeconds: its range and default fit the flag."""
    crd_path = Path(__file__).parents[3] / "crds" / "gatewaypool.io_gatewaypools.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["handover"]["properties"]["quietSeconds"]
    for value in (field["minimum"], field["default"], field["maximum"]):
        assert config(study_quiet_seconds=value).study_quiet_seconds == value
    assert config().study_quiet_seconds == field["default"]


def test_cli_workers_default_to_the_cpus_the_router_may_use() -> None:
    from gatewaypool_router.cpus import available_cpus

    assert config_from_args(parse("--gateway", "GW@gw:104")).workers == available_cpus()
    assert config_from_args(parse("--gateway", "GW@gw:104", "--workers", "3")).workers == 3


@pytest.mark.parametrize("workers", [0, -1, 257])
def test_cli_workers_out_of_range(workers: int) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        config_from_args(parse("--gateway", "GW@gw:104", "--workers", str(workers)))
