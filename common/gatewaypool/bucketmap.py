"""The bucket map: which gateway receives which bucket, as one versioned record.

The map is the contract between the operator, its only writer, and the
routers, which read it from a ConfigMap and never compute an assignment of
their own; every replica that applied one version routes identically. A
:class:`BucketMap` is valid by construction (it checks itself when built),
so a router can trust any map it holds and the operator cannot publish a
broken one.

Wire format, camelCase as it sits in a Kubernetes ConfigMap (JSON, or YAML
when written by hand)::

    {"version": 3,
     "buckets": 4096,
     "gateways": [{"name": "gw-0", "host": "gw-0.pool-gw.ns.svc.cluster.local",
                   "port": 104, "aeTitle": "GATEWAY"}, ...],
     "owners": [0, 1, 2, ...],
     "moving": {"17": 2},
     "closing": [17]}

``owners`` has one gateway index per bucket. ``moving`` (optional, default
empty) marks buckets in handover: its keys are bucket numbers (strings in
JSON), its values the index of the gateway the bucket is handed over *to*.
Routers keep sending a moving bucket to its current owner; the operator
publishes a new version with the new owner once the bucket is quiet.
``closing`` (optional, default empty) lists moving buckets in the last step
of their handover: a router holds an instance for a closing bucket until a
newer map says where it goes (see `gatewaypool.reports` and the operator's
handover for why that makes the handover exact).

Every error is a :class:`MapError` that names the field, as spelled in the
wire format (``gateways[2].port``), and the offending value, because the
person reading it has to find that field in a ConfigMap.

Readiness: beside the map, not in it
------------------------------------
Which of the map's gateways are not Ready now is a second, small record,
:class:`Readiness`, kept under its own key (``readiness.json``, beside
``map.json`` in the same ConfigMap)::

    {"notReady": ["pool-gw-1"]}

It is not a field of the map, and has no version of its own, because it is
advice on *how* a router reaches a bucket's owner (now, or through its spool
once the owner is back), never *which* gateway owns it:

- a readiness change publishes no map version, so it posts no map Event,
  asks no router to confirm anything and leaves the handover's rules (which
  count versions) alone; a gateway whose probe flaps costs a ConfigMap write
  per flap, nothing more (the kubelet already records the flaps as Events);
- routers that know nothing of readiness read only ``map.json``, whose
  parser refuses unknown keys: a field there would make every such router
  refuse every map while a gateway is not Ready; a key beside it is ignored;
- a router that knows readiness but finds no ``readiness.json`` (an older
  operator, or a map file alone) counts every gateway as Ready, which is
  what it did before readiness existed.

Names are gateway names (``gateways[i].name``); a name that is not in the
router's map is ignored, so readiness and map need not arrive together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from gatewaypool.assignment import initial_owners
from gatewaypool.contract import MAX_BUCKETS, ae_title_problem
from gatewaypool.strict import (
    DuplicateKeyError,
    is_decimal_key,
    is_int,
    kind_of,
    refuse_duplicate_keys,
    show,
)

__all__ = [
    "BucketMap",
    "Gateway",
    "MapError",
    "Readiness",
    "balanced_map",
    "dump_map",
    "dump_readiness",
    "load_map",
    "parse_map",
    "parse_readiness",
]


_MAX_NAME = 253  # a DNS name's length; gateway names and hosts are DNS names
_TOP_LEVEL_KEYS = ("version", "buckets", "gateways", "owners", "moving", "closing")
_REQUIRED_KEYS = ("version", "buckets", "gateways", "owners")
_GATEWAY_KEYS = ("name", "host", "port", "aeTitle")
_READINESS_KEYS = ("notReady",)


class MapError(ValueError):
    """A bucket map that is malformed or inconsistent.

    The message reads ``"<path>: <problem>"``, e.g.
    ``"gateways[2].port: 70000 is not a TCP port (1..65535)"``.

    A map read from a file is prefixed with the file name:
    ``"pool-map.json: owners[17]: 5 is not a gateway index (0..2)"``.

    Attributes
    ----------
    path
        The field, as spelled in the wire format (``""`` for the document as
        a whole), so that tools can point at it.
    problem
        What is wrong with it, quoting the offending value.
    source
        The file the map came from, or ``""``.
    """

    def __init__(self, problem: str, *, path: str = "", source: str = "") -> None:
        message = f"{path}: {problem}" if path else problem
        super().__init__(f"{source}: {message}" if source else message)
        self.path = path
        self.problem = problem
        self.source = source

    def within(self, prefix: str) -> MapError:
        """Return this error with its path under `prefix`: ``port`` → ``gateways[2].port``."""
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        return MapError(self.problem, path=path, source=self.source)


@dataclass(frozen=True, slots=True)
class Gateway:
    """One gateway of the pool: where a router sends the buckets it owns.

    Parameters
    ----------
    name
        Identifies the gateway in status, logs and metrics; for a pool on
        Kubernetes, its pod name (``gw-0``). Up to 253 characters, no
        whitespace or control characters.
    host
        The address routers connect to: the pod's stable DNS name
        (``<pod>.<headless-svc>.<ns>.svc.cluster.local``) or an IP address.
    port
        The gateway's DICOM port, 1..65535.
    ae_title
        The called AE title the gateway answers to: 1 to 16 characters of the
        DICOM default repertoire (printable ASCII), no backslash, not all
        spaces (the AE value representation of DICOM PS3.5).

    Raises
    ------
    MapError
        If a field is invalid.
    """

    name: str
    host: str
    port: int
    ae_title: str

    def __post_init__(self) -> None:
        _check_label(self.name, "name")
        _check_label(self.host, "host")
        if not is_int(self.port) or not 1 <= self.port <= 65535:
            raise MapError(f"{show(self.port)} is not a TCP port (1..65535)", path="port")
        _check_ae_title(self.ae_title)

    def address(self) -> str:
        """Return ``"AE@host:port"``, how logs name the gateway (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form of the gateway (camelCase keys)."""
        return {"name": self.name, "host": self.host, "port": self.port, "aeTitle": self.ae_title}

    @classmethod
    def from_dict(cls, data: object) -> Gateway:
        """Build a gateway from its wire form, rejecting missing and unknown keys.

        Raises
        ------
        MapError
            If `data` is not an object with exactly the keys ``name``,
            ``host``, ``port`` and ``aeTitle``, or a value is invalid.
        """
        fields = _mapping(data, what="a gateway", keys=_GATEWAY_KEYS, required=_GATEWAY_KEYS)
        return cls(
            name=fields["name"],
            host=fields["host"],
            port=fields["port"],
            ae_title=fields["aeTitle"],
        )


@dataclass(frozen=True, slots=True, repr=False)
class BucketMap:
    """One version of the bucket map; valid by construction.

    Parameters
    ----------
    version
        At least 0; the operator increases it on every change, so a router
        can tell a newer map from the one it applied and report which it
        routes by.
    buckets
        The bucket count, 1..65536, fixed for the life of a pool: a study's
        bucket depends on it, so changing it would move every study.
    gateways
        The gateways, at least one, with unique names and unique addresses
        (host, port and AE title). A gateway may own no bucket: one that
        is joining or leaving.
    owners
        ``owners[b]`` is the index in `gateways` of the gateway that receives
        bucket ``b`` now; one entry per bucket.
    moving
        Buckets in handover: bucket → index of the gateway it is handed over
        to, never its current owner. Routers keep sending it to its owner.
    closing
        Moving buckets in the last step of their handover: routers hold an
        instance for one until a newer map either gives the bucket to its new
        owner or takes it out of ``closing`` (then it goes to the owner).

    Raises
    ------
    MapError
        If a field is invalid or the fields disagree (an owner that is not a
        gateway, fewer or more owners than buckets, ...).

    Notes
    -----
    Sequences are stored as tuples and `moving` as a read-only mapping, so a
    map cannot change after it is checked, and a caller's list is not shared.
    """

    version: int
    buckets: int
    gateways: tuple[Gateway, ...]
    owners: tuple[int, ...]
    moving: Mapping[int, int] = field(default_factory=dict, hash=False)
    closing: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "gateways", tuple(self.gateways))
        object.__setattr__(self, "owners", tuple(self.owners))
        object.__setattr__(self, "moving", MappingProxyType(dict(self.moving)))
        if not is_int(self.version) or self.version < 0:
            raise MapError(
                f"{show(self.version)} is not a version (an integer >= 0)", path="version"
            )
        if not is_int(self.buckets) or not 1 <= self.buckets <= MAX_BUCKETS:
            raise MapError(
                f"{show(self.buckets)} is not a bucket count (1..{MAX_BUCKETS})", path="buckets"
            )
        self._check_gateways()
        self._check_owners()
        self._check_moving()
        object.__setattr__(self, "closing", frozenset(self.closing))
        for bucket in sorted(self.closing, key=repr):
            if bucket not in self.moving:
                raise MapError(
                    f"bucket {show(bucket)} is closing but not moving (closing is the last "
                    "step of a move)",
                    path="closing",
                )
        # Sorted once checked (keys are then known to be ints): equal maps print alike.
        object.__setattr__(self, "moving", MappingProxyType(dict(sorted(self.moving.items()))))

    def _check_gateways(self) -> None:
        if not self.gateways:
            raise MapError("[] has no gateway (at least one is needed)", path="gateways")
        names: dict[str, int] = {}
        addresses: dict[tuple[str, int, str], int] = {}
        for index, gateway in enumerate(self.gateways):
            path = f"gateways[{index}]"
            if not isinstance(gateway, Gateway):
                raise MapError(f"{show(gateway)} is not a Gateway", path=path)
            if gateway.name in names:
                raise MapError(
                    f"{gateway.name!r} is already the name of gateways[{names[gateway.name]}]",
                    path=f"{path}.name",
                )
            names[gateway.name] = index
            # DNS names are case-insensitive; an AE title's trailing spaces are not significant.
            address = (gateway.host.lower(), gateway.port, gateway.ae_title.strip(" "))
            if address in addresses:
                raise MapError(
                    f"{gateway.address()!r} is already the address of "
                    f"gateways[{addresses[address]}]",
                    path=path,
                )
            addresses[address] = index

    def _check_owners(self) -> None:
        if len(self.owners) != self.buckets:
            raise MapError(
                f"{len(self.owners)} entries, but there are {self.buckets} buckets "
                "(one owner per bucket)",
                path="owners",
            )
        count = len(self.gateways)
        for bucket, owner in enumerate(self.owners):
            if not is_int(owner) or not 0 <= owner < count:
                raise MapError(
                    f"{show(owner)} is not a gateway index (0..{count - 1})",
                    path=f"owners[{bucket}]",
                )

    def _check_moving(self) -> None:
        count = len(self.gateways)
        for bucket, target in self.moving.items():
            if not is_int(bucket) or not 0 <= bucket < self.buckets:
                raise MapError(
                    f"key {show(bucket)} is not a bucket (0..{self.buckets - 1})", path="moving"
                )
            path = f"moving[{bucket}]"
            if not is_int(target) or not 0 <= target < count:
                raise MapError(f"{show(target)} is not a gateway index (0..{count - 1})", path=path)
            if target == self.owners[bucket]:
                raise MapError(
                    f"{target} is the bucket's current owner; a handover needs another gateway",
                    path=path,
                )

    def __repr__(self) -> str:
        # The full owners list (thousands of entries) would drown a log line.
        names = tuple(gateway.name for gateway in self.gateways)
        return (
            f"BucketMap(version={self.version}, buckets={self.buckets}, "
            f"gateways={names!r}, moving={len(self.moving)} buckets)"
        )

    def gateway_for(self, bucket: int) -> Gateway:
        """Return the gateway that receives `bucket` now (its owner, also while it is moving).

        Raises
        ------
        ValueError
            If `bucket` is not in ``0 .. buckets - 1``; a negative bucket must
            not silently index from the end.
        """
        if not 0 <= bucket < self.buckets:
            raise ValueError(f"bucket {bucket!r} is not in 0..{self.buckets - 1}")
        return self.gateways[self.owners[bucket]]

    def bucket_counts(self) -> dict[str, int]:
        """Return how many buckets each gateway owns, by gateway name, in gateway order.

        Gateways that own nothing are listed with 0, so status shows a joining
        or drained gateway too.
        """
        counts = [0] * len(self.gateways)
        for owner in self.owners:
            counts[owner] += 1
        return {gateway.name: n for gateway, n in zip(self.gateways, counts, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form: plain dicts, lists and scalars, ready for JSON or YAML."""
        wire: dict[str, Any] = {
            "version": self.version,
            "buckets": self.buckets,
            "gateways": [gateway.to_dict() for gateway in self.gateways],
            "owners": list(self.owners),
            "moving": {str(bucket): target for bucket, target in self.moving.items()},
        }
        if self.closing:  # absent when empty: maps without a closing bucket read as before
            wire["closing"] = sorted(self.closing)
        return wire

    @classmethod
    def from_dict(cls, data: object) -> BucketMap:
        """Build a map from its wire form, checking everything.

        Unknown keys are refused, at the top level and in gateways, so that a
        misspelt field fails loudly instead of being ignored. ``moving`` keys
        may be decimal strings (JSON) or integers (YAML without quotes).

        Raises
        ------
        MapError
            If anything is missing, unknown, of the wrong type or inconsistent.
        """
        fields = _mapping(
            data, what="the bucket map", keys=_TOP_LEVEL_KEYS, required=_REQUIRED_KEYS
        )
        raw_gateways = _list(fields["gateways"], "gateways")
        gateways = []
        for index, entry in enumerate(raw_gateways):
            try:
                gateways.append(Gateway.from_dict(entry))
            except MapError as error:
                raise error.within(f"gateways[{index}]") from None
        return cls(
            version=fields["version"],
            buckets=fields["buckets"],
            gateways=tuple(gateways),
            owners=tuple(_list(fields["owners"], "owners")),
            moving=_moving(fields.get("moving", {})),
            closing=frozenset(_closing(fields.get("closing", []))),
        )


@dataclass(frozen=True, slots=True)
class Readiness:
    """The gateways of a pool that are not Ready now; valid by construction.

    Parameters
    ----------
    not_ready
        Gateway names (as in the map: for a pool on Kubernetes, pod names)
        whose pod is not Ready or does not exist. Empty: all are Ready.

    Raises
    ------
    MapError
        If a name is not a valid gateway name.
    """

    not_ready: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "not_ready", frozenset(self.not_ready))
        for name in sorted(self.not_ready, key=repr):
            _check_label(name, "notReady")

    def ready(self, gateway: str) -> bool:
        """Whether `gateway` may be sent to now (a name it does not list is Ready)."""
        return gateway not in self.not_ready

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form: ``{"notReady": [names, sorted]}``."""
        return {"notReady": sorted(self.not_ready)}

    @classmethod
    def from_dict(cls, data: object) -> Readiness:
        """Build it from its wire form, refusing unknown keys, duplicates and bad names.

        Raises
        ------
        MapError
            If `data` is not ``{"notReady": [...]}`` with distinct valid names.
        """
        fields = _mapping(
            data, what="the readiness", keys=_READINESS_KEYS, required=_READINESS_KEYS
        )
        names = _list(fields["notReady"], "notReady")
        for index, name in enumerate(names):
            _check_label(name, f"notReady[{index}]")
        if len(set(names)) != len(names):
            raise MapError("a gateway is listed twice", path="notReady")
        return cls(not_ready=frozenset(names))


def parse_readiness(text: str) -> Readiness:
    """Parse and check a readiness record written as JSON or YAML (as `parse_map` does).

    Raises
    ------
    MapError
        On a syntax error or an invalid record.
    """
    return Readiness.from_dict(_load_document(text))


def dump_readiness(readiness: Readiness) -> str:
    """Return the record as compact JSON, names sorted: the same set gives the same text.

    The operator compares it with what the ConfigMap holds and writes only news.
    """
    return json.dumps(readiness.to_dict(), sort_keys=True, separators=(",", ":"))


def parse_map(text: str) -> BucketMap:
    """Parse and check a bucket map written as JSON or YAML.

    JSON is tried first, being what the operator writes and much faster to
    parse; anything else is read as YAML (with ``safe_load`` semantics: no
    object construction). Duplicate keys are refused in both, since the last
    one silently winning is the same trap as a misspelt key.

    Raises
    ------
    MapError
        On a syntax error (saying where: line and column) or an invalid map.
    """
    return BucketMap.from_dict(_load_document(text))


def load_map(path: str | os.PathLike[str]) -> BucketMap:
    """Read and check a bucket map file (JSON or YAML, UTF-8).

    Raises
    ------
    MapError
        If the file is not UTF-8 text or not a valid map; the message starts
        with the file name.
    OSError
        If the file cannot be read: that is not a fault of the map.
    """
    source = os.fspath(path)
    with open(path, "rb") as stream:
        raw = stream.read()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark from editors
    except UnicodeDecodeError as error:
        raise MapError(
            f"not UTF-8 text ({error.reason} at byte {error.start})", source=source
        ) from None
    try:
        return parse_map(text)
    except MapError as error:
        raise MapError(error.problem, path=error.path, source=source) from None


def dump_map(bucket_map: BucketMap) -> str:
    """Return the map as compact JSON with sorted keys.

    The same map always gives the same text, so the operator can compare the
    text with what the ConfigMap holds and skip writes that change nothing,
    and `parse_map` gives back an equal map.
    """
    return json.dumps(bucket_map.to_dict(), sort_keys=True, separators=(",", ":"))


def balanced_map(
    gateways: Sequence[Gateway], *, buckets: int = 4096, version: int = 1
) -> BucketMap:
    """Return the map of a new pool: buckets dealt round robin over `gateways`.

    See `gatewaypool.assignment.initial_owners`.

    Raises
    ------
    MapError
        If `buckets` is out of range, there are no gateways or more gateways
        than buckets, or the gateways are not unique.
    """
    if not is_int(buckets) or not 1 <= buckets <= MAX_BUCKETS:
        raise MapError(f"{show(buckets)} is not a bucket count (1..{MAX_BUCKETS})", path="buckets")
    if not 1 <= len(gateways) <= buckets:
        raise MapError(
            f"{len(gateways)} gateways for {buckets} buckets (1..{buckets} gateways)",
            path="gateways",
        )
    owners = initial_owners(buckets, len(gateways))
    return BucketMap(
        version=version, buckets=buckets, gateways=tuple(gateways), owners=tuple(owners)
    )


# --- parsing helpers ---------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, object]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load_document(text: str) -> object:
    json_error: json.JSONDecodeError | None = None
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=refuse_duplicate_keys)
        except DuplicateKeyError as error:
            raise MapError(f"{error} (JSON)") from None
        except json.JSONDecodeError as error:
            json_error = error  # may still be a YAML flow mapping: {version: 3, ...}
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds no objects
    except yaml.MarkedYAMLError as error:
        if json_error is not None:
            raise MapError(
                f"line {json_error.lineno}, column {json_error.colno}: {json_error.msg} (JSON)"
            ) from None
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = error.problem or error.context or "syntax error"
        raise MapError(f"{where}{problem} (YAML)") from None
    except yaml.YAMLError as error:
        raise MapError(f"not valid YAML: {error}") from None


def _mapping(
    data: object, *, what: str, keys: Sequence[str], required: Sequence[str]
) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MapError(f"{what} must be an object, not {kind_of(data)}: {show(data)}")
    for key in data:
        if key not in keys:
            raise MapError(
                f"{show(key)} is not a known key (expected {', '.join(keys)})", path=str(key)
            )
    for key in required:
        if key not in data:
            raise MapError("required key is missing", path=key)
    return data


def _list(data: object, path: str) -> list[Any]:
    if not isinstance(data, list):
        raise MapError(f"{show(data)} is not a list ({kind_of(data)})", path=path)
    return data


def _closing(data: object) -> list[int]:
    items = _list(data, "closing")
    for index, bucket in enumerate(items):
        if not is_int(bucket):
            raise MapError(f"{show(bucket)} is not a bucket number", path=f"closing[{index}]")
    if len(set(items)) != len(items):
        raise MapError("a bucket is listed twice", path="closing")
    return items


def _moving(data: object) -> dict[int, int]:
    if not isinstance(data, Mapping):
        raise MapError(
            f"{show(data)} is not an object that maps buckets to gateway indices", path="moving"
        )
    moving: dict[int, int] = {}
    for key, target in data.items():
        if is_int(key):
            bucket = key
        elif is_decimal_key(key):
            bucket = int(key)
        else:
            raise MapError(f"key {show(key)} is not a bucket number", path="moving")
        if bucket in moving:
            raise MapError(f"key {show(key)} names bucket {bucket} twice", path="moving")
        moving[bucket] = target
    return moving


# --- value checks ------------------------------------------------------------


def _check_label(value: object, path: str) -> None:
    if not isinstance(value, str):
        raise MapError(f"{show(value)} is not a string ({kind_of(value)})", path=path)
    if not value:
        raise MapError("'' is empty", path=path)
    if len(value) > _MAX_NAME:
        raise MapError(f"{show(value)} is longer than {_MAX_NAME} characters", path=path)
    if any(char.isspace() or not char.isprintable() for char in value):
        raise MapError(f"{value!r} contains whitespace or control characters", path=path)


def _check_ae_title(value: object) -> None:
    path = "aeTitle"
    if not isinstance(value, str):
        raise MapError(f"{show(value)} is not a string ({kind_of(value)})", path=path)
    problem = ae_title_problem(value)
    if problem is not None:
        raise MapError(f"{value!r} is not an AE title ({problem})", path=path)
