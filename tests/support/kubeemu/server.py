"""The kmock emulator with the API server's write, watch and list semantics."""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp.web
import attrs
import kmock
import yaml

from .apply import apply, record_update
from .defaults import apply_defaults, canonicalize_quantities, cluster_ip, drop_empty_strings
from .errors import error, not_found
from .fieldpath import duplicate_entries
from .kinds import CRDS, NAMESPACES, ResourceKind, ScalePaths, kinds_from_crd
from .merge import strategic_merge
from .objects import JSONObject, Write, apply_patch, get_path, now, scale_of, set_path, without
from .schemas import Schema, builtin_schema, custom_schema
from .selectors import Selector
from .validation import check_update
from .watch import EventHistory, bookmark, gone, next_bookmark

#: kmock parses ``/api/v1/namespaces`` as "a namespace with no name" and fails;
#: such requests are re-addressed to this segment, which no namespace can be
#: named (names are DNS labels), and put right in
#: :meth:`Emulator._readdress_namespaces`.
_ALL_NAMESPACES_SEGMENT: Final = "_"
_NAMESPACES_PATH: Final = re.compile(r"/api/v1/namespaces")
_GENERATED_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
#: Versions of an object kept in kmock's history (``emulator.objects[...].history``).
_HISTORY_KEPT: Final = 20
#: The longest field manager name the API server derives from a User-Agent.
_MANAGER_MAX: Final = 128


def _manager_from(user_agent: str) -> str:
    """The field manager of a write that names none: the User-Agent up to its first ``/``.

    The ``kubernetes`` client says ``OpenAPI-Generator/37.0.2/python``, so its
    writes are ``OpenAPI-Generator``'s; kopf's are ``kopf``'s.
    """
    return user_agent.split("/", 1)[0][:_MANAGER_MAX]


def _preconditions(request: kmock.Request) -> Mapping[str, Any]:
    """A DELETE's ``preconditions`` (uid, resourceVersion), from the DeleteOptions body."""
    options = request.data if isinstance(request.data, Mapping) else {}
    found = options.get("preconditions")
    return found if isinstance(found, Mapping) else {}


def _propagation(request: kmock.Request) -> str | None:
    """A DELETE's propagation policy, from the query or the DeleteOptions body."""
    options = request.data if isinstance(request.data, Mapping) else {}
    policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
    legacy = request.params.get("orphanDependents", options.get("orphanDependents"))
    if policy is None and str(legacy).lower() == "true":
        return "Orphan"
    return str(policy) if policy is not None else None


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the server-side behaviour clients rely on.

    All writes (create, patch, PUT, delete, for every subresource) happen
    here, synchronously between two ``await``s and under kmock's own lock, so
    that each gets its own ``resourceVersion`` and the watch events go out in
    that order. Watches are served here too (see :meth:`_serve_watch`); gets,
    lists and discovery stay kmock's, wrapped for selectors, ``/scale``, list
    kinds and core discovery.
    """

    #: Log every request served (`request_log`) for assertions. Kept apart from
    #: kmock's own log, which holds the requests in flight only: kmock scans
    #: that one for every reaction, so a request would cost O(requests so far).
    keep_requests: bool = False
    request_log: list[kmock.Request] = attrs.field(factory=list, init=False)
    #: How many watch events are kept for watches that resume from a resourceVersion.
    history_size: int = 1000
    #: Seconds the garbage collector takes to orphan the dependents of an object
    #: deleted with ``propagationPolicy: Orphan``; the object stays until then.
    orphan_delay: float = 0.5
    #: Seconds between the bookmarks of a watch that allows them (the API
    #: server's ``bookmarkFrequency``: a minute); one comes 2 s before the
    #: watch's end in any case.
    bookmark_interval: float = 60.0
    history: EventHistory = attrs.field(init=False)
    _allocated_ips: int = attrs.field(default=0, init=False)
    _kinds: dict[kmock.resource, ResourceKind] = attrs.field(factory=dict, init=False)
    _revision: int = attrs.field(default=1000, init=False)
    # Answers of writes for the fallbacks, keyed by request, while it is served.
    _answers: dict[kmock.Request, kmock.Payload] = attrs.field(factory=dict, init=False)
    # Set when the server stops: open watches end instead of holding it for 60 s.
    _closing: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.history = EventHistory(self.history_size)
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
            # request log, once per reaction: kept whole, each request would
            # cost O(requests so far) -- 70 ms after 1000, 200 ms after 2000.
            # It holds the requests in flight only; the tests' log is ours.
            self._requests.remove(request)
            if self.keep_requests:
                self.request_log.append(request)

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
                if request.action != kmock.action.DELETE:
                    write = self._collect_orphan(kind, write)
                await self.publish(write.events)
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
        fixed = attrs.evolve(request, resource=NAMESPACES, namespace=None, name=name, action=action)
        # kmock matches reactions to requests by identity in its request log:
        # the log must hold the request that is served.
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is request:
                self._requests[index] = fixed
                break
        return fixed

    # -- writes -------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The latest resourceVersion given out."""
        return self._revision

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _allocate_ip(self) -> str:
        self._allocated_ips += 1
        return cluster_ip(self._allocated_ips)

    def _key(
        self, kind: ResourceKind, namespace: str | None, name: str
    ) -> tuple[kmock.resource, str | None, str]:
        return (kind.resource, namespace if kind.namespaced else None, name)

    def _exists(self, kind: ResourceKind, namespace: str | None, name: str) -> bool:
        key = self._key(kind, namespace, name)
        return key in self.objects and not self.objects[key].deleted

    def _current(self, kind: ResourceKind, namespace: str | None, name: str) -> JSONObject:
        if not self._exists(kind, namespace, name):
            raise not_found(kind, name)
        return copy.deepcopy(self.objects[self._key(kind, namespace, name)].raw)

    def schema_of(self, kind: ResourceKind) -> Schema:
        """The schema apply and strategic merge follow for this kind."""
        if kind.builtin:
            schema = builtin_schema(kind.api_version, kind.kind)
            if schema is not None:
                return schema
        return custom_schema(kind.openapi)

    async def publish(self, events: list[tuple[kmock.resource, JSONObject]]) -> None:
        """Send a write's events to watchers and keep them for watches that resume."""
        for resource, event in events:
            self.history.record(resource, event)
            await self._buses[resource].put(event)

    def _write(self, kind: ResourceKind, request: kmock.Request) -> Write:
        content_type = request.headers.get("Content-Type", "application/json")
        manager = request.params.get("fieldManager") or _manager_from(
            request.headers.get("User-Agent", "")
        )
        if request.action == kmock.action.CREATE:
            if request.subresource:
                raise error(405, "MethodNotAllowed", f"POST on {request.subresource!r}")
            if not isinstance(request.data, Mapping):
                raise error(400, "BadRequest", "the body is not a JSON object")
            return self.write_create(kind, request.namespace, request.data, manager=manager)
        assert request.name is not None  # every other write names its object
        if request.action == kmock.action.DELETE:
            return self.write_delete(
                kind,
                request.namespace,
                request.name,
                policy=_propagation(request),
                preconditions=_preconditions(request),
            )
        is_patch = request.action == kmock.action.UPDATE
        if is_patch and "apply-patch" in content_type:
            if not request.params.get("fieldManager"):
                raise error(
                    400,
                    "BadRequest",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                    "is required for apply patch",
                )
            body = request.data
            if body is None and request.body:
                body = yaml.safe_load(request.body)
            return self.write_apply(
                kind,
                request.namespace,
                request.name,
                body,
                manager=manager,
                force=request.params.get("force", "").lower() == "true",
                subresource=request.subresource,
            )
        if is_patch and "strategic-merge" in content_type and not kind.builtin:
            raise error(
                415,
                "UnsupportedMediaType",
                "strategic merge patch is not supported for custom resources",
            )
        return self.write_update(
            kind,
            request.namespace,
            request.name,
            subresource=request.subresource,
            patch=request.data if is_patch else None,
            content_type=content_type,
            replacement=request.data if not is_patch else None,
            manager=manager,
        )

    def _finish(
        self,
        kind: ResourceKind,
        candidate: JSONObject,
        old: JSONObject | None,
        subresource: str | None,
    ) -> JSONObject:
        """What the server makes of any object written: kept parts, defaults, quantities."""
        if old is not None:
            new = self._merge_allowed(kind, old, candidate, subresource)
        else:
            new = copy.deepcopy(candidate)
            if "status" in kind.subresources:
                new.pop("status", None)
        if kind.builtin:
            new = drop_empty_strings(new, self.schema_of(kind))
        apply_defaults(kind.api_version, kind.kind, new, old=old, allocate_ip=self._allocate_ip)
        if kind.builtin:
            new = canonicalize_quantities(new, self.schema_of(kind))
        return new

    def write_create(
        self,
        kind: ResourceKind,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        manager: str = "kubeemu",
    ) -> Write:
        """Store a new object, as a POST does (call on the server's loop)."""
        obj = copy.deepcopy(dict(body))
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATED_NAME_ALPHABET) for _ in range(5))
            metadata["name"] = metadata["generateName"] + suffix
        metadata.pop("managedFields", None)
        obj = self._finish(kind, obj, None, None)
        record_update(
            None,
            obj,
            self.schema_of(kind),
            manager=manager,
            api_version=kind.api_version,
            subresource=None,
            status_apart="status" in kind.subresources,
        )
        return self._insert(kind, namespace, obj)

    def _insert(self, kind: ResourceKind, namespace: str | None, obj: JSONObject) -> Write:
        """Give a new object its identity and store it."""
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if not name:
            raise error(422, "Invalid", "metadata.name: Required value")
        namespace = namespace or metadata.get("namespace")
        if kind.namespaced:
            if not namespace:
                raise error(400, "BadRequest", "a namespaced object needs a namespace")
            metadata["namespace"] = namespace
        else:
            namespace = None
            metadata.pop("namespace", None)
        key = self._key(kind, namespace, name)
        if self._exists(kind, namespace, name):
            raise error(409, "AlreadyExists", f'{kind.plural}.{kind.group} "{name}" already exists')
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(server_field, None)
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_revision(),
            creationTimestamp=now(),
            generation=1,
        )
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if kind.resource == CRDS:
            self._establish(obj)
        if kind.resource == NAMESPACES:  # set by the API server since 1.21
            metadata.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        return Write(obj, [(kind.resource, {"type": "ADDED", "object": obj})])

    def _establish(self, crd: JSONObject) -> None:
        # The apiextensions controller, the one controller emulated: a CRD
        # serves its resource as soon as it exists.
        for kind in kinds_from_crd(crd):
            self.declare(kind)
        names = (crd.get("spec") or {}).get("names") or {}
        stamp = now()
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [
                version["name"]
                for version in (crd.get("spec") or {}).get("versions") or []
                if version.get("storage")
            ],
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": stamp}
                for t, r in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }

    def write_apply(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        manager: str,
        force: bool,
        subresource: str | None = None,
    ) -> Write:
        """Server-side apply ``body`` as ``manager``; creates the object if absent."""
        if not isinstance(body, Mapping):
            raise error(400, "BadRequest", "the applied configuration is not an object")
        if subresource not in {None, "status"} or (
            subresource is not None and subresource not in kind.subresources
        ):
            raise not_found(kind, f"{name}/{subresource}")
        applied = copy.deepcopy(dict(body))
        metadata = applied.setdefault("metadata", {})
        if (applied.get("apiVersion"), applied.get("kind")) != (kind.api_version, kind.kind):
            raise error(
                400,
                "BadRequest",
                f"the applied configuration must say apiVersion {kind.api_version!r} "
                f"and kind {kind.kind!r}",
            )
        if metadata.get("name", name) != name:
            raise error(
                400,
                "BadRequest",
                f"the name of the object ({metadata['name']}) does not match the name "
                f"on the URL ({name})",
            )
        if metadata.get("managedFields") is not None:
            raise error(400, "BadRequest", "metadata.managedFields must be nil")
        metadata["name"] = name
        stated = metadata.pop("resourceVersion", None)
        exists = self._exists(kind, namespace, name)
        old = self._current(kind, namespace, name) if exists else None
        if stated is not None and (old is None or stated != old["metadata"]["resourceVersion"]):
            raise self._stale(kind, name)
        if old is None and subresource is not None:
            raise not_found(kind, name)
        duplicate = duplicate_entries(applied, self.schema_of(kind))
        if duplicate is not None:
            version = kind.api_version if "/" in kind.api_version else f"/{kind.api_version}"
            raise error(
                500,
                "InternalError",
                f"failed to create typed patch object ({version}, Kind={kind.kind}): {duplicate}",
            )
        new = apply(
            old,
            applied,
            self.schema_of(kind),
            manager=manager,
            force=force,
            api_version=kind.api_version,
            subresource=subresource,
            status_apart="status" in kind.subresources,
            finish=lambda obj: self._finish(kind, obj, old, subresource),
        )
        if old is None:
            return self._insert(kind, namespace, new)
        return self._commit_update(kind, old, new, subresource)

    def _stale(self, kind: ResourceKind, name: str) -> Exception:
        return error(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.plural}.{kind.group} "{name}": '
            "the object has been modified; please apply your changes to the latest "
            "version and try again",
        )

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
        manager: str = "kubeemu",
    ) -> Write:
        """Patch (``patch``) or replace (``replacement``) an object or its subresource."""
        if subresource not in {None, *kind.subresources}:
            raise not_found(kind, f"{name}/{subresource}")
        old = self._current(kind, namespace, name)
        if subresource == "scale":
            return self._update_scale(kind, old, patch, content_type, replacement)

        if replacement is not None:
            if not isinstance(replacement, Mapping):
                raise error(400, "BadRequest", "the body is not a JSON object")
            candidate = copy.deepcopy(dict(replacement))
            stated = (candidate.get("metadata") or {}).get("resourceVersion")
        else:
            if "strategic-merge" in content_type:
                if not isinstance(patch, dict):
                    raise error(400, "BadRequest", "a strategic merge patch is a JSON object")
                candidate = strategic_merge(old, patch, self.schema_of(kind))
            else:
                candidate = apply_patch(old, patch, content_type)
            stated = ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}).get(
                "resourceVersion"
            )
        if stated is not None and stated != old["metadata"]["resourceVersion"]:
            raise self._stale(kind, name)

        new = self._finish(kind, candidate, old, subresource)
        record_update(
            old,
            new,
            self.schema_of(kind),
            manager=manager,
            api_version=kind.api_version,
            subresource=subresource,
            status_apart="status" in kind.subresources,
        )
        return self._commit_update(kind, old, new, subresource)

    def _commit_update(
        self, kind: ResourceKind, old: JSONObject, new: JSONObject, subresource: str | None
    ) -> Write:
        """Store an update unless it changes nothing; refuse immutable changes."""
        if subresource is None:
            check_update(kind, old, new)
        if new == old:
            return Write(old)  # a no-op: no new resourceVersion, no event
        if without(new, "metadata", "status") != without(old, "metadata", "status"):
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
        new = copy.deepcopy(candidate)
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
            "managedFields",
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
    ) -> Write:
        paths = kind.scale or ScalePaths()
        scale = scale_of(kind, old)
        if replacement is not None:
            new_scale = replacement if isinstance(replacement, Mapping) else {}
        else:
            new_scale = apply_patch(scale, patch, content_type)
        replicas = get_path(new_scale, ("spec", "replicas"))
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise error(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
        stated = get_path(new_scale, ("metadata", "resourceVersion"))
        if stated is not None and stated != old["metadata"]["resourceVersion"]:
            raise self._stale(kind, str(old["metadata"]["name"]))
        if get_path(old, paths.spec_replicas) == replicas:
            return Write(scale)
        new = copy.deepcopy(old)
        set_path(new, paths.spec_replicas, replicas)
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_revision()
        write = self._store(kind, new, "MODIFIED")
        return Write(scale_of(kind, write.answer), write.events)

    def write_delete(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        *,
        policy: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> Write:
        """Delete an object (or mark it while it has finalizers), then its dependents.

        ``policy`` ``Orphan`` adds the ``orphan`` finalizer and marks the
        object deleted: after :attr:`orphan_delay` the garbage collector
        strips the object's ownerReference from its dependents and removes
        the finalizer, which deletes it. Anything else (``Background``,
        ``Foreground``, the default) deletes the dependents it alone owned,
        as the garbage collector does -- here at once, within the same write.
        ``preconditions`` (``uid``, ``resourceVersion``) that the object does
        not meet answer 409, as on the real server.
        """
        old = self._current(kind, namespace, name)
        metadata = old["metadata"]
        for field, said in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = (preconditions or {}).get(field)
            if wanted is not None and wanted != metadata.get(field):
                raise error(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {kind.plural}.{kind.group} "
                    f'"{name}": Precondition failed: {said} in precondition: {wanted}, '
                    f"{said} in object meta: {metadata.get(field)}",
                )
        if policy == "Orphan" and not metadata.get("deletionTimestamp"):
            new = copy.deepcopy(old)
            finalizers = list(metadata.get("finalizers") or [])
            if "orphan" not in finalizers:
                finalizers.append("orphan")
            new["metadata"].update(
                finalizers=finalizers,
                deletionTimestamp=now(),
                deletionGracePeriodSeconds=0,
                resourceVersion=self._next_revision(),
            )
            asyncio.get_running_loop().call_later(
                self.orphan_delay,
                lambda: asyncio.ensure_future(
                    self._release_orphan(kind, namespace, name, str(metadata.get("uid")))
                ),
            )
            return self._store(kind, new, "MODIFIED")
        if metadata.get("finalizers"):
            if metadata.get("deletionTimestamp"):
                return Write(old)
            new = copy.deepcopy(old)
            new["metadata"].update(
                deletionTimestamp=now(),
                deletionGracePeriodSeconds=0,
                resourceVersion=self._next_revision(),
            )
            return self._store(kind, new, "MODIFIED")
        new = copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = self._next_revision()
        write = self._store(kind, new, "DELETED")
        dependents = self._collect(
            str(metadata.get("uid")),
            namespace if kind.namespaced else None,
            orphan=policy == "Orphan",
        )
        return Write(
            {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": kind.plural, "uid": metadata.get("uid")},
            },
            write.events + dependents,
        )

    async def _release_orphan(
        self, kind: ResourceKind, namespace: str | None, name: str, uid: str
    ) -> None:
        """The garbage collector's part of an orphaning delete: detach, then unblock.

        Strips the object's ownerReference from its dependents and removes its
        ``orphan`` finalizer (deleting it if no other finalizer holds it).
        """
        async with self._lock:
            if not self._exists(kind, namespace, name):
                return
            current = self._current(kind, namespace, name)
            if current["metadata"].get("uid") != uid:
                return
            events = self._collect(uid, namespace if kind.namespaced else None, orphan=True)
            new = copy.deepcopy(current)
            left = [f for f in new["metadata"].get("finalizers") or [] if f != "orphan"]
            if left:
                new["metadata"]["finalizers"] = left
            else:
                new["metadata"].pop("finalizers", None)
            new["metadata"]["resourceVersion"] = self._next_revision()
            events += self._store(kind, new, "MODIFIED").events
            await self.publish(events)

    def _collect_orphan(self, kind: ResourceKind, write: Write) -> Write:
        """Delete the object just written if every owner it names is gone.

        The garbage collector deletes a dependent whose owners are all absent
        (looked up by uid) whenever it sees one, not only when an owner goes:
        a child written a moment after its owner was deleted (a controller
        that read the owner before the delete) is collected too.
        """
        answer = write.answer
        metadata = answer.get("metadata") or {}
        references = metadata.get("ownerReferences") or []
        if not references or answer.get("kind") != kind.kind:
            return write  # no owners, or a subresource's answer (a Scale)
        if any(self._alive(str(ref.get("uid"))) for ref in references):
            return write
        namespace = metadata.get("namespace") if kind.namespaced else None
        if not self._exists(kind, namespace, metadata["name"]):
            return write
        collected = self.write_delete(kind, namespace, metadata["name"])
        return Write(answer, write.events + collected.events)

    def _alive(self, uid: str) -> bool:
        return any(
            not stored.deleted and stored.raw.get("metadata", {}).get("uid") == uid
            for stored in self.objects.values()
        )

    def _collect(
        self, owner_uid: str, namespace: str | None, *, orphan: bool
    ) -> list[tuple[kmock.resource, JSONObject]]:
        """Orphan or delete the dependents of a deleted owner (the garbage collector)."""
        events: list[tuple[kmock.resource, JSONObject]] = []
        for (resource, ns, name), stored in list(self.objects.items()):
            dependent_kind = self._kinds.get(resource)
            if stored.deleted or dependent_kind is None:
                continue
            if namespace is not None and ns != namespace:
                continue
            references = stored.raw.get("metadata", {}).get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in references):
                continue
            remaining = [ref for ref in references if ref.get("uid") != owner_uid]
            if orphan or any(self._alive(str(ref.get("uid"))) for ref in remaining):
                new = copy.deepcopy(stored.raw)
                if remaining:
                    new["metadata"]["ownerReferences"] = remaining
                else:
                    new["metadata"].pop("ownerReferences", None)
                new["metadata"]["resourceVersion"] = self._next_revision()
                events += self._store(dependent_kind, new, "MODIFIED").events
            elif self._exists(dependent_kind, ns, name):
                events += self.write_delete(dependent_kind, ns, name).events
        return events

    def _store(self, kind: ResourceKind, new: JSONObject, event: str) -> Write:
        """Keep ``new`` as the object's latest version and say what watchers see.

        A terminating object whose last finalizer went is deleted with the
        same write: watchers see one DELETED, as from a real server.
        """
        metadata = new["metadata"]
        key = self._key(kind, metadata.get("namespace"), metadata["name"])
        if kind.resource == CRDS and event == "MODIFIED":
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
        return Write(new, [(kind.resource, {"type": event, "object": new})])

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
            raise not_found(kind, f"{request.name}/{request.subresource}")
        async with self._lock:
            obj = self._current(kind, request.namespace, request.name)
        return scale_of(kind, obj) if request.subresource == "scale" else obj

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        selector = Selector.from_params(request.params)
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
        """Stream events like a watch of the API server.

        Without ``resourceVersion`` (or with ``0``) the matching objects come
        first as ADDED; with one, the events after it, from the history --
        or one ERROR event (410 Expired) if the history no longer reaches
        back that far, and the watch ends. Then every change.

        With ``allowWatchBookmarks=true``, BOOKMARK events as the API server
        sends them (:func:`.watch.next_bookmark`). A bookmark's
        resourceVersion is the newest this watch has passed on or filtered
        out -- never one of a change still on its way to it, which a client
        resuming from the bookmark would miss.

        Unlike kmock's own, the subscription to changes is taken together
        with the snapshot, under the lock writes take: kmock's takes it after
        sending the snapshot, and a write in between was never seen.
        """
        selector = Selector.from_params(request.params)
        timeout = request.params.get("timeoutSeconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout) if timeout else None
        resource = request.resource
        assert resource is not None  # kmock routes watches of resources only
        kind = self.kind_of(resource)
        bookmarks = str(request.params.get("allowWatchBookmarks", "")).lower() == "true"

        def wanted(obj: Mapping[str, Any]) -> bool:
            metadata = obj.get("metadata") or {}
            return (
                (request.namespace is None or metadata.get("namespace") == request.namespace)
                and (request.name is None or metadata.get("name") == request.name)
                and selector.matches(obj)
            )

        start = request.params.get("resourceVersion") or "0"
        if not start.isdigit():
            raise error(400, "BadRequest", f"resourceVersion {start!r} is not a number")
        yield b""  # send the headers now: a watch may stay silent for long
        bus = self._buses[resource]
        async with self._lock:
            marker = await bus.mark()
            # Every change up to here is in the snapshot or the history; later
            # ones come through the bus.
            passed = self._revision
            if start == "0":
                replay: list[JSONObject] | None = [
                    {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for (res, _, _), obj in self.objects.items()
                    if res == resource and not obj.deleted
                ]
            else:
                replay = self.history.since(resource, int(start))
        step: asyncio.Future[kmock.Payload] | None = None
        try:
            if replay is None:
                yield gone(int(start), self._revision)
                return
            for past in replay:
                if wanted(past["object"]):
                    yield past
            changes = aiter(bus.stream(since=marker))
            mark_at = None
            if bookmarks and kind is not None:
                mark_at = next_bookmark(loop.time(), deadline, self.bookmark_interval)
            while True:
                if step is None:
                    step = asyncio.ensure_future(anext(changes))
                wake = min((t for t in (deadline, mark_at) if t is not None), default=None)
                if not await self._step_or_end(step, wake):
                    if self._closing.is_set() or mark_at is None or loop.time() < mark_at:
                        return  # the deadline, or the server stops
                    assert kind is not None  # mark_at is set only then
                    yield bookmark(kind.api_version, kind.kind, passed)
                    mark_at = next_bookmark(loop.time(), deadline, self.bookmark_interval)
                    continue
                done, step = step, None
                error_ = done.exception()
                if isinstance(error_, StopAsyncIteration):
                    return
                if error_ is not None:
                    raise error_
                event = done.result()
                if not isinstance(event, dict):
                    continue
                obj = event.get("object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion"))
                if version.isdigit():
                    passed = max(passed, int(version))
                if wanted(obj):
                    yield event
        finally:
            if step is not None and not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            await bus.unmark(marker)

    async def _step_or_end(self, step: asyncio.Future[kmock.Payload], until: float | None) -> bool:
        """Wait for a watch's next change; False at ``until`` or when the server stops.

        A bus stream waits forever. Its ``anext`` runs as a task (``step``)
        so that the watch can end, or send a bookmark and wait on, without
        cancelling it: the same task is awaited again after a bookmark.
        """
        loop = asyncio.get_running_loop()
        closing = asyncio.ensure_future(self._closing.wait())
        timeout = None if until is None else max(0.0, until - loop.time())
        try:
            waiters: set[asyncio.Future[Any]] = {step, closing}
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        return step.done() and not self._closing.is_set()

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        answer = await super()._serve_version(request)
        if isinstance(answer, dict) and answer.get("groupVersion") == "/v1":
            answer["groupVersion"] = "v1"  # the core group has no "group/" prefix
        return answer
