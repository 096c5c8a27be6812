"""The spool's pure parts (decisions, the FIFO queue) and its files (commit, recovery)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest

from gatewaypool.bucketmap import Gateway, balanced_map
from gatewaypool.reports import dump_report, parse_report
from gatewaypool_router.bucketusage import BucketUsage
from gatewaypool_router.config import ConfigError, ObjectRef, RouterConfig
from gatewaypool_router.kubesource import RouterReporter
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.spool.decide import (
    RETRY_FIRST,
    RETRY_MAX,
    Availability,
    Verdict,
    diverts,
    judge,
    retry_delay,
    spool_first,
)
from gatewaypool_router.spool.forwarder import SpoolForwarder
from gatewaypool_router.spool.queue import SpoolQueue
from gatewaypool_router.spool.store import (
    MAGIC,
    Entry,
    EntryError,
    Meta,
    SpoolFullError,
    SpoolStore,
    entry_name,
    read_entry,
    recover,
    seq_of,
)
from gatewaypool_router.statuses import Status


def meta(bucket: int = 7, uid: str = "1.2.3.4", spooled_at: float = 100.0) -> Meta:
    return Meta(
        bucket=bucket,
        study_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=uid,
        transfer_syntax="1.2.840.10008.1.2.1",
        command=b"\x00\x01command",
        message_id=3,
        calling_ae="CT1",
        spooled_at=spooled_at,
    )


def entry(seq: int, bucket: int, spooled_at: float = 100.0) -> Entry:
    return Entry(
        seq=seq,
        path=Path(f"/nowhere/{entry_name(seq)}"),
        size=10,
        file_size=100,
        meta=meta(bucket, uid=f"1.2.{seq}", spooled_at=spooled_at),
    )


# -- decisions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("always", "waiting", "available", "ready", "expected"),
    [
        (False, False, True, True, False),  # cut-through, the default path
        (False, True, True, True, True),  # behind its bucket's waiting instances
        (False, False, False, True, True),  # its gateway failed a moment ago
        (False, False, True, False, True),  # the map source marks its gateway not Ready
        (True, False, True, True, True),  # --spool-when Always
    ],
)
def test_when_an_instance_goes_to_the_spool_first(
    always: bool, waiting: bool, available: bool, ready: bool, expected: bool
) -> None:
    assert (
        spool_first(
            always=always,
            bucket_waiting=waiting,
            gateway_available=available,
            gateway_ready=ready,
        )
        is expected
    )


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (0x0000, Verdict.DELIVERED),
        (0xB000, Verdict.DELIVERED),  # a warning: the gateway holds it
        (0x0107, Verdict.DELIVERED),
        (Status.GATEWAY_UNREACHABLE, Verdict.RETRY),
        (Status.GATEWAY_TIMEOUT, Verdict.RETRY),
        (Status.GATEWAY_ABORTED, Verdict.RETRY),
        (0xA700, Verdict.RETRY),  # the gateway is out of resources now
        (Status.GATEWAY_REJECTED, Verdict.RETRY),  # the router is refused, not the instance
        (Status.GATEWAY_REFUSED_CALLER, Verdict.RETRY),
        (0xC001, Verdict.REFUSED),
        (0xA900, Verdict.REFUSED),
        (Status.SOP_CLASS_NOT_SUPPORTED, Verdict.REFUSED),
    ],
)
def test_what_an_attempt_means_for_the_entry(status: int, verdict: Verdict) -> None:
    assert judge(status) is verdict


def test_only_retryable_statuses_divert_an_instance_to_the_spool() -> None:
    assert diverts(Status.GATEWAY_UNREACHABLE)
    assert diverts(0xA700)
    assert not diverts(0xC001)  # the gateway's word on the instance goes to the sender
    assert not diverts(0x0000)


def test_retries_back_off_doubling_up_to_a_cap() -> None:
    delays = [retry_delay(n) for n in range(0, 10)]
    assert delays[0] == 0.0
    assert delays[1] == RETRY_FIRST
    assert delays[2] == 2 * RETRY_FIRST
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert max(delays) == RETRY_MAX
    assert retry_delay(10**6) == RETRY_MAX


def test_a_gateway_that_failed_is_avoided_for_a_while_only() -> None:
    now = [0.0]
    marks = Availability(clock=lambda: now[0], hold=2.0)
    assert marks.available("gw-0")
    marks.failed("gw-0")
    assert not marks.available("gw-0")
    assert marks.available("gw-1")
    now[0] = 1.9
    assert not marks.available("gw-0")
    now[0] = 2.0
    assert marks.available("gw-0")


# -- the FIFO queue ---------------------------------------------------------------------


def test_a_bucket_leaves_in_order_one_entry_at_a_time() -> None:
    queue = SpoolQueue()
    queue.add([entry(3, 1), entry(1, 1), entry(2, 2)])
    owner_of = {1: "gw-0", 2: "gw-0"}.get
    first = queue.take(owner_of, "gw-0")
    assert first is not None and first.seq == 1  # the oldest head
    second = queue.take(owner_of, "gw-0")
    assert second is not None and second.seq == 2  # bucket 1 is busy: bucket 2's head
    assert queue.take(owner_of, "gw-0") is None  # both buckets busy
    queue.done(first)
    third = queue.take(owner_of, "gw-0")
    assert third is not None and third.seq == 3


def test_an_entry_tried_again_stays_at_its_buckets_head() -> None:
    queue = SpoolQueue()
    queue.add([entry(1, 5), entry(2, 5)])
    owner_of = {5: "gw-0"}.get
    head = queue.take(owner_of, "gw-0")
    assert head is not None
    queue.again(head)
    again = queue.take(owner_of, "gw-0")
    assert again is not None and again.seq == 1


def test_a_moved_bucket_goes_to_its_new_owner_never_twice_at_once() -> None:
    queue = SpoolQueue()
    queue.add([entry(1, 5), entry(2, 5)])
    table = {5: "gw-0"}
    head = queue.take(table.get, "gw-0")
    assert head is not None
    table[5] = "gw-1"  # a new map while gw-0's lane sends the head
    assert queue.take(table.get, "gw-1") is None  # not before the head is settled
    queue.done(head)
    following = queue.take(table.get, "gw-1")
    assert following is not None and following.seq == 2
    assert queue.take(table.get, "gw-0") is None


def test_known_entries_are_added_once_and_the_backlog_counts_per_gateway() -> None:
    queue = SpoolQueue()
    assert queue.add([entry(1, 1, spooled_at=50.0), entry(2, 2)]) == 2
    assert queue.add([entry(1, 1), entry(3, 2, spooled_at=70.0)]) == 1
    backlog = queue.backlog({1: "gw-0", 2: "gw-1"}.get)
    assert (backlog.instances, backlog.bytes, backlog.oldest) == (3, 30, 50.0)
    assert backlog.buckets == frozenset({1, 2})
    assert backlog.by_gateway["gw-0"].instances == 1
    assert backlog.by_gateway["gw-1"].instances == 2
    assert backlog.by_gateway["gw-1"].oldest == 70.0
    assert queue.gateways({1: "gw-0", 2: "gw-1"}.get) == {"gw-0", "gw-1"}
    for seq, bucket in ((1, 1), (2, 2), (3, 2)):
        queue.done(entry(seq, bucket))
    assert queue.empty()


# -- the files ----------------------------------------------------------------------


def test_a_committed_entry_reads_back_whole(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path)
    writer = store.writer()
    writer.write(b"data set ")
    writer.write(memoryview(b"bytes"))
    seq = writer.commit(meta(bucket=9))
    path = tmp_path / "queue" / "9" / entry_name(seq)
    found = read_entry(path)
    assert found.seq == seq == 1
    assert found.meta == meta(bucket=9)
    assert path.read_bytes()[: found.size] == b"data set bytes"
    assert path.read_bytes().endswith(MAGIC)
    assert store.held_bytes() == found.file_size
    assert store.waiting(9) and not store.waiting(8)
    assert not list((tmp_path / "tmp").iterdir())


def test_sequence_numbers_grow_across_stores_of_one_folder(tmp_path: Path) -> None:
    first, second = SpoolStore(tmp_path), SpoolStore(tmp_path)  # two processes' handles
    seqs = []
    for store in (first, second, first):
        writer = store.writer()
        writer.write(b"x")
        seqs.append(writer.commit(meta(bucket=1)))
    assert seqs == [1, 2, 3]


def test_a_full_spool_refuses_the_commit_and_keeps_nothing(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, max_bytes=2000)
    writer = store.writer()
    writer.write(b"x" * 100)
    writer.commit(meta())
    assert not store.full()
    big = store.writer()
    big.write(b"x" * 5000)
    with pytest.raises(SpoolFullError):
        big.commit(meta())
    assert len(list((tmp_path / "queue").rglob("*.inst"))) == 1
    assert not list((tmp_path / "tmp").iterdir())


def test_forgetting_frees_the_bytes_and_the_buckets_folder(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path)
    writer = store.writer()
    writer.write(b"abc")
    seq = writer.commit(meta(bucket=4))
    found = read_entry(tmp_path / "queue" / "4" / entry_name(seq))
    assert not store.mark_sending(found)  # the first send
    assert store.mark_sending(found)  # a second one is a resend
    store.forget(found)
    assert store.held_bytes() == 0
    assert not (tmp_path / "queue" / "4").exists()
    assert not list((tmp_path / "sending").iterdir())


def test_an_instance_its_gateway_may_hold_counts_as_a_resend_when_forwarded(
    tmp_path: Path,
) -> None:
    store = SpoolStore(tmp_path)
    writer = store.writer()
    writer.write(b"abc")
    seq = writer.commit(meta(bucket=4))
    store.sent_before(seq)  # its gateway timed out after the data set went out
    assert store.mark_sending(read_entry(tmp_path / "queue" / "4" / entry_name(seq)))


def test_recovery_discards_partial_files_and_keeps_every_committed_one(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path)
    for bucket in (3, 3, 8):
        writer = store.writer()
        writer.write(b"instance")
        writer.commit(meta(bucket=bucket))
    partial = store.writer()
    partial.write(b"half an instance")  # the crash: never committed, never answered
    cut = tmp_path / "queue" / "8" / entry_name(99)
    cut.write_bytes(b"no trailer")  # cannot come from a commit; kept aside, not lost
    (tmp_path / "state").write_text("0 0\n")  # a state file that lost its writes
    found = recover(SpoolStore(tmp_path))
    assert [e.seq for e in found.entries] == [1, 2, 3]
    assert found.discarded == 1 and found.unreadable == 1
    assert not list((tmp_path / "tmp").iterdir())
    assert (tmp_path / "refused" / entry_name(99)).exists()
    next_writer = store.writer()
    next_writer.write(b"y")
    assert next_writer.commit(meta()) == 100  # after every number ever used
    held = sum(e.file_size for e in found.entries) + len(b"no trailer")
    assert store.held_bytes() == held + os.path.getsize(tmp_path / "queue" / "7" / entry_name(100))


@pytest.mark.parametrize(
    "content",
    [b"", b"short", b"x" * 40 + (5).to_bytes(4, "big") + b"NOTMAGIC", b"{}" + b"\0\0\0\2" + MAGIC],
)
def test_a_file_without_a_valid_trailer_is_no_entry(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / entry_name(1)
    path.write_bytes(content)
    with pytest.raises(EntryError):
        read_entry(path)


def test_entry_names_carry_their_sequence() -> None:
    assert seq_of(entry_name(42)) == 42
    assert seq_of("42.inst") is None
    assert seq_of(entry_name(42) + ".json") is None
    assert seq_of("x" * 20 + ".inst") is None


# -- what the operator reads --------------------------------------------------------


def test_the_routers_report_names_the_buckets_with_spooled_instances(tmp_path: Path) -> None:
    gateways = [Gateway(name=f"gw-{i}", host="h", port=104 + i, ae_title="GW") for i in range(2)]
    holder = MapHolder(RouterMetrics())
    holder.offer(balanced_map(gateways, buckets=64, version=3), source="test")
    config = RouterConfig(gateways=tuple(gateways), buckets=64, spool_dir=tmp_path)
    store = SpoolStore(tmp_path)
    for bucket in (5, 5, 40):
        writer = store.writer()
        writer.write(b"x" * 10)
        writer.commit(meta(bucket=bucket, spooled_at=time.time() - 30))
    forwarder = SpoolForwarder(config, holder)
    forwarder.recover()  # not started: nothing is forwarded
    reporter = RouterReporter(
        None,
        ObjectRef(namespace="ns", name="pool-routers"),
        pod_name="router-a",
        holder=holder,
        usage=BucketUsage(),
        spool=forwarder.summary,
    )
    report = parse_report(dump_report(reporter.build()))
    assert report.spool is not None
    assert report.spool.buckets == frozenset({5, 40})
    assert (report.spool.instances, report.spool.bytes, report.spool.refused) == (3, 30, 0)
    assert 29 <= report.spool.oldest_seconds < 60
    assert report.quiet_seconds(5) == 0.0  # never handed over under its spooled instances
    assert report.spooled(40) and not report.spooled(6)


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"spool_when": "Sometimes"}, "--spool-when"),
        ({"spool_max_bytes": 0}, "--spool-max-bytes"),
        ({"spool_retention": 0.0}, "--spool-retention"),
        ({"spool_dir": None, "spool_max_bytes": 10}, "--spool-dir"),
        ({"forwarding": "splice"}, "--forwarding splice"),  # every instance is written too
    ],
)
def test_spool_options_are_checked_at_start(
    tmp_path: Path, changes: dict[str, Any], option: str
) -> None:
    gateways = (Gateway(name="gw-0", host="h", port=104, ae_title="GW"),)
    base = RouterConfig(gateways=gateways, spool_dir=tmp_path)
    with pytest.raises(ConfigError, match=option):
        dataclasses.replace(base, **changes)
