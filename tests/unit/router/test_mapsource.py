"""Applying bucket maps: which maps replace the one in use, and which are refused.

All replicas route alike only if each applies exactly the maps the operator
published, in order; a stale, changed-in-place or bucket-count-changing map
must be refused, counted and logged while the map in use stays.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from gatewaypool.bucketmap import (
    BucketMap,
    Gateway,
    Readiness,
    balanced_map,
    dump_map,
    dump_readiness,
)
from gatewaypool.contract import MAP_KEY, READINESS_KEY
from gatewaypool_router.config import ObjectRef
from gatewaypool_router.kubesource import ConfigMapMapWatcher
from gatewaypool_router.mapsource import FileMapWatcher, MapHolder
from gatewaypool_router.metrics import RouterMetrics

LOGGER = "gatewaypool_router.mapsource"


def gateway(index: int) -> Gateway:
    return Gateway(
        name=f"gw-{index}",
        host=f"gw-{index}.pool-gw.ns.svc.cluster.local",
        port=104,
        ae_title="GATEWAY",
    )


def pool_map(*, version: int, gateways: int = 2, buckets: int = 16) -> BucketMap:
    return balanced_map([gateway(i) for i in range(gateways)], buckets=buckets, version=version)


def rejected(metrics: RouterMetrics) -> float:
    value = metrics.registry.get_sample_value("gatewaypool_router_map_rejected_total")
    assert value is not None
    return float(value)


def version_gauge(metrics: RouterMetrics) -> float:
    value = metrics.registry.get_sample_value("gatewaypool_router_map_version")
    assert value is not None
    return float(value)


def refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        record.fields  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == LOGGER and record.getMessage() == "map.refused"
    ]


def applied(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        record.fields  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == LOGGER and record.getMessage() == "map.applied"
    ]


@pytest.fixture(autouse=True)
def _capture_map_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)


@pytest.fixture
def metrics() -> RouterMetrics:
    return RouterMetrics()


@pytest.fixture
def holder(metrics: RouterMetrics) -> MapHolder:
    return MapHolder(metrics)


# --- MapHolder.offer ---------------------------------------------------------


def test_no_map_before_the_first(holder: MapHolder, metrics: RouterMetrics) -> None:
    assert holder.current is None
    assert version_gauge(metrics) == -1
    assert rejected(metrics) == 0


def test_first_map_applied(
    holder: MapHolder, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    first = pool_map(version=3)
    assert holder.offer(first, source="test") is True
    assert holder.current is first
    assert version_gauge(metrics) == 3
    assert rejected(metrics) == 0
    assert applied(caplog) == [{"source": "test", "version": 3, "gateways": 2, "buckets": 16}]


def test_newer_map_applied(holder: MapHolder, metrics: RouterMetrics) -> None:
    holder.offer(pool_map(version=1), source="test")
    newer = pool_map(version=2, gateways=3)
    assert holder.offer(newer, source="test") is True
    assert holder.current is newer
    assert version_gauge(metrics) == 2
    # Versions may skip: the operator may publish several while a router is down.
    latest = pool_map(version=10, gateways=4)
    assert holder.offer(latest, source="test") is True
    assert holder.current is latest
    assert version_gauge(metrics) == 10
    assert rejected(metrics) == 0


def test_older_map_refused(
    holder: MapHolder, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    current = pool_map(version=5)
    holder.offer(current, source="test")
    assert holder.offer(pool_map(version=4, gateways=3), source="configmap") is False
    assert holder.current is current
    assert version_gauge(metrics) == 5
    assert rejected(metrics) == 1
    (fields,) = refusals(caplog)
    assert fields["source"] == "configmap"
    assert fields["kept"] == 5
    assert "version 4 is older than 5" in str(fields["problem"])


def test_same_version_other_content_refused(
    holder: MapHolder, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    current = pool_map(version=5, gateways=2)
    holder.offer(current, source="test")
    assert holder.offer(pool_map(version=5, gateways=3), source="test") is False
    assert holder.current is current
    assert rejected(metrics) == 1
    (fields,) = refusals(caplog)
    assert "version 5 was not bumped" in str(fields["problem"])


def test_same_content_is_a_no_op(
    holder: MapHolder, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    current = pool_map(version=5)
    holder.offer(current, source="test")
    caplog.clear()
    equal = pool_map(version=5)
    assert equal is not current
    assert holder.offer(equal, source="test") is False
    assert holder.current is current
    assert rejected(metrics) == 0
    assert refusals(caplog) == []
    assert applied(caplog) == []


def test_bucket_count_change_refused(
    holder: MapHolder, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    current = pool_map(version=1, buckets=16)
    holder.offer(current, source="test")
    # Even a newer version may not change the bucket count: every study would move.
    assert holder.offer(pool_map(version=2, buckets=32), source="test") is False
    assert holder.current is current
    assert version_gauge(metrics) == 1
    assert rejected(metrics) == 1
    (fields,) = refusals(caplog)
    assert "bucket count 32 differs from 16" in str(fields["problem"])


def test_refusals_count_up(holder: MapHolder, metrics: RouterMetrics) -> None:
    holder.offer(pool_map(version=5), source="test")
    for version in (1, 2, 3):
        holder.offer(pool_map(version=version), source="test")
    holder.refuse("unreadable", source="test")
    assert rejected(metrics) == 4
    assert holder.current is not None
    assert holder.current.version == 5


def test_refuse_without_a_map_keeps_none(
    holder: MapHolder, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    holder.refuse("broken", source="file x")
    assert holder.current is None
    assert rejected(metrics) == 1
    assert refusals(caplog) == [{"source": "file x", "problem": "broken", "kept": None}]
    (record,) = [r for r in caplog.records if r.getMessage() == "map.refused"]
    assert record.levelno == logging.ERROR


# --- FileMapWatcher.load_now -------------------------------------------------


def write(path: Path, bucket_map: BucketMap) -> None:
    path.write_text(dump_map(bucket_map))


@pytest.fixture
def map_path(tmp_path: Path) -> Path:
    return tmp_path / "map.json"


@pytest.fixture
def watcher(map_path: Path, holder: MapHolder) -> FileMapWatcher:
    return FileMapWatcher(map_path, holder, interval=3600)


def test_file_valid_map_applied(
    map_path: Path, watcher: FileMapWatcher, holder: MapHolder, metrics: RouterMetrics
) -> None:
    write(map_path, pool_map(version=1))
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=1)
    assert version_gauge(metrics) == 1


def test_file_rewritten_with_a_higher_version(
    map_path: Path, watcher: FileMapWatcher, holder: MapHolder, metrics: RouterMetrics
) -> None:
    write(map_path, pool_map(version=2))
    assert watcher.load_now() is True
    inode = map_path.stat().st_ino
    write(map_path, pool_map(version=10, gateways=3))  # in place, and one byte longer
    assert map_path.stat().st_ino == inode
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=10, gateways=3)
    assert version_gauge(metrics) == 10
    assert rejected(metrics) == 0


def test_file_unchanged_is_not_reread(
    map_path: Path, watcher: FileMapWatcher, holder: MapHolder, caplog: pytest.LogCaptureFixture
) -> None:
    write(map_path, pool_map(version=1))
    watcher.load_now()
    caplog.clear()
    assert watcher.load_now() is True
    assert applied(caplog) == []
    assert refusals(caplog) == []


def test_file_rewritten_within_one_timestamp_tick(
    map_path: Path, watcher: FileMapWatcher, holder: MapHolder
) -> None:
    old, new = pool_map(version=1, gateways=2), pool_map(version=2, gateways=2)
    assert len(dump_map(old)) == len(dump_map(new))
    write(map_path, old)
    assert watcher.load_now() is True
    before = map_path.stat()
    write(map_path, new)
    # What a coarse clock does: the rewrite gets the same modification time.
    os.utime(map_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    watcher.load_now()
    assert holder.current == new


def test_file_invalid_json_refused_old_kept(
    map_path: Path,
    watcher: FileMapWatcher,
    holder: MapHolder,
    metrics: RouterMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write(map_path, pool_map(version=1))
    watcher.load_now()
    map_path.write_text('{"version": 2, "buckets": 16, "gateways": [')
    assert watcher.load_now() is True  # a map is still in use
    assert holder.current == pool_map(version=1)
    assert version_gauge(metrics) == 1
    assert rejected(metrics) == 1
    (fields,) = refusals(caplog)
    assert str(map_path) in str(fields["source"])
    assert str(map_path) in str(fields["problem"])  # the MapError names the file
    assert fields["kept"] == 1


def test_file_invalid_map_refused_old_kept(
    map_path: Path, watcher: FileMapWatcher, holder: MapHolder, caplog: pytest.LogCaptureFixture
) -> None:
    write(map_path, pool_map(version=1))
    watcher.load_now()
    text = dump_map(pool_map(version=2)).replace('"port":104', '"port":70000', 1)
    map_path.write_text(text)
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=1)
    (fields,) = refusals(caplog)
    assert "gateways[0].port" in str(fields["problem"])
    assert "70000" in str(fields["problem"])


def test_file_invalid_first_map_leaves_none(
    map_path: Path, watcher: FileMapWatcher, holder: MapHolder, metrics: RouterMetrics
) -> None:
    map_path.write_text("not: [a, map")
    assert watcher.load_now() is False
    assert holder.current is None
    assert rejected(metrics) == 1


def test_file_deleted_refused_old_kept(
    map_path: Path,
    watcher: FileMapWatcher,
    holder: MapHolder,
    metrics: RouterMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write(map_path, pool_map(version=1))
    watcher.load_now()
    map_path.unlink()
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=1)
    assert rejected(metrics) == 1
    (fields,) = refusals(caplog)
    assert fields["source"] == "file"
    assert "cannot read" in str(fields["problem"])
    assert str(map_path) in str(fields["problem"])
    # Still missing: refused once, not once per poll.
    assert watcher.load_now() is True
    assert rejected(metrics) == 1
    # Back again, newer: applied.
    write(map_path, pool_map(version=2))
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=2)


def test_file_missing_at_start(
    watcher: FileMapWatcher, holder: MapHolder, metrics: RouterMetrics
) -> None:
    assert watcher.load_now() is False
    assert holder.current is None
    assert rejected(metrics) == 1


def test_file_that_is_a_directory_is_refused(
    tmp_path: Path, holder: MapHolder, metrics: RouterMetrics
) -> None:
    watcher = FileMapWatcher(tmp_path, holder, interval=3600)
    assert watcher.load_now() is False
    assert rejected(metrics) == 1


def configmap_update(volume: Path, stamp: str, bucket_map: BucketMap) -> None:
    """Publish `bucket_map` the way the kubelet updates a ConfigMap volume.

    The data sits in a timestamped folder; ``..data`` links to it and
    ``map.json`` links through ``..data``. An update writes a new folder,
    points a temporary link at it and renames that over ``..data`` (one
    atomic step), then deletes the old folder.
    """
    folder = volume / f"..{stamp}"
    folder.mkdir()
    (folder / "map.json").write_text(dump_map(bucket_map))
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    temporary = volume / "..data_tmp"
    temporary.symlink_to(folder.name)
    os.replace(temporary, data)
    if not (volume / "map.json").is_symlink():
        (volume / "map.json").symlink_to("..data/map.json")
    if old is not None:
        for child in (volume / old).iterdir():
            child.unlink()
        (volume / old).rmdir()


def test_file_configmap_symlink_swap(tmp_path: Path, holder: MapHolder) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    configmap_update(volume, "2024_01_01_00_00_00.1", pool_map(version=1))
    watcher = FileMapWatcher(volume / "map.json", holder, interval=3600)
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=1)

    # Same length, same second: only the swap itself tells the change.
    configmap_update(volume, "2024_01_01_00_00_00.2", pool_map(version=2))
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=2)

    configmap_update(volume, "2024_01_01_00_00_00.3", pool_map(version=3, gateways=3))
    assert watcher.load_now() is True
    assert holder.current == pool_map(version=3, gateways=3)


# --- readiness, beside the map -------------------------------------------------------


def not_ready_gauge(metrics: RouterMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gatewaypool_router_gateway_not_ready", {"gateway": name}
    )


def test_readiness_replaces_the_last_and_says_nothing_of_versions(
    holder: MapHolder, metrics: RouterMetrics
) -> None:
    seen: list[Readiness] = []
    holder.subscribe_readiness(seen.append)
    holder.offer(pool_map(version=3), source="test")
    assert holder.ready("gw-1")  # nothing said: Ready
    assert holder.offer_readiness(Readiness(frozenset({"gw-1"})), source="test")
    assert not holder.ready("gw-1") and holder.ready("gw-0")
    assert not holder.offer_readiness(Readiness(frozenset({"gw-1"})), source="test")  # no news
    assert not_ready_gauge(metrics, "gw-1") == 1
    assert holder.offer_readiness(Readiness(), source="test")
    assert holder.ready("gw-1") and not_ready_gauge(metrics, "gw-1") == 0
    assert seen == [Readiness(frozenset({"gw-1"})), Readiness()]
    assert holder.current == pool_map(version=3) and version_gauge(metrics) == 3


def test_readiness_file_beside_the_map(
    tmp_path: Path, map_path: Path, holder: MapHolder, metrics: RouterMetrics
) -> None:
    path = tmp_path / "readiness.json"
    watcher = FileMapWatcher(map_path, holder, interval=3600, readiness=path)
    write(map_path, pool_map(version=1))
    assert watcher.load_now() and holder.readiness == Readiness()  # no file: all Ready
    path.write_text(dump_readiness(Readiness(frozenset({"gw-0"}))))
    watcher.load_now()
    assert not holder.ready("gw-0")
    path.write_text('{"notReady": ["gw-0", "gw-0"]}')  # refused: the last one stays
    watcher.load_now()
    assert not holder.ready("gw-0") and rejected(metrics) == 1
    path.write_text("notReady: []\n")
    watcher.load_now()
    assert holder.ready("gw-0")
    path.write_text(dump_readiness(Readiness(frozenset({"gw-1"}))))
    watcher.load_now()
    path.unlink()
    path.mkdir()  # unreadable: refused once, not on every poll; the last one stays
    watcher.load_now()
    watcher.load_now()
    assert not holder.ready("gw-1") and rejected(metrics) == 2
    path.rmdir()  # gone: all Ready
    watcher.load_now()
    assert holder.readiness == Readiness() and holder.current == pool_map(version=1)


def test_configmap_readiness_key_is_read_beside_the_map(
    holder: MapHolder, metrics: RouterMetrics
) -> None:
    watcher = ConfigMapMapWatcher(None, ObjectRef("ns", "pool-map"), holder)

    def event(**data: str) -> None:
        watcher._consider(SimpleNamespace(data=data))

    text = dump_map(pool_map(version=4))
    event(**{MAP_KEY: text})  # an older operator: no readiness.json, all Ready
    assert holder.current == pool_map(version=4) and holder.readiness == Readiness()
    down = dump_readiness(Readiness(frozenset({"gw-1"})))
    event(**{MAP_KEY: text, READINESS_KEY: down})  # the same map, news beside it
    assert not holder.ready("gw-1") and holder.current == pool_map(version=4)
    event(**{MAP_KEY: text, READINESS_KEY: "{"})  # refused, counted; the last one stays
    assert not holder.ready("gw-1") and rejected(metrics) == 1
    event(**{MAP_KEY: dump_map(pool_map(version=5)), READINESS_KEY: '{"notReady":[]}'})
    assert holder.ready("gw-1") and holder.current == pool_map(version=5)
