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
client need more of the API server's behaviour, so :class:`.server.Emulator` owns
every write itself (kmock still stores, watches, lists and discovers):

- ``metadata.uid``, ``creationTimestamp``, ``namespace`` (from the URL),
  ``generateName``, ``kind``/``apiVersion``, a namespace's
  ``kubernetes.io/metadata.name`` label; a ``resourceVersion`` from one
  increasing counter, bumped by every real change (a no-op patch changes
  nothing and sends no watch event, as on a real server);
- ``generation``: 1 on create, +1 when anything but ``metadata``/``status``
  changes -- not on a ``/status`` write;
- ``201 Created`` on create (the client returns ``None`` on a 200), 409
  ``AlreadyExists``, 409 ``Conflict`` when a PUT, patch or apply carries a
  stale ``metadata.resourceVersion``, 422 when a JSON patch (including
  kopf's ``test`` on ``/metadata/resourceVersion``) does not apply, 415 for a
  strategic merge patch on a custom resource;
- **server-side apply** (``application/apply-patch+yaml``, ``fieldManager``
  required, ``force``), a 500 (``duplicate entries for key``) for a
  configuration with one list-map key twice, creating absent objects, merging by the list types
  of the real OpenAPI schemas (``kubernetes-validate``) or the CRD's
  ``openAPIV3Schema``, with ``metadata.managedFields`` (``FieldsV1``),
  409 conflicts naming manager and field, and removal of what a manager
  stopped applying (:mod:`.apply`, :mod:`.fieldpath`, :mod:`.schemas`);
  every other write records an ``Update`` entry (manager from
  ``fieldManager`` or the User-Agent);
- **strategic merge patch** by the schemas' patch strategies and merge keys,
  with ``$patch``, ``$retainKeys``, ``$setElementOrder`` and
  ``$deleteFromPrimitiveList`` (:mod:`.merge`);
- ``omitempty``: an optional string field of a built-in kind sent as ``""``
  is stored without it (:func:`.defaults.drop_empty_strings`);
- **defaulting** of what GatewayPool's children meet (pod and container
  fields, StatefulSet, Deployment, Service with an allocated ClusterIP,
  NetworkPolicy, HorizontalPodAutoscaler) and **canonical quantities** wherever the schema has a
  ``resource.Quantity`` (:mod:`.defaults`, :mod:`gatewaypool.quantity`);
- **immutable fields**: StatefulSet spec outside the updatable fields,
  Deployment selector, Service clusterIP -- 422 Invalid worded like the real
  server, for every write verb (:mod:`.validation`);
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
- watch ``resourceVersion``: none or ``0`` sends the objects as ADDED first;
  ``N`` sends only the events after N, from a bounded history
  (``history_size``, default 1000; :meth:`KubeEmulator.compact_history`),
  and a too old N gets an ERROR event with a 410 ``Expired`` Status
  (:mod:`.watch`); with ``allowWatchBookmarks`` BOOKMARK events come as
  from the API server's watch cache: every ``bookmark_interval`` seconds
  (a minute by default) and 2 s before the watch's ``timeoutSeconds`` end
  it (none on a watch of 2 s or less), carrying the newest resourceVersion
  the watch has passed (a write to any object of the resource advances
  it, whatever the watch's selectors);
- kmock's request log holds the requests in flight only (kmock scans all
  of it for every request, which made a request cost 70 ms after 1000);
  with ``keep_requests`` the emulator logs every request apart, for
  :meth:`KubeEmulator.requests`;
- an object's history (``emulator.objects[...].history``) keeps its last
  20 versions, not all of them;
- deleting an object with finalizers sets ``deletionTimestamp``; removing
  the last finalizer deletes it (one DELETED event, as on a real server);
- garbage collection: deleting an object (no finalizers) deletes, at once
  and in the same write, the dependents whose ownerReferences name its uid
  and no other live owner (``Background``, ``Foreground`` and the default
  alike); ``propagationPolicy: Orphan`` (query or DeleteOptions, or
  ``orphanDependents``) instead adds the ``orphan`` finalizer and marks the
  object deleted, as the real server does: ``orphan_delay`` seconds later
  the emulated garbage collector strips the reference from the dependents
  and removes the finalizer, and only then is the object gone (a create of
  the same name meanwhile is a 409). DeleteOptions ``preconditions``
  (``uid``, ``resourceVersion``) are checked (409 when not met). An object written
  (created, updated, applied) with ownerReferences whose owners are all
  absent is deleted right after that write, as the garbage collector
  deletes dependents with dangling owners (the writer's answer still shows
  the object, and watchers see it come and go).

What it still does not do -- tests must not rely on it
------------------------------------------------------
- **Watches**: selectors filter events by the new object only (an object
  that stops matching sends no DELETED); no ``sendInitialEvents`` (and so
  no initial-events-end bookmark); a bookmark's resourceVersion advances
  only with writes to that resource (no etcd progress notifications).
- **Lists**: no pagination (``limit``/``continue`` ignored: everything in
  one page); ``resourceVersion`` parameters on GET/list are ignored.
- **Apply and managed fields**: conflicts are computed after defaulting and
  quantity canonicalization (a real server compares the applied text, so
  ``1000m`` against another manager's ``1`` conflicts there, not here); the
  ``"."`` markers of ``Update`` entries approximate the real ones; no
  ``managedFields`` reset through a write, no unions, no version
  conversion; ``/scale`` writes record no managed fields.
- **Garbage collection** is synchronous (but for orphaning, see above), and
  only when an object is really deleted: an owner held by finalizers does
  not cascade, ``Foreground`` does not wait; no ``dryRun`` or
  deletecollection.
- **Validation and defaulting**: only the defaults and immutable fields
  above (a StatefulSet's ``revisionHistoryLimit`` is immutable here, as in
  the message quoted; newer servers allow it); no CRD schema validation,
  ``x-kubernetes-validations``, pruning of unknown fields, CRD defaults or
  built-in kind validation; names are not checked. Beware of pruning: kopf
  keeps its progress in ``status.kopf`` by default, which survives here but
  is pruned by a real server unless the CRD's schema keeps it (or kopf is
  told to use annotations only). Objects may be created in namespaces that
  do not exist; deleting a namespace does not delete its contents. Cover
  these with unit tests of the CRD and of the manifests instead.
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

from .emulator import KubeEmulator, KubeEmulatorError
from .kinds import RESOURCES, ResourceKind, ScalePaths, kinds_from_crd

__all__ = [
    "RESOURCES",
    "KubeEmulator",
    "KubeEmulatorError",
    "ResourceKind",
    "ScalePaths",
    "kinds_from_crd",
]
