"""A Kubernetes API on 127.0.0.1 for tests and the local demo, without a cluster.

:class:`KubeEmulator` serves `kmock <https://pypi.org/project/kmock/>`_'s
``KubernetesEmulator`` -- an in-memory object store behind a real HTTP server
-- from a background thread, so the real ``kubernetes`` client, ``kopf`` and
``kubectl`` talk to it over TCP, in this process or in subprocesses, while the
test thread blocks::

    with KubeEmulator() as kube:
        core = kubernetes.client.CoreV1Api(kube.api_client())
        core.create_namespaced_config_map("radiology", {"metadata": {"name": "m"}})
        assert kube.objects("ConfigMap", "radiology")[0]["metadata"]["uid"]

Every resource the GatewayPool operator touches is declared (see
:data:`RESOURCES`); a CRD object created later (:meth:`KubeEmulator.apply_crd`
or a POST) declares its resource too, as the API server does.

What kmock 0.8 lacks and this subclass adds
-------------------------------------------
kmock stores objects as the clients send them. The operator, kopf and the
client need more of the API server's behaviour, so :class:`_Emulator` owns
every write itself (kmock still stores, watches, lists and discovers):

- ``metadata.uid``, ``creationTimestamp``, ``namespace`` (from the URL),
  ``generateName``, ``kind``/``apiVersion``, a namespace's
  ``kubernetes.io/metadata.name`` label; a ``resourceVersion`` from one
  increasing counter, bumped by every real change (a no-op patch changes
  nothing and sends no watch event, as on a real server);
- ``generation``: 1 on create, +1 when anything but ``metadata``/``status``
  changes -- not on a ``/status`` write;
- ``201 Created`` on create (the client returns ``None`` on a 200), 409
  ``AlreadyExists``, 409 ``Conflict`` for a stale ``resourceVersion`` in a
  merge patch or a PUT, 422 when a JSON patch (including kopf's ``test`` on
  ``/metadata/resourceVersion``) does not apply, 415 for a strategic merge
  patch on a custom resource and for server-side apply;
- PUT (replace); ``/status`` separated from the main resource where the
  resource has that subresource (status is dropped on create and on writes to
  the main resource; a ``/status`` write changes only status);
- ``/scale``: GET answers an ``autoscaling/v1`` ``Scale`` built from the
  resource's replicas/selector paths; PATCH or PUT sets ``spec.replicas``;
- namespaces: kmock cannot even parse ``/api/v1/namespaces`` (it takes
  ``namespaces`` for the namespace marker), so those paths are re-addressed;
- lists carry ``kind: <Kind>List``, ``apiVersion`` and a ``resourceVersion``;
  core discovery says ``groupVersion: v1`` (kubectl needs both);
- ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, ``k``, ``!k``)
  and ``fieldSelector`` on ``metadata.name``/``metadata.namespace`` for
  lists and watches (kmock ignores them and returns everything);
- watches take their snapshot and their subscription to changes at once
  (kmock's missed a write made while it sent the snapshot), end after
  ``timeoutSeconds`` (kmock streams forever) and when the emulator stops
  (else aiohttp waits 60 s for them);
- kmock's request log holds the requests in flight only, unless
  ``keep_requests``: kmock scans all of it for every request, which made a
  request cost 70 ms after 1000 and kopf's long runs unusable;
- an object's history (``emulator.objects[...].history``) keeps its last
  20 versions, not all of them;
- deleting an object with finalizers sets ``deletionTimestamp``; removing
  the last finalizer deletes it (one DELETED event, as on a real server).

What it still does not do -- tests must not rely on it
------------------------------------------------------
- **Watch resourceVersion semantics**: every watch, including a reconnect
  with ``resourceVersion=...``, first replays all objects as ADDED; no
  bookmarks, no 410 Gone. Selectors filter events by the new object only (an
  object that stops matching sends no DELETED).
- **Lists**: no pagination (``limit``/``continue`` ignored: everything in
  one page); ``resourceVersion`` parameters on GET/list are ignored.
- **Strategic merge** is a JSON merge patch (lists are replaced, not merged
  by key); ``$patch`` directives are not understood; no server-side apply.
- **Garbage collection**: deleting an owner leaves its dependents
  (``ownerReferences`` are stored, never acted on); ``propagationPolicy``,
  ``preconditions`` and ``dryRun`` are ignored; no deletecollection.
- **Validation and defaulting**: no CRD schema (``openAPIV3Schema``),
  ``x-kubernetes-validations``, pruning of unknown fields, defaults,
  immutability or built-in kind validation; names are not checked. Beware of
  pruning: kopf keeps its progress in ``status.kopf`` by default, which
  survives here but is pruned by a real server unless the CRD's schema keeps
  it (or kopf is told to use annotations only). Objects
  may be created in namespaces that do not exist; deleting a namespace does
  not delete its contents. Cover these with unit tests of the CRD and of the
  manifests instead.
- **Controllers**: nothing reconciles. A StatefulSet's status never changes
  and no pods appear unless a test writes them
  (:meth:`KubeEmulator.write_status`, :meth:`KubeEmulator.create`); the only
  controller emulated is the CRD one (a created CRD is Established at once).
- **Authentication and authorization**: none; RBAC objects are stored only.
- Deleting a CRD does not undeclare its resource nor delete its objects.
- kmock's server installs an aiohttp resolver hook for the whole process;
  emulators in one process must be stopped in the reverse order of starting.

Running kopf against it
-----------------------
Run kopf cluster-wide and without peering (the peering resources are
declared, but standalone keeps kopf from writing keep-alives to them)::

    kopf run --standalone -A --verbose operator.py   # env KUBECONFIG=<kubeconfig_path>

In a subprocess, ``KUBECONFIG`` in its environment is enough. In the test
process (``kopf.testing.KopfRunner``), kopf's default login
(``login_via_client``) calls ``kubernetes.config.load_kube_config()``, whose
default path the ``kubernetes`` package read from ``$KUBECONFIG`` when it was
first imported -- so set both ``KUBECONFIG`` and
``kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION`` (pytest's
``monkeypatch``), or give the operator a ``@kopf.on.login()`` handler that
returns ``kopf.login_with_kubeconfig(**kwargs)``, which reads the variable
when it runs.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import logging
import re
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast

import aiohttp.web
import attrs
import kmock
import kubernetes.client
import kubernetes.config
import yaml

__all__ = [
    "RESOURCES",
    "KubeEmulator",
    "KubeEmulatorError",
    "ResourceKind",
    "ScalePaths",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

JSONObject = dict[str, Any]

#: How long the test thread waits for the server's loop to answer one call.
_CALL_TIMEOUT_S: Final = 10.0
#: How long starting and stopping the server may take before it is an error.
_START_STOP_TIMEOUT_S: Final = 10.0

_ALL_VERBS: Final = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
#: Groups served by the API server itself: strategic merge is allowed there only.
_BUILTIN_GROUPS: Final = frozenset(
    {
        "",
        "apps",
        "rbac.authorization.k8s.io",
        "networking.k8s.io",
        "policy",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
        "events.k8s.io",
        "autoscaling",
        "batch",
    }
)
#: kmock parses ``/api/v1/namespaces`` as "a namespace with no name" and fails;
#: such requests are re-addressed to this segment, which no namespace can be
#: named (names are DNS labels), and put right in
#: :meth:`_Emulator._readdress_namespaces`.
_ALL_NAMESPACES_SEGMENT: Final = "_"
_NAMESPACES_PATH: Final = re.compile(r"/api/v1/namespaces")
_GENERATED_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
#: Versions of an object kept in kmock's history (``emulator.objects[...].history``).
_HISTORY_KEPT: Final = 20


class KubeEmulatorError(RuntimeError):
    """The emulator could not start, stop, or answer a call from the test thread."""


@dataclasses.dataclass(frozen=True)
class ScalePaths:
    """Where a resource keeps what its ``/scale`` subresource shows.

    Paths are tuples of keys from the object's root, as a CRD's
    ``subresources.scale`` gives them (``.spec.replicas`` is
    ``("spec", "replicas")``). ``selector_path`` points either at a label
    selector string (custom resources: ``.status.selector``) or, when
    ``selector_is_label_selector``, at a ``LabelSelector`` object (the
    ``spec.selector`` of StatefulSets and Deployments).
    """

    spec_replicas: tuple[str, ...] = ("spec", "replicas")
    status_replicas: tuple[str, ...] = ("status", "replicas")
    selector_path: tuple[str, ...] | None = ("status", "selector")
    selector_is_label_selector: bool = False


_WORKLOAD_SCALE: Final = ScalePaths(
    selector_path=("spec", "selector"), selector_is_label_selector=True
)


@dataclasses.dataclass(frozen=True)
class ResourceKind:
    """One served resource: its address, its kind, and how the server treats it.

    ``status`` in ``subresources`` makes ``/status`` the only way to change the
    status (as on a real server); ``scale`` needs ``scale`` paths.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    shortnames: frozenset[str] = frozenset()
    scale: ScalePaths | None = None

    @property
    def api_version(self) -> str:
        """``apiVersion`` of its objects: ``v1`` for the core group, else ``group/version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def builtin(self) -> bool:
        """Whether the API server implements it itself (strategic merge works)."""
        return self.group in _BUILTIN_GROUPS

    @property
    def resource(self) -> kmock.resource:
        """The resource as kmock addresses it."""
        return kmock.resource(self.group, self.version, self.plural)

    def info(self) -> kmock.ResourceInfo:
        """Discovery information, as kubectl and kopf read it."""
        return kmock.ResourceInfo(
            namespaced=self.namespaced,
            kind=self.kind,
            singular=self.kind.lower(),
            verbs=_ALL_VERBS,
            shortnames=self.shortnames,
            subresources=self.subresources,
        )


def _kind(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    subresources: Iterable[str] = (),
    shortnames: Iterable[str] = (),
    scale: ScalePaths | None = None,
) -> ResourceKind:
    return ResourceKind(
        group,
        version,
        plural,
        kind,
        namespaced,
        frozenset(subresources),
        frozenset(shortnames),
        scale,
    )


#: What GatewayPool reads and writes, what kopf needs, and GatewayPool itself
#: as the CRD defines it (its scale paths are the CRD's).
RESOURCES: Final[tuple[ResourceKind, ...]] = (
    _kind("", "v1", "namespaces", "Namespace", namespaced=False, shortnames={"ns"}),
    _kind("", "v1", "configmaps", "ConfigMap", shortnames={"cm"}),
    _kind("", "v1", "services", "Service", subresources={"status"}, shortnames={"svc"}),
    _kind("", "v1", "serviceaccounts", "ServiceAccount", shortnames={"sa"}),
    _kind("", "v1", "pods", "Pod", subresources={"status"}, shortnames={"po"}),
    _kind("", "v1", "events", "Event", shortnames={"ev"}),
    _kind(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        subresources={"status", "scale"},
        shortnames={"sts"},
        scale=_WORKLOAD_SCALE,
    ),
    _kind(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        subresources={"status", "scale"},
        shortnames={"deploy"},
        scale=_WORKLOAD_SCALE,
    ),
    _kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", shortnames={"netpol"}),
    _kind(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        subresources={"status"},
        shortnames={"pdb"},
    ),
    _kind("coordination.k8s.io", "v1", "leases", "Lease"),
    _kind(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        subresources={"status"},
        shortnames={"crd", "crds"},
    ),
    _kind("events.k8s.io", "v1", "events", "Event", shortnames={"ev"}),
    _kind(
        "gatewaypool.io",
        "v1alpha1",
        "gatewaypools",
        "GatewayPool",
        subresources={"status", "scale"},
        shortnames={"gwp"},
        scale=ScalePaths(),
    ),
    # kopf's peering, for kopf run without --standalone.
    _kind("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    _kind("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
)

_CRDS: Final = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_NAMESPACES: Final = kmock.resource("", "v1", "namespaces")


def kinds_from_crd(crd: Mapping[str, Any]) -> list[ResourceKind]:
    """The resources a CustomResourceDefinition serves, one per served version.

    Parameters
    ----------
    crd
        The CRD object (``apiextensions.k8s.io/v1``).

    Returns
    -------
    list of ResourceKind
        With the CRD's scope, names, and status/scale subresources.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    kinds: list[ResourceKind] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale_spec = subresources.get("scale")
        scale = None
        if scale_spec is not None:
            selector = scale_spec.get("labelSelectorPath")
            scale = ScalePaths(
                spec_replicas=_json_path(scale_spec["specReplicasPath"]),
                status_replicas=_json_path(scale_spec["statusReplicasPath"]),
                selector_path=_json_path(selector) if selector else None,
            )
        kinds.append(
            _kind(
                spec["group"],
                version["name"],
                names["plural"],
                names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=subresources.keys(),
                shortnames=names.get("shortNames") or (),
                scale=scale,
            )
        )
    return kinds


def _json_path(path: str) -> tuple[str, ...]:
    # A CRD's scale paths are simple JSON paths: ".spec.replicas".
    return tuple(part for part in path.split(".") if part)


# ---------------------------------------------------------------------------
# Errors answered as Kubernetes Status objects (kmock renders KubernetesError).


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    # Non-empty details keep kmock from putting a server traceback there.
    details = {"causes": [{"message": message}]}
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


def _not_found(kind: ResourceKind, name: str | None) -> kmock.KubernetesError:
    return _error(404, "NotFound", f'{kind.plural}.{kind.group} "{name}" not found')


# ---------------------------------------------------------------------------
# Selectors (kmock ignores them; a test relying on them would see everything).


_LABEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_LABEL_VALUE = r"[-A-Za-z0-9_.]*"
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        (?P<set_key>{_LABEL_KEY})\s+(?P<set_op>in|notin)\s*\((?P<set_values>[^)]*)\)
      | (?P<eq_key>{_LABEL_KEY})\s*(?P<eq_op>==|=|!=)\s*(?P<eq_value>{_LABEL_VALUE})
      | !\s*(?P<absent_key>{_LABEL_KEY})
      | (?P<present_key>{_LABEL_KEY})
    )\s*(?:,|$)""",
    re.VERBOSE,
)


@dataclasses.dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.op:
            case "in":
                return self.key in labels and labels[self.key] in self.values
            case "notin":
                return self.key not in labels or labels[self.key] not in self.values
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels


def _parse_label_selector(text: str) -> list[_Requirement]:
    requirements: list[_Requirement] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise _error(400, "BadRequest", f"unable to parse labelSelector {text!r}")
        position = match.end()
        if match["set_key"]:
            values = frozenset(v.strip() for v in match["set_values"].split(",") if v.strip())
            requirements.append(_Requirement(match["set_key"], match["set_op"], values))
        elif match["eq_key"]:
            op = "notin" if match["eq_op"] == "!=" else "in"
            requirements.append(_Requirement(match["eq_key"], op, frozenset({match["eq_value"]})))
        elif match["absent_key"]:
            requirements.append(_Requirement(match["absent_key"], "!exists"))
        else:
            requirements.append(_Requirement(match["present_key"], "exists"))
    return requirements


_FIELD_REQUIREMENT = re.compile(r"\s*(?P<field>[A-Za-z.]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*)")
_SELECTABLE_FIELDS: Final = {"metadata.name": "name", "metadata.namespace": "namespace"}


@dataclasses.dataclass(frozen=True)
class _Selector:
    """The ``labelSelector`` and ``fieldSelector`` of one list or watch."""

    labels: tuple[_Requirement, ...] = ()
    fields: tuple[tuple[str, bool, str], ...] = ()  # (metadata key, equal?, value)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> _Selector:
        labels = _parse_label_selector(params.get("labelSelector", ""))
        fields: list[tuple[str, bool, str]] = []
        for part in filter(None, params.get("fieldSelector", "").split(",")):
            match = _FIELD_REQUIREMENT.fullmatch(part)
            if match is None or match["field"] not in _SELECTABLE_FIELDS:
                raise _error(
                    400,
                    "BadRequest",
                    f"fieldSelector {part!r}: the emulator selects on "
                    f"{sorted(_SELECTABLE_FIELDS)} only",
                )
            fields.append(
                (_SELECTABLE_FIELDS[match["field"]], match["op"] != "!=", match["value"].strip())
            )
        return cls(tuple(labels), tuple(fields))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if not all(requirement.matches(labels) for requirement in self.labels):
            return False
        return all((metadata.get(key) == value) == equal for key, equal, value in self.fields)


# ---------------------------------------------------------------------------
# Pure helpers for the writes.


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get_path(obj: Mapping[str, Any], path: Iterable[str]) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _set_path(obj: JSONObject, path: tuple[str, ...], value: Any) -> None:
    target = obj
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _render_label_selector(selector: Any) -> str:
    if not isinstance(selector, Mapping):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(expression.get("values") or [])
        parts.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key}.get(
                operator, f"!{key}"
            )
        )
    return ",".join(parts)


def _scale_of(kind: ResourceKind, obj: Mapping[str, Any]) -> JSONObject:
    """The ``autoscaling/v1`` Scale a GET on ``/scale`` answers."""
    paths = kind.scale or ScalePaths()
    selector: Any = None
    if paths.selector_path is not None:
        selector = _get_path(obj, paths.selector_path)
        if paths.selector_is_label_selector:
            selector = _render_label_selector(selector)
    metadata = obj.get("metadata") or {}
    status: JSONObject = {"replicas": _get_path(obj, paths.status_replicas) or 0}
    if selector:
        status["selector"] = selector
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in metadata
        },
        "spec": {"replicas": _get_path(obj, paths.spec_replicas) or 0},
        "status": status,
    }


def _without(obj: Mapping[str, Any], *keys: str) -> JSONObject:
    return {key: value for key, value in obj.items() if key not in keys}


def _apply_patch(target: Mapping[str, Any], patch: Any, content_type: str) -> JSONObject:
    """Apply a JSON patch (a list) or a JSON merge patch (a dict) to a copy of ``target``.

    kmock's own implementations are used, so the results are the ones kmock
    would store. Anything that fails to apply -- a failed ``test`` op, a
    missing path, a dict patched onto a scalar -- is a 422, as kopf expects
    for its optimistic ``test`` on ``resourceVersion``.
    """
    if "apply-patch" in content_type:
        raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
    if not isinstance(patch, list | dict):
        raise _error(400, "BadRequest", "the patch is not a JSON object or array")
    if ("json-patch" in content_type) != isinstance(patch, list):
        raise _error(400, "BadRequest", f"the patch does not suit {content_type!r}")
    scratch = kmock.Object(copy.deepcopy(dict(target)))
    try:
        # kmock annotates patch() for merge patches, but applies JSON patches (lists) too.
        scratch.patch(cast(Mapping[str, Any], patch))
    except Exception as exc:  # jsonpatch/jsonpointer/kmock raise their own types
        raise _error(422, "Invalid", f"the patch does not apply: {exc}") from exc
    return copy.deepcopy(scratch.raw)


@dataclasses.dataclass
class _Write:
    """What one write did: the object to answer with, and the watch events to send."""

    answer: JSONObject
    events: list[JSONObject] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------
# The kmock emulator with the API server's write semantics.


@attrs.define(kw_only=True)
class _Emulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the server-side behaviour clients rely on.

    All writes (create, patch, PUT, delete, for every subresource) happen
    here, synchronously between two ``await``s and under kmock's own lock, so
    that each gets its own ``resourceVersion`` and the watch events go out in
    that order. Watches are served here too (see :meth:`_serve_watch`); gets,
    lists and discovery stay kmock's, wrapped for selectors, ``/scale``, list
    kinds and core discovery.
    """

    #: Keep kmock's log of every request (``.requests``) for assertions;
    #: serving slows down in proportion to its length.
    keep_requests: bool = False
    _kinds: dict[kmock.resource, ResourceKind] = attrs.field(factory=dict, init=False)
    _revision: int = attrs.field(default=1000, init=False)
    # Answers of writes for the fallbacks, keyed by request, while it is served.
    _answers: dict[kmock.Request, kmock.Payload] = attrs.field(factory=dict, init=False)
    # Set when the server stops: open watches end instead of holding it for 60 s.
    _closing: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock serves no PUT; writes are done in _handle, this only answers.
        self.fallback[kmock.method.PUT] << self._serve_write

    # -- declarations -------------------------------------------------------

    def declare(self, kind: ResourceKind) -> None:
        """Serve ``kind`` (discovery, reads and writes)."""
        self._kinds[kind.resource] = kind
        self.resources[kind.resource] = kind.info()

    def kind_of(self, resource: kmock.resource) -> ResourceKind | None:
        """The declared kind at this address, if any."""
        return self._kinds.get(resource)

    @property
    def kinds(self) -> list[ResourceKind]:
        """Every declared kind."""
        return list(self._kinds.values())

    def close_watches(self) -> None:
        """End every open watch (called on the server's loop when stopping)."""
        self._closing.set()

    # -- HTTP entry ---------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Re-address what kmock cannot parse (before anything reads the body:
        # the clone reads the same one). The python client asks "/api/v1/"
        # for discovery; kmock knows "/api/v1" only.
        path = raw_request.path.rstrip("/") or "/"
        if _NAMESPACES_PATH.fullmatch(path):
            path = f"/api/v1/namespaces/{_ALL_NAMESPACES_SEGMENT}"
        if path != raw_request.path:
            query = raw_request.rel_url.query  # with_path() drops it
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(path) % query)
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        request = self._readdress_namespaces(request)
        try:
            return await self._dispatch(request)
        finally:
            # kmock finds the reactions for a request by scanning its whole
            # request log, once per reaction: with the log kept, each request
            # costs O(requests so far) -- 70 ms after 1000, 200 ms after 2000.
            # The log holds the requests in flight only, unless asked for.
            if not self.keep_requests:
                self._requests.remove(request)

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        kind = self.kind_of(request.resource) if request.resource is not None else None
        is_write = request.action in {
            kmock.action.CREATE,
            kmock.action.UPDATE,
            kmock.action.DELETE,
        } or (request.method == kmock.method.PUT and request.name is not None)
        if kind is None or not is_write:
            # Reads, discovery, and whatever is not declared: kmock's own way.
            response = await super()._handle(request)
        else:
            async with self._lock:
                write = self._write(kind, request)
                for event in write.events:
                    await self._buses[kind.resource].put(event)
            self._answers[request] = write.answer
            try:
                # Skip KubernetesEmulator._handle, which would store the raw
                # request body again, but keep kmock's reactions: a test may
                # still answer a write its own way (the write is done anyway,
                # as kmock does too).
                response = await super(kmock.KubernetesEmulator, self)._handle(request)
            finally:
                self._answers.pop(request, None)
        created = request.action == kmock.action.CREATE and response.status == 200
        if created and not response.prepared:
            response.set_status(201)  # the client returns None for a 200 on create
        return response

    def _readdress_namespaces(self, request: kmock.Request) -> kmock.Request:
        """Make kmock's parse of a ``/api/v1/namespaces[/NAME]`` request say what it is.

        kmock reads ``/api/v1/namespaces/NAME`` as "everything of no resource in
        namespace NAME", so the resource, name and action are put right here.
        """
        resource = request.resource
        if (
            resource is None
            or (resource.group, resource.version, resource.plural) != ("", "v1", None)
            or request.namespace is None
        ):
            return request
        name = None if request.namespace == _ALL_NAMESPACES_SEGMENT else request.namespace
        action = request.action
        if name is not None and action != kmock.action.WATCH:
            action = {
                kmock.method.GET: kmock.action.FETCH,
                kmock.method.PATCH: kmock.action.UPDATE,
                kmock.method.DELETE: kmock.action.DELETE,
            }.get(request.method)
        fixed = attrs.evolve(
            request, resource=_NAMESPACES, namespace=None, name=name, action=action
        )
        # kmock matches reactions to requests by identity in its request log:
        # the log must hold the request that is served.
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is request:
                self._requests[index] = fixed
                break
        return fixed

    # -- writes -------------------------------------------------------------

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _key(
        self, kind: ResourceKind, namespace: str | None, name: str
    ) -> tuple[kmock.resource, str | None, str]:
        return (kind.resource, namespace if kind.namespaced else None, name)

    def _current(self, kind: ResourceKind, namespace: str | None, name: str) -> JSONObject:
        key = self._key(kind, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise _not_found(kind, name)
        return copy.deepcopy(self.objects[key].raw)

    def _write(self, kind: ResourceKind, request: kmock.Request) -> _Write:
        content_type = request.headers.get("Content-Type", "application/json")
        if request.action == kmock.action.CREATE:
            if request.subresource:
                raise _error(405, "MethodNotAllowed", f"POST on {request.subresource!r}")
            if not isinstance(request.data, Mapping):
                raise _error(400, "BadRequest", "the body is not a JSON object")
            return self.write_create(kind, request.namespace, request.data)
        assert request.name is not None  # every other write names its object
        if request.action == kmock.action.DELETE:
            return self.write_delete(kind, request.namespace, request.name)
        strategic = "strategic-merge" in content_type
        if request.action == kmock.action.UPDATE and strategic and not kind.builtin:
            raise _error(
                415,
                "UnsupportedMediaType",
                "strategic merge patch is not supported for custom resources",
            )
        return self.write_update(
            kind,
            request.namespace,
            request.name,
            subresource=request.subresource,
            patch=request.data if request.action == kmock.action.UPDATE else None,
            content_type=content_type,
            replacement=request.data if request.action != kmock.action.UPDATE else None,
        )

    def write_create(
        self, kind: ResourceKind, namespace: str | None, body: Mapping[str, Any]
    ) -> _Write:
        """Store a new object, as a POST does (call on the server's loop)."""
        obj = copy.deepcopy(dict(body))
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATED_NAME_ALPHABET) for _ in range(5))
            metadata["name"] = metadata["generateName"] + suffix
        name = metadata.get("name")
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value")
        namespace = namespace or metadata.get("namespace")
        if kind.namespaced:
            if not namespace:
                raise _error(400, "BadRequest", "a namespaced object needs a namespace")
            metadata["namespace"] = namespace
        else:
            namespace = None
            metadata.pop("namespace", None)
        key = self._key(kind, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            raise _error(
                409, "AlreadyExists", f'{kind.plural}.{kind.group} "{name}" already exists'
            )
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(server_field, None)
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_revision(),
            creationTimestamp=_now(),
            generation=1,
        )
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if "status" in kind.subresources:
            obj.pop("status", None)
        if kind.resource == _CRDS:
            self._establish(obj)
        if kind.resource == _NAMESPACES:  # set by the API server since 1.21
            metadata.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        return _Write(obj, [{"type": "ADDED", "object": obj}])

    def _establish(self, crd: JSONObject) -> None:
        # The apiextensions controller, the one controller emulated: a CRD
        # serves its resource as soon as it exists.
        for kind in kinds_from_crd(crd):
            self.declare(kind)
        names = (crd.get("spec") or {}).get("names") or {}
        now = _now()
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [
                version["name"]
                for version in (crd.get("spec") or {}).get("versions") or []
                if version.get("storage")
            ],
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": now}
                for t, r in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }

    def write_update(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        *,
        subresource: str | None = None,
        patch: Any = None,
        content_type: str = "application/merge-patch+json",
        replacement: Any = None,
    ) -> _Write:
        """Patch (``patch``) or replace (``replacement``) an object or its subresource."""
        if subresource not in {None, *kind.subresources}:
            raise _not_found(kind, f"{name}/{subresource}")
        old = self._current(kind, namespace, name)
        if subresource == "scale":
            return self._update_scale(kind, old, patch, content_type, replacement)

        if replacement is not None:
            if not isinstance(replacement, Mapping):
                raise _error(400, "BadRequest", "the body is not a JSON object")
            candidate = copy.deepcopy(dict(replacement))
            stated = (candidate.get("metadata") or {}).get("resourceVersion")
        else:
            candidate = _apply_patch(old, patch, content_type)
            stated = ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}).get(
                "resourceVersion"
            )
        current_revision = old["metadata"]["resourceVersion"]
        if stated is not None and stated != current_revision:
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural}.{kind.group} "{name}": '
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
            )

        new = self._merge_allowed(kind, old, candidate, subresource)
        if new == old:
            return _Write(old)  # a no-op: no new resourceVersion, no event
        if _without(new, "metadata", "status") != _without(old, "metadata", "status"):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_revision()
        return self._store(kind, new, "MODIFIED")

    def _merge_allowed(
        self, kind: ResourceKind, old: JSONObject, candidate: JSONObject, subresource: str | None
    ) -> JSONObject:
        """What the server keeps of a candidate state: only the parts this write may change."""
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
            return new
        new = candidate
        if "status" in kind.subresources:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        metadata = new.get("metadata")
        new["metadata"] = metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
        for fixed in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if fixed in old["metadata"]:
                metadata[fixed] = old["metadata"][fixed]
            else:
                metadata.pop(fixed, None)
        new["apiVersion"] = old.get("apiVersion", kind.api_version)
        new["kind"] = old.get("kind", kind.kind)
        return new

    def _update_scale(
        self,
        kind: ResourceKind,
        old: JSONObject,
        patch: Any,
        content_type: str,
        replacement: Any,
    ) -> _Write:
        paths = kind.scale or ScalePaths()
        scale = _scale_of(kind, old)
        if replacement is not None:
            new_scale = replacement if isinstance(replacement, Mapping) else {}
        else:
            new_scale = _apply_patch(scale, patch, content_type)
        replicas = _get_path(new_scale, ("spec", "replicas"))
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise _error(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
        stated = _get_path(new_scale, ("metadata", "resourceVersion"))
        if stated is not None and stated != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified")
        if _get_path(old, paths.spec_replicas) == replicas:
            return _Write(scale)
        new = copy.deepcopy(old)
        _set_path(new, paths.spec_replicas, replicas)
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_revision()
        write = self._store(kind, new, "MODIFIED")
        return _Write(_scale_of(kind, write.answer), write.events)

    def write_delete(self, kind: ResourceKind, namespace: str | None, name: str) -> _Write:
        """Delete an object, or mark it for deletion while it has finalizers."""
        old = self._current(kind, namespace, name)
        metadata = old["metadata"]
        if metadata.get("finalizers"):
            if metadata.get("deletionTimestamp"):
                return _Write(old)
            new = copy.deepcopy(old)
            new["metadata"].update(
                deletionTimestamp=_now(),
                deletionGracePeriodSeconds=0,
                resourceVersion=self._next_revision(),
            )
            return self._store(kind, new, "MODIFIED")
        new = copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = self._next_revision()
        write = self._store(kind, new, "DELETED")
        return _Write(
            {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": kind.plural, "uid": metadata.get("uid")},
            },
            write.events,
        )

    def _store(self, kind: ResourceKind, new: JSONObject, event: str) -> _Write:
        """Keep ``new`` as the object's latest version and say what watchers see.

        A terminating object whose last finalizer went is deleted with the
        same write: watchers see one DELETED, as from a real server.
        """
        metadata = new["metadata"]
        key = self._key(kind, metadata.get("namespace"), metadata["name"])
        if kind.resource == _CRDS and event == "MODIFIED":
            self._establish(new)
        history = self.objects[key].history
        history.append(new)
        # kmock keeps every version of every object; kopf and the operator
        # write often, so a long demo would keep growing. Recent ones suffice.
        del history[:-_HISTORY_KEPT]
        released = metadata.get("deletionTimestamp") and not metadata.get("finalizers")
        if event == "DELETED" or released:
            self.objects[key].delete()
            event = "DELETED"
        return _Write(new, [{"type": event, "object": new}])

    # -- answers ------------------------------------------------------------

    # Writes to declared resources were done in _handle and left their answer;
    # writes to undeclared ones were done by kmock, which answers them.

    async def _serve_write(self, request: kmock.Request) -> kmock.Payload:
        return self._answers.get(request)

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        if request in self._answers:
            return self._answers[request]
        return await super()._serve_create(request)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        if request in self._answers:
            return self._answers[request]
        return await super()._serve_update(request)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        if request in self._answers:
            return self._answers[request]
        return await super()._serve_delete(request)

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        kind = self.kind_of(request.resource) if request.resource is not None else None
        if kind is None or request.subresource is None:
            return await super()._serve_fetch(request)
        if request.subresource not in kind.subresources or request.name is None:
            raise _not_found(kind, f"{request.name}/{request.subresource}")
        async with self._lock:
            obj = self._current(kind, request.namespace, request.name)
        return _scale_of(kind, obj) if request.subresource == "scale" else obj

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        selector = _Selector.from_params(request.params)
        listing = await super()._serve_list(request)
        kind = self.kind_of(request.resource) if request.resource is not None else None
        if kind is None or not isinstance(listing, dict):
            return listing
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self._revision)},
            "items": [item for item in listing.get("items", []) if selector.matches(item)],
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """Stream the matching objects as ADDED, then every change, like a watch.

        Unlike kmock's own, the subscription to changes is taken together
        with the snapshot, under the lock writes take: kmock's takes it after
        sending the snapshot, and a write in between was never seen.
        """
        selector = _Selector.from_params(request.params)
        timeout = request.params.get("timeoutSeconds")
        deadline = asyncio.get_running_loop().time() + float(timeout) if timeout else None
        resource = request.resource
        assert resource is not None  # kmock routes watches of resources only

        def wanted(obj: Mapping[str, Any]) -> bool:
            metadata = obj.get("metadata") or {}
            return (
                (request.namespace is None or metadata.get("namespace") == request.namespace)
                and (request.name is None or metadata.get("name") == request.name)
                and selector.matches(obj)
            )

        yield b""  # send the headers now: a watch may stay silent for long
        bus = self._buses[resource]
        async with self._lock:
            marker = await bus.mark()
            snapshot = [
                copy.deepcopy(obj.raw)
                for (res, _, _), obj in self.objects.items()
                if res == resource and not obj.deleted
            ]
        try:
            for obj in snapshot:
                if wanted(obj):
                    yield {"type": "ADDED", "object": obj}
            changes = aiter(bus.stream(since=marker))
            while True:
                more, event = await self._next_or_end(changes, deadline)
                if not more:
                    return
                if isinstance(event, dict) and wanted(event.get("object") or {}):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _next_or_end(
        self, source: AsyncIterator[kmock.Payload], deadline: float | None
    ) -> tuple[bool, kmock.Payload]:
        """The next change on a watch's bus; ``(False, None)`` at the deadline or closing.

        A bus stream waits forever. Its ``anext`` runs as a task here so that
        it can be cancelled from outside the generator: that ends the watch
        cleanly (the client sees the end of the response, as when a real
        server's watch times out).
        """
        loop = asyncio.get_running_loop()
        step: asyncio.Future[kmock.Payload] = asyncio.ensure_future(anext(source))
        closing = asyncio.ensure_future(self._closing.wait())
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            waiters: set[asyncio.Future[Any]] = {step, closing}
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
        if step.cancelled():
            return False, None
        error = step.exception()
        if isinstance(error, StopAsyncIteration):
            return False, None
        if error is not None:
            raise error
        return True, step.result()

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        answer = await super()._serve_version(request)
        if isinstance(answer, dict) and answer.get("groupVersion") == "/v1":
            answer["groupVersion"] = "v1"  # the core group has no "group/" prefix
        return answer


# ---------------------------------------------------------------------------
# The thread-hosted server and its test-facing API.


def _kubeconfig(server_url: str) -> JSONObject:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeemu", "cluster": {"server": server_url}}],
        "users": [{"name": "kubeemu", "user": {}}],
        "contexts": [
            {
                "name": "kubeemu",
                "context": {"cluster": "kubeemu", "user": "kubeemu", "namespace": "default"},
            }
        ],
        "current-context": "kubeemu",
    }


# kubernetes.config is untyped: one typed name for the one function used.
_load_kube_config: Callable[..., None] = kubernetes.config.load_kube_config


class KubeEmulator:
    """A Kubernetes API server on 127.0.0.1, served from a background thread.

    The server runs its own event loop in a daemon thread, so it keeps
    answering while the test thread blocks in a synchronous client call, a
    watch, or a ``KopfRunner``; subprocesses reach it through
    :attr:`kubeconfig_path`. A thread and not a process: the test can look into
    the store directly (:meth:`objects`) and play the controllers
    (:meth:`write_status`) with no second API.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1; ``None`` picks a free one.
    resources
        What to serve; by default :data:`RESOURCES`.
    keep_requests
        Keep kmock's log of every request (:attr:`emulator` ``.requests``) for
        assertions on what clients sent. Off by default: kmock scans the whole
        log for every request, so each request costs more the longer it runs
        (70 ms per request after 1000) -- fine for a short test, not for kopf
        running for minutes.

    Notes
    -----
    Read the module's docstring for what the emulator does not do.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        resources: Iterable[ResourceKind] = RESOURCES,
        keep_requests: bool = False,
    ) -> None:
        self._requested_port = port
        self._emulator = _Emulator(keep_requests=keep_requests)
        for kind in resources:
            self._emulator.declare(kind)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        self._workdir: Path | None = None

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start serving; return when the port accepts connections.

        Raises
        ------
        KubeEmulatorError
            If the server did not come up within 10 s, or failed to.
        """
        if self._ready.is_set() or self._thread is not None:
            # Its store, watches and kmock's handler are one server's: no restarts.
            raise KubeEmulatorError("an emulator starts once; make a new one")
        self._workdir = Path(tempfile.mkdtemp(prefix="kubeemu-"))
        self._thread = threading.Thread(target=self._run, name="kubeemu", daemon=True)
        self._thread.start()
        started = self._ready.wait(_START_STOP_TIMEOUT_S)
        if started and self._startup_error is None:
            self._write_kubeconfig()
            return
        error = self._startup_error
        self.stop()  # __exit__ is not called when __enter__ raises
        if not started:
            raise KubeEmulatorError("the emulator did not start in time")
        raise KubeEmulatorError(f"the emulator failed to start: {error}") from error

    def stop(self) -> None:
        """End open watches, stop the server, and remove the kubeconfig.

        Raises
        ------
        KubeEmulatorError
            If the server thread did not end within 10 s.
        """
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(self._emulator.close_watches)
            loop.call_soon_threadsafe(stop.set)
        thread.join(_START_STOP_TIMEOUT_S)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._thread = None
        if thread.is_alive():
            raise KubeEmulatorError("the emulator did not stop in time")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() or logged: a thread has no caller
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                logger.exception("the emulator's server failed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = kmock.Server(self._emulator, port=self._requested_port)
        async with self._emulator, server:
            self._port = server.port
            self._ready.set()
            await self._stop.wait()

    def _call(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run a coroutine on the server's loop and wait for its result."""
        if self._loop is None or self._thread is None:
            raise KubeEmulatorError("the emulator is not started")
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        return future.result(_CALL_TIMEOUT_S)

    # -- connection ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on (127.0.0.1)."""
        if self._port is None:
            raise KubeEmulatorError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """The API server's URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig for the server (no TLS, no credentials), removed on stop."""
        if self._workdir is None or self._thread is None:
            raise KubeEmulatorError("the emulator is not started")
        return self._workdir / "kubeconfig.yaml"

    def _write_kubeconfig(self) -> None:
        self.kubeconfig_path.write_text(yaml.safe_dump(_kubeconfig(self.url)), encoding="utf-8")

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client for this server, whatever ``$KUBECONFIG`` says.

        It loads :attr:`kubeconfig_path` into a fresh ``Configuration``: the
        client's global default configuration, and the default kubeconfig path
        it read from ``$KUBECONFIG`` at import time, are left alone.

        Returns
        -------
        kubernetes.client.ApiClient
            The caller closes it (``with kube.api_client() as api: ...``).
        """
        configuration = kubernetes.client.Configuration()
        _load_kube_config(
            config_file=str(self.kubeconfig_path),
            client_configuration=configuration,
            persist_config=False,
        )
        return kubernetes.client.ApiClient(configuration)

    @property
    def emulator(self) -> kmock.KubernetesEmulator:
        """The kmock emulator, for its reactions and (``keep_requests``) its request log.

        A reaction answers matching requests its own way, e.g. to inject a
        failure: ``kube.emulator["patch statefulsets"] << 500`` (the write is
        still done, as kmock does). The emulator lives on the server's thread:
        add reactions before clients start, and read ``.requests`` only when
        they are quiet.
        """
        return self._emulator

    # -- store access for tests ---------------------------------------------

    def resolve(self, kind: str) -> ResourceKind:
        """Find a served resource by kind, plural, short name, or kmock address.

        Parameters
        ----------
        kind
            ``"StatefulSet"``, ``"statefulsets"``, ``"sts"``,
            ``"apps/v1/statefulsets"`` or ``"statefulsets.v1.apps"``.

        Raises
        ------
        KeyError
            If no served resource or more than one matches
            (``"Event"`` is both ``v1`` and ``events.k8s.io/v1``).
        """
        kinds = self._emulator.kinds
        if "/" in kind or "." in kind:
            wanted = kmock.resource(kind)
            matches = [k for k in kinds if wanted.check(k.resource)]
        else:
            matches = [
                k
                for k in kinds
                if kind in {k.kind, k.plural, k.kind.lower()} or kind in k.shortnames
            ]
        if len(matches) != 1:
            found = ", ".join(sorted(f"{k.api_version}/{k.plural}" for k in matches)) or "none"
            raise KeyError(f"{kind!r} names {len(matches)} served resources: {found}")
        return matches[0]

    def objects(self, kind: str, namespace: str | None = None) -> list[JSONObject]:
        """The stored objects of a resource, as the server holds them now.

        Parameters
        ----------
        kind
            As :meth:`resolve` takes it.
        namespace
            Only this namespace; ``None`` for all (and for cluster-scoped kinds).

        Returns
        -------
        list of dict
            Copies, in creation order; deleted objects are left out.
        """
        resolved = self.resolve(kind)

        async def read() -> list[JSONObject]:
            async with self._emulator._lock:
                return [
                    copy.deepcopy(obj.raw)
                    for (resource, ns, _), obj in self._emulator.objects.items()
                    if resource == resolved.resource
                    and not obj.deleted
                    and (namespace is None or ns == namespace)
                ]

        return self._call(read)

    def get(self, kind: str, name: str, namespace: str | None = None) -> JSONObject | None:
        """One stored object (a copy), or ``None`` if there is none."""
        for obj in self.objects(kind, namespace):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    def _run_write(
        self, write: Callable[[_Emulator], _Write], resource: kmock.resource
    ) -> JSONObject:
        async def apply() -> JSONObject:
            async with self._emulator._lock:
                done = write(self._emulator)
                for event in done.events:
                    await self._emulator._buses[resource].put(event)
            return copy.deepcopy(done.answer)

        try:
            return self._call(apply)
        except kmock.KubernetesError as exc:
            raise KubeEmulatorError(f"{exc.status} {exc.reason}: {exc.message}") from exc

    def create(
        self, kind: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> JSONObject:
        """Create an object directly in the store, as a POST would (watchers see it).

        Returns
        -------
        dict
            The stored object, with uid, resourceVersion and so on.

        Raises
        ------
        KubeEmulatorError
            With the status the API would answer (409 if it exists).
        """
        resolved = self.resolve(kind)
        return self._run_write(
            lambda emu: emu.write_create(resolved, namespace, body), resolved.resource
        )

    def create_namespace(self, name: str) -> JSONObject:
        """Create a Namespace (the emulator does not require them; kopf and kubectl may)."""
        return self.create("v1/namespaces", {"metadata": {"name": name}})

    def apply_crd(self, source: str | Path | Mapping[str, Any]) -> JSONObject:
        """Create or replace a CRD from a YAML file (or its parsed object), and serve it.

        The CRD is Established at once; its resource is (re)declared from it,
        so a CRD's scale paths and scope win over :data:`RESOURCES`.

        Returns
        -------
        dict
            The stored CRD.
        """
        if isinstance(source, Mapping):
            crd: JSONObject = dict(source)
        else:
            loaded = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise KubeEmulatorError(f"{source}: not one YAML object")
            crd = loaded
        crds = self.resolve("apiextensions.k8s.io/v1/customresourcedefinitions")

        def apply(emu: _Emulator) -> _Write:
            name = crd["metadata"]["name"]
            key = (crds.resource, None, name)
            if key in emu.objects and not emu.objects[key].deleted:
                return emu.write_update(crds, None, name, replacement=_without(crd, "status"))
            return emu.write_create(crds, None, crd)

        return self._run_write(apply, crds.resource)

    def write_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        *,
        status: Mapping[str, Any],
    ) -> JSONObject:
        """Merge ``status`` into an object's status, as a controller would.

        For example, set a StatefulSet's ``readyReplicas``, which nothing else
        in the emulator ever does. It is a ``/status`` merge patch: a new
        resourceVersion and a MODIFIED event, no new generation.

        Returns
        -------
        dict
            The object after the write.

        Raises
        ------
        KubeEmulatorError
            404 if the object does not exist.
        """
        resolved = self.resolve(f"{group}/{version}/{plural}" if group else f"{version}/{plural}")
        patch = {"status": dict(status)}
        subresource = "status" if "status" in resolved.subresources else None
        return self._run_write(
            lambda emu: emu.write_update(
                resolved, namespace, name, subresource=subresource, patch=patch
            ),
            resolved.resource,
        )
