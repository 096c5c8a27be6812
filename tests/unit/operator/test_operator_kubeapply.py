"""How the operator's writes meet the API server's errors: retries, refusals, re-creation."""

from __future__ import annotations

from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool_operator import drift
from gatewaypool_operator.kubeapply import (
    GONE_WAIT_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    RETRY_DELAYS,
    Cluster,
    RefusedError,
    retry_delay,
)


def answer(status: int, *, retry_after: str | None = None, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    exc.body = f'{{"message": "{message}"}}' if message else None
    return exc


@pytest.mark.parametrize(
    ("status", "headers", "retries", "delay"),
    [
        (429, {}, 0, RETRY_DELAYS[0]),
        (503, {}, 1, RETRY_DELAYS[1]),
        (500, {"Retry-After": "3"}, 0, 3.0),  # the server asks for longer
        (429, {"retry-after": "0"}, 2, RETRY_DELAYS[2]),  # never shorter than the schedule
        (429, {"Retry-After": "Fri, 31 Dec 2027 23:59:59 GMT"}, 0, RETRY_DELAYS[0]),
        (429, {"Retry-After": str(MAX_RETRY_AFTER_SECONDS + 1)}, 0, None),  # a later pass
        (500, {}, len(RETRY_DELAYS), None),  # retried enough
        (422, {}, 0, None),
        (409, {}, 0, None),
        (404, {}, 0, None),
        (None, {}, 0, None),
    ],
)
def test_retry_delay(
    status: int | None, headers: dict[str, str], retries: int, delay: float | None
) -> None:
    assert retry_delay(status, headers, retries) == delay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def cluster(clock: Clock) -> Cluster:
    return Cluster(kubernetes.client.ApiClient(), sleep=clock.sleep, clock=lambda: clock.now)


def test_429_and_5xx_are_retried_honouring_retry_after() -> None:
    clock = Clock()
    answers: list[Any] = [answer(429, retry_after="2"), answer(503), {"ok": True}]

    def method() -> Any:
        next_answer = answers.pop(0)
        if isinstance(next_answer, Exception):
            raise next_answer
        return next_answer

    assert cluster(clock).call(method) == {"ok": True}
    assert clock.sleeps == [2.0, RETRY_DELAYS[1]]


def test_a_refusal_is_not_retried_and_a_lasting_error_gives_up() -> None:
    clock = Clock()
    calls = []

    def refused() -> None:
        calls.append(1)
        raise answer(422)

    with pytest.raises(ApiException):
        cluster(clock).call(refused)
    assert (len(calls), clock.sleeps) == (1, [])

    def failing() -> None:
        raise answer(500)

    with pytest.raises(ApiException):
        cluster(clock).call(failing)
    assert clock.sleeps == list(RETRY_DELAYS)


STS: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {"name": "ct-gw", "namespace": "radiology"},
    "spec": {"replicas": 2, "serviceName": "ct-gw", "volumeClaimTemplates": [{"x": 1}]},
}


class FakeApps:
    """An AppsV1Api whose StatefulSet answers are scripted."""

    def __init__(self, live: dict[str, Any] | None, *, patch_error: ApiException | None = None):
        self.live = live
        self.patch_error = patch_error
        self.calls: list[tuple[str, Any]] = []
        self.reads_until_gone = 0

    def read_namespaced_stateful_set(self, name: str, namespace: str) -> dict[str, Any]:
        self.calls.append(("read", name))
        if self.live is None:
            raise answer(404)
        if self.reads_until_gone:
            self.reads_until_gone -= 1
            if not self.reads_until_gone:
                held, self.live = self.live, None
                return held
        return self.live

    def patch_namespaced_stateful_set(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        self.calls.append(("apply", name))
        if self.patch_error is not None:
            raise self.patch_error
        return body

    def delete_namespaced_stateful_set(self, name: str, namespace: str, **options: Any) -> None:
        self.calls.append(("delete", options["body"].preconditions.uid))
        assert options["body"].propagation_policy == "Orphan"


def with_apps(clock: Clock, apps: FakeApps) -> Cluster:
    made = cluster(clock)
    made._apis["AppsV1Api"] = apps
    return made


def test_a_lasting_server_error_on_one_child_is_a_refusal_with_its_message() -> None:
    clock = Clock()
    apps = FakeApps(None, patch_error=answer(500, message="etcdserver: request timed out"))
    with pytest.raises(RefusedError) as refused:
        with_apps(clock, apps).apply(STS)
    assert str(refused.value) == "StatefulSet ct-gw: etcdserver: request timed out"
    assert [c for c in apps.calls if c[0] == "apply"] == [("apply", "ct-gw")] * (
        len(RETRY_DELAYS) + 1
    )


def owned_live(*, uid: str, terminating: bool = False) -> dict[str, Any]:
    live: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "ct-gw",
            "namespace": "radiology",
            "uid": uid,
            "managedFields": [
                {"manager": drift.MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {}}}
            ],
        },
        "spec": {"replicas": 2, "serviceName": "ct-gw"},
    }
    if terminating:
        live["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        live["metadata"]["finalizers"] = ["orphan"]
    return live


def test_a_recreation_creates_only_once_the_old_object_is_gone() -> None:
    clock = Clock()
    apps = FakeApps(owned_live(uid="old"))
    apps.reads_until_gone = 3  # the orphan finalizer holds it for two polls
    applied = with_apps(clock, apps).apply(STS)
    assert applied.action == "recreated"
    assert [c for c in apps.calls if c[0] != "read"] == [("delete", "old"), ("apply", "ct-gw")]
    assert apps.calls.index(("apply", "ct-gw")) > len(apps.calls) - 2, "after the last read"


def test_a_recreation_that_waits_too_long_is_left_to_a_later_pass() -> None:
    clock = Clock()
    apps = FakeApps(owned_live(uid="old"))
    applied = with_apps(clock, apps).apply(STS)
    assert applied.action == "deleting"
    assert ("apply", "ct-gw") not in apps.calls
    assert sum(clock.sleeps) == pytest.approx(GONE_WAIT_SECONDS)
    # The next pass finds it terminating, waits again, and creates it once gone.
    apps.live = owned_live(uid="old", terminating=True)
    apps.reads_until_gone = 2
    later = with_apps(clock, apps).apply(STS, base=apps.live)
    assert later.action == "created"
    assert apps.calls[-1] == ("apply", "ct-gw")
