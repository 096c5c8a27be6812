"""The benchmark's sending plans: whole studies per lane, the limit's owners, the spool cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewaypool.bucketmap import Gateway, balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.bench.cases import (
    SPOOL_CASES,
    StudyFiles,
    lanes,
    run_lanes,
    spool_entries,
    spool_is_empty,
    straight_to_owners,
    studies_per_gateway,
    through_one_peer,
)
from gatewaypool_router.config import SPOOL_WHEN

GATEWAYS = [
    Gateway(name=f"gw-{i}", host="127.0.0.1", port=11000 + i, ae_title=f"GW{i}") for i in range(3)
]


def _studies(count: int, per_study: int = 3) -> list[StudyFiles]:
    return [
        StudyFiles(
            f"1.2.826.0.1.3680043.8.498.{index + 1}",
            tuple(Path(f"{index}-{n}.dcm") for n in range(per_study)),
        )
        for index in range(count)
    ]


def test_lanes_deal_whole_studies_round_robin() -> None:
    studies = _studies(7)
    dealt = lanes(studies, 4)
    assert [[s.study_uid[-1] for s in lane] for lane in dealt] == [
        ["1", "5"],
        ["2", "6"],
        ["3", "7"],
        ["4"],
    ]
    assert lanes(studies[:2], 4) == [[studies[0]], [studies[1]]]  # no empty lane
    with pytest.raises(ValueError, match="at least 1"):
        lanes(studies, 0)


def test_through_one_peer_is_one_association_per_lane_with_its_studies_in_order() -> None:
    studies = _studies(5)
    plan = through_one_peer(lanes(studies, 2), host="127.0.0.1", port=104, called_ae="ROUTER")
    assert [len(lane) for lane in plan] == [1, 1]
    assert plan[0][0].files == studies[0].files + studies[2].files + studies[4].files
    assert {send.called_ae for lane in plan for send in lane} == {"ROUTER"}


def test_the_limit_sends_each_study_alone_to_the_owner_of_its_bucket() -> None:
    bucket_map = balanced_map(GATEWAYS, buckets=4096)
    studies = _studies(40)
    plan = straight_to_owners(lanes(studies, 4), bucket_map)
    assert [len(lane) for lane in plan] == [10, 10, 10, 10]
    sent = {send.files: send for lane in plan for send in lane}
    assert len(sent) == 40
    for study in studies:
        owner = bucket_map.gateway_for(study_bucket(study.study_uid, 4096))
        send = sent[study.files]
        assert (send.host, send.port, send.called_ae) == (owner.host, owner.port, owner.ae_title)
    # 40 studies over 3 gateways: each gets some (the UIDs are fixed, so this is stable).
    spread = studies_per_gateway(plan, bucket_map.gateways)
    counts = [int(part.split()[1]) for part in spread.split(", ")]
    assert [part.split()[0] for part in spread.split(", ")] == ["gw-0", "gw-1", "gw-2"]
    assert sum(counts) == 40
    assert min(counts) > 0


def test_the_limit_follows_the_map_not_the_gateway_order() -> None:
    # Every bucket owned by gw-2: the limit must send everything there.
    base = balanced_map(GATEWAYS, buckets=16)
    only_last = type(base)(version=2, buckets=16, gateways=base.gateways, owners=(2,) * 16)
    plan = straight_to_owners(lanes(_studies(5), 4), only_last)
    assert {send.port for lane in plan for send in lane} == {11002}
    assert studies_per_gateway(plan, only_last.gateways) == "gw-0 0, gw-1 0, gw-2 5"


def test_the_spool_cases_cover_every_spool_when_with_a_folder_each_in_the_work_dir() -> None:
    assert sorted(case.when for case in SPOOL_CASES) == sorted(SPOOL_WHEN)
    assert len({case.label for case in SPOOL_CASES}) == len(SPOOL_CASES)
    assert len({case.folder for case in SPOOL_CASES}) == len(SPOOL_CASES)
    work = Path("/var/bench")
    for case in SPOOL_CASES:
        args = case.router_args(work)
        assert args == ["--spool-dir", str(work / case.folder), "--spool-when", case.when]
        # Under the work dir: the report names the file system it is on.
        assert Path(args[1]).parent == work


def test_spool_entries_counts_only_committed_instances_in_the_queue(tmp_path: Path) -> None:
    assert spool_entries(tmp_path / "never-created") == 0
    assert spool_is_empty(tmp_path)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "123-1.part").write_bytes(b"being received")  # no entry yet
    (tmp_path / "refused").mkdir()
    (tmp_path / "refused" / "00000000000000000001.inst").write_bytes(b"kept aside")
    queue = tmp_path / "queue"
    (queue / "17").mkdir(parents=True)
    (queue / "4095").mkdir()
    for seq in (2, 5):
        (queue / "17" / f"{seq:020d}.inst").write_bytes(b"x")
    (queue / "4095" / f"{3:020d}.inst").write_bytes(b"x")
    (queue / "4095" / "not-an-entry.tmp").write_bytes(b"x")
    assert spool_entries(tmp_path) == 3
    assert not spool_is_empty(tmp_path)
    for entry in list(queue.glob("*/*.inst")):
        entry.unlink()
    assert spool_is_empty(tmp_path)


def test_run_lanes_waits_for_delivery_after_the_answers() -> None:
    looks = []

    def delivered() -> bool:
        looks.append(1)
        return len(looks) >= 3

    timing = run_lanes([], delivered=delivered, interval=0.01)
    assert len(looks) == 3
    assert timing.delivered >= timing.answered + 0.02
    cut_through = run_lanes([])
    assert cut_through.delivered == cut_through.answered


def test_run_lanes_fails_when_the_spool_never_empties() -> None:
    with pytest.raises(RuntimeError, match=r"not delivered within 0\.05 s"):
        run_lanes([], delivered=lambda: False, interval=0.01, timeout=0.05)
