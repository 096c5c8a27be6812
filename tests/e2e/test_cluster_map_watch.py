"""The router follows its map ConfigMap through the real kube-apiserver: resumed watches, bookmarks.

A router process runs beside the session's cluster (:mod:`support.realcluster`)
with the token of a ServiceAccount bound to the Role the operator gives a
pool's routers (``gatewaypool_operator.children.router.role``), so RBAC
checks every call. What the router asked is read from its own debug log:
the request line of each list, watch and patch as it went to the server,
with the status the server answered.

The real watch cache sends a watch's bookmark 2 s before the watch's deadline
(and otherwise every minute: ``nextBookmarkTime`` in k8s.io/apiserver's
cacher), so a 3 s watch gets one a second in: no minute-long wait.

410 Gone is asserted on a real pool's router in
``tests/e2e/test_cluster_faults.py``: after an API server restart the new
watch cache no longer reaches the router's version; the router lists only
after a 410, its requests stay bounded, and it follows the next map. A
compaction of etcd alone does not show it: the watch cache serves watches
from its own history, which keeps every event for 75 s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool.bucketmap import BucketMap, Gateway, balanced_map, dump_map
from gatewaypool.hashing import study_bucket
from gatewaypool.reports import RouterReport, parse_report
from gatewaypool_local import scu
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study
from gatewaypool_operator.children import router
from support.outcome import did_fail
from support.realcluster import Cluster, namespace_for

StudyFactory = Callable[..., list[Study]]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: The shortest token the TokenRequest API issues.
TOKEN_SECONDS = 600


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    """One namespace for the module: each test has a pool name (and so a Role) of its own."""
    with cluster.namespace(namespace_for("router-kubesource")) as name:
        yield name


@dataclass
class MapRouter:
    """A pool's map and report ConfigMaps, and a router watching them as the pool's routers do."""

    cluster: Cluster
    namespace: str
    pool: str
    folder: Path

    def __post_init__(self) -> None:
        self.core: Any = kubernetes.client.CoreV1Api(self.cluster.api())
        self.map_name = f"{self.pool}-map"
        self.report_name = f"{self.pool}-routers"
        self.user = f"system:serviceaccount:{self.namespace}:{self.pool}-router"
        self.router: RouterProcess | None = None

    def gateways(self, count: int) -> list[Gateway]:
        host = f"{self.pool}-gw.{self.namespace}.svc"
        return [
            Gateway(
                name=f"{self.pool}-gw-{i}",
                host=f"{self.pool}-gw-{i}.{host}",
                port=104,
                ae_title="GW",
            )
            for i in range(count)
        ]

    def publish(self, bucket_map: BucketMap, *, create: bool = False) -> None:
        """Write the map as the operator does (the admin here)."""
        data = {"map.json": dump_map(bucket_map)}
        if create:
            body = {"metadata": {"name": self.map_name}, "data": data}
            self.core.create_namespaced_config_map(self.namespace, body)
        else:
            self.core.patch_namespaced_config_map(self.map_name, self.namespace, {"data": data})

    def report(self) -> RouterReport | None:
        found = self.core.read_namespaced_config_map(self.report_name, self.namespace)
        text = (found.data or {}).get(f"{self.pool}-router-0")
        return parse_report(text) if text else None

    def start(self, *extra: str, watch_seconds: int | None = None, report: bool = False) -> None:
        """The router's ServiceAccount, Role and binding, its token, then the router itself."""
        self.core.create_namespaced_config_map(
            self.namespace, {"metadata": {"name": self.report_name}}
        )
        rbac: Any = kubernetes.client.RbacAuthorizationV1Api(self.cluster.api())
        self.core.create_namespaced_service_account(
            self.namespace, router.service_account(self.pool, self.namespace)
        )
        rbac.create_namespaced_role(self.namespace, router.role(self.pool, self.namespace))
        rbac.create_namespaced_role_binding(
            self.namespace, router.role_binding(self.pool, self.namespace)
        )
        wait_until(self._allowed, timeout=10, what="RBAC allows the router's watch")
        token = self.core.create_namespaced_service_account_token(
            f"{self.pool}-router", self.namespace, {"spec": {"expirationSeconds": TOKEN_SECONDS}}
        ).status.token
        self.folder.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.folder / "router.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(self._kubeconfig(token)))
        reporting = ["--report-configmap", f"{self.namespace}/{self.report_name}"]
        self.router = RouterProcess(
            self.folder / "router",
            extra_args=[
                "--map-configmap",
                f"{self.namespace}/{self.map_name}",
                "--kubeconfig",
                str(kubeconfig),
                "--pod-name",
                f"{self.pool}-router-0",
                "--buckets",
                "64",
                "--log-level",
                "debug",
                *(["--watch-timeout", str(watch_seconds)] if watch_seconds else []),
                *(reporting if report else []),
                *extra,
            ],
        )
        self.router.start()

    def _allowed(self) -> bool:
        authorization: Any = kubernetes.client.AuthorizationV1Api(self.cluster.api())
        review = authorization.create_subject_access_review(
            {
                "spec": {
                    "user": self.user,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{self.namespace}",
                    ],
                    "resourceAttributes": {
                        "namespace": self.namespace,
                        "verb": "watch",
                        "resource": "configmaps",
                        "name": self.map_name,
                    },
                }
            }
        )
        return bool(review.status.allowed)

    def _kubeconfig(self, token: str) -> dict[str, Any]:
        endpoints = self.cluster.plane.endpoints
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": endpoints.server,
                        "certificate-authority": str(endpoints.ca),
                    },
                }
            ],
            "users": [{"name": "router", "user": {"token": token}}],
            "contexts": [{"name": "router", "context": {"cluster": "test", "user": "router"}}],
            "current-context": "router",
        }

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()

    # -- what the router asked, from its log ------------------------------------------------

    def sent(self) -> list[Sent]:
        """Every request the router sent to the API server and the status it got."""
        assert self.router is not None
        return [
            sent
            for record in self.router.log_records()
            if record.get("logger") == "urllib3.connectionpool"
            and (sent := Sent.parse(str(record.get("event", "")))) is not None
        ]

    def requests(self, verb: str) -> list[Sent]:
        """The router's requests with `verb` on its map ConfigMap."""
        narrowed = f"metadata.name={self.map_name}"
        return [
            r
            for r in self.sent()
            if r.verb == verb
            and r.path.endswith((f"/configmaps/{self.map_name}", "/configmaps"))
            and (r.path.endswith(self.map_name) or r.query().get("fieldSelector") == narrowed)
        ]

    def requested(self, verb: str) -> float:
        """The router's own count of its map requests, from its metrics."""
        assert self.router is not None
        return self.router.metric("gatewaypool_router_map_requests_total", verb=verb)

    def version(self) -> float:
        assert self.router is not None
        return self.router.metric("gatewaypool_router_map_version")


#: urllib3's log line of a request: ``https://HOST:PORT "GET /path?query HTTP/1.1" 200 None``.
_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[\d.]+" (?P<code>\d+)')


@dataclass(frozen=True)
class Sent:
    """One request as the router's HTTP client logged it, once the server answered."""

    verb: str
    path: str
    uri: str
    code: int

    @staticmethod
    def parse(line: str) -> Sent | None:
        match = _REQUEST_LINE.search(line)
        if match is None:
            return None
        uri, method = match["uri"], match["method"]
        path = urlsplit(uri).path
        watch = parse_qs(urlsplit(uri).query).get("watch", [""])[-1].lower() == "true"
        if method != "GET":
            verb = method.lower()
        elif path.rstrip("/").split("/")[-2] == "configmaps":
            verb = "get"  # .../configmaps/NAME
        else:
            verb = "watch" if watch else "list"
        return Sent(verb, path, uri, int(match["code"]))

    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.uri).query).items()}


@pytest.fixture
def map_router(
    cluster: Cluster, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], MapRouter]]:
    """``map_router(pool)``: a pool's map and router of this test; the router is stopped after."""
    made: list[MapRouter] = []

    def make(pool: str) -> MapRouter:
        made.append(MapRouter(cluster, namespace, pool, tmp_path / pool))
        return made[-1]

    try:
        yield make
    finally:
        failed = did_fail(request)
        for each in made:
            each.stop()
            if each.router is not None and failed:
                print(f"--- router of {each.pool} ---\n{each.router.log_tail()}")


def test_watches_resume_from_the_last_version_without_listing_again(
    map_router: Callable[[str], MapRouter],
) -> None:
    watched = map_router("resume")
    gateways = watched.gateways(3)
    watched.publish(balanced_map(gateways[:2], buckets=64, version=1), create=True)
    watched.start(watch_seconds=1)
    router = watched.router
    assert router is not None
    assert watched.version() == 1
    # The server ends each watch after a second; three resumptions later...
    wait_until(lambda: watched.requested("watch") >= 4, timeout=20, what="four watches")
    watched.publish(balanced_map(gateways, buckets=64, version=2))
    wait_until(lambda: watched.version() == 2, timeout=10, what="version 2 applied")
    counted = watched.requested("watch")
    assert watched.requested("list") == 1
    watched.stop()
    # ...one list at start (no GET), and every watch from a resourceVersion, with bookmarks.
    assert len(watched.requests("list")) == 1
    assert not watched.requests("get")
    watches = watched.requests("watch")
    # The router's own count agrees with what it sent, give or take the watch
    # in flight at the scrape (counted before it is sent, logged once answered).
    assert counted - 1 <= len(watches) <= counted + 1
    queries = [w.query() for w in watches]
    assert all(q.get("resourceVersion") not in (None, "", "0") for q in queries), queries
    assert all(q.get("timeoutSeconds") == "1" for q in queries)
    assert all(q.get("allowWatchBookmarks") == "true" for q in queries)
    assert all(w.code == 200 for w in watches)
    assert not router.events("map.watch_failed")


def test_bookmarks_keep_a_quiet_map_current_while_reports_are_written(
    map_router: Callable[[str], MapRouter],
) -> None:
    """Routers' report writes must not leave the router resuming from the map's old version.

    The map stays the same while the routers of a pool write their reports
    (and everything else in the cluster writes). A watch narrowed to the
    map sees none of those events; only the server's bookmarks tell the
    router how far the server has moved on, so that a resumed watch starts
    from a version the watch cache still holds. The real watch cache keeps
    every event for 75 s, so a test cannot cheaply push the map's version out
    of it; what it can check is that the server sends bookmarks on the
    router's watch and the router resumes from them.
    """
    watched = map_router("quiet")
    gateways = watched.gateways(3)
    watched.publish(balanced_map(gateways[:2], buckets=64, version=1), create=True)
    # 3 s watches: the server's bookmark comes 2 s before the end.
    watched.start(watch_seconds=3, report=True)
    router = watched.router
    assert router is not None
    assert watched.version() == 1
    core = watched.core
    for round_ in range(2):
        for other in range(30):  # the reports of other router replicas
            written = core.patch_namespaced_config_map(
                watched.report_name,
                watched.namespace,
                {"data": {f"{watched.pool}-router-x{other}": str(round_)}},
            )
        newest = int(written.metadata.resource_version)

        def resumed_past(newest: int = newest) -> bool:
            return any(
                int(w.query().get("resourceVersion") or 0) >= newest
                for w in watched.requests("watch")
            )

        wait_until(
            resumed_past,
            timeout=15,
            what=f"a watch resumed from a bookmark at {newest} or later",
        )
    watched.publish(balanced_map(gateways, buckets=64, version=2))
    wait_until(lambda: watched.version() == 2, timeout=10, what="version 2 applied")
    lists = watched.requested("list")
    watched.stop()
    assert not router.events("map.watch_expired")
    assert lists == 1 == len(watched.requests("list"))


def test_the_report_says_when_moving_buckets_were_used_and_what_is_open(
    map_router: Callable[[str], MapRouter], tmp_path: Path, ct_studies: StudyFactory
) -> None:
    watched = map_router("moving")
    sink = PynetdicomSink(tmp_path / "sink", ae_title="GW")
    [study] = ct_studies(1, instances=2)
    bucket = study_bucket(study.study_uid, 64)
    gateways = [
        Gateway(name=g.name, host=g.host, port=104, ae_title="GW") for g in watched.gateways(2)
    ]
    base = balanced_map(gateways, buckets=64, version=3)
    owner = base.owners[bucket]
    moving = BucketMap(
        version=3,
        buckets=64,
        gateways=base.gateways,
        owners=base.owners,
        moving={bucket: 1 - owner, (bucket + 1) % 64: base.owners[(bucket + 1) % 64] ^ 1},
    )
    watched.publish(moving, create=True)
    with sink:
        watched.start(
            "--connect-to", f"{gateways[owner].host}:104:127.0.0.1:{sink.port}", report=True
        )
        router = watched.router
        assert router is not None
        wait_until(lambda: watched.report() is not None, timeout=10, what="a first report")
        first = watched.report()
        assert first is not None
        assert first.map_version == 3 and first.buckets == 64
        assert not first.used and not first.open_associations
        with scu.open_association(
            router.host,
            router.port,
            contexts=[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
            called_ae=router.ae_title,
        ) as assoc:
            assert scu.store(assoc, study.files[0]).Status == 0
            # Moving buckets make the router report every 2 s: no heartbeat wait.
            wait_until(
                lambda: (r := watched.report()) is not None and bucket in r.used,
                timeout=10,
                what="the moving bucket reported used",
            )
            held = watched.report()
            assert held is not None
            assert held.quiet_seconds(bucket) < 5
            assert (bucket + 1) % 64 not in held.used
            assert held.open_associations == {owner: 1}
        wait_until(
            lambda: (r := watched.report()) is not None and not r.open_associations,
            timeout=10,
            what="the released association no longer reported",
        )
        watched.stop()
    patches = [r for r in watched.sent() if r.verb == "patch"]
    assert patches and all(
        r.path.endswith(f"/configmaps/{watched.report_name}") and r.code == 200 for r in patches
    )
