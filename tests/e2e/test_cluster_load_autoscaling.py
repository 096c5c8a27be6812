"""An autoscaled pool follows a load that rises from 1 to 8 senders and falls, splitting nothing.

On the real control plane (see :mod:`support.autoscale`): the operator
renders the HPA from ``spec.autoscaling``; kube-controller-manager's HPA
controller (sync period 2 s) reads the routers' studies in flight through
``custom.metrics.k8s.io`` (Prometheus scraping the routers every second,
the chart's Prometheus Adapter rules: :mod:`support.custommetrics`), and
writes replicas through the pool's ``/scale`` subresource; gateways start
late and become Ready later; senders send whole studies over several
associations to the router Service.

Asserted: replicas rise while the load is high, within a bounded number of
syncs, to the maximum; fall only once the scale-down window has passed and
one gateway per period at most; end at the minimum once the load has
stopped; never leave ``[minReplicas, maxReplicas]`` (sampled every 0.1 s);
and throughout, no study split across gateways, no instance failed, none
unanswered, none acknowledged and lost.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from support import autoscale
from support.realcluster import Cluster

#: Short holds, so that the whole test takes about two minutes.
SCENARIO = autoscale.Scenario(hold_syncs=2, peak_syncs=2, calm_syncs=2)


@pytest.mark.slow
def test_replicas_follow_the_load_within_the_windows_and_no_study_is_split(
    cluster: Cluster, cluster_namespace: str, custom_metrics: None, tmp_path: Path
) -> None:
    s = SCENARIO
    result = autoscale.run(cluster, cluster_namespace, tmp_path, s)
    print(result.summary())  # shown with a failure's report
    assert not result.errors

    # The real HPA controller followed the HPA the operator rendered from spec.autoscaling.
    spec = result.hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (s.min_replicas, s.max_replicas)
    [metric] = spec["metrics"]
    assert metric["pods"]["metric"]["name"] == autoscale.IN_FLIGHT
    assert metric["pods"]["target"]["averageValue"] == str(s.studies_in_flight)
    down = spec["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == s.stabilization_seconds
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": s.period_seconds}]
    # ... it wrote spec.replicas through /scale (its field manager is the
    # controller manager's program: kube-controller-manager in a cluster, our
    # one binary here), on the studies in flight it read.
    manager, subresource = result.replicas_writer
    assert subresource == "scale" and manager in ("kube-controller-manager", "controlplane"), (
        result.replicas_writer
    )
    rescales = [m for r, m in result.hpa_events if r == "SuccessfulRescale"]
    assert any(f"pods metric {autoscale.IN_FLIGHT} above target" in m for m in rescales), (
        result.hpa_events
    )
    assert "FailedRescale" not in [r for r, _ in result.hpa_events], result.hpa_events

    # Never outside [min, max]: the pool sampled every 0.1 s, and every write.
    assert result.samples
    for sample in result.samples:
        assert s.min_replicas <= sample.spec_replicas <= s.max_replicas, sample
        assert sample.status_replicas <= s.max_replicas, sample
    events = result.scale_events()
    assert all(s.min_replicas <= to <= s.max_replicas for _, _, to in events), events

    # Up: to the maximum while 8 senders send, within a bounded number of syncs.
    [(peak_start, _)] = [(t, n) for t, n in result.phases if n == max(s.ramp)]
    reached = min(
        (x.time for x in result.samples if x.spec_replicas == s.max_replicas), default=None
    )
    assert reached is not None, "never scaled to the maximum"
    assert reached <= peak_start + 8 * s.sync_period + 5, (reached, peak_start)
    assert max(x.ready for x in result.samples) == s.max_replicas
    ups = [(t, a, b) for t, a, b in events if b > a]
    assert ups and ups[0][0] < result.marks["load falls"]

    # Down: only once the load fell and the window has passed since the HPA
    # last asked for more, one gateway at a time, one per period.
    downs = [(t, a, b) for t, a, b in events if b < a]
    assert downs, "never scaled down"
    assert downs[0][0] > result.marks["load falls"], (downs, result.marks)
    for t, _, _ in downs:
        last_up = max((u for u, _, _ in ups if u < t), default=None)
        assert last_up is None or t - last_up >= s.stabilization_seconds - 1, (t, ups)
    assert all(a - b == 1 for _, a, b in downs), downs
    for (t1, a1, b1), (t2, a2, b2) in itertools.pairwise(events):
        if b1 < a1 and b2 < a2:  # two scale-downs in a row (a scale-up between allows more)
            assert t2 - t1 >= s.period_seconds - 0.5, events  # 0.5: seen by a watch, not written
    # ... and the controller said so meanwhile: its window held a scale-down back.
    assert any(x.stabilized and x.time < downs[0][0] for x in result.samples)

    # The end: back at the minimum once the load stopped, and staying there.
    assert "settled back at min" in result.marks
    assert result.samples[-1].spec_replicas == s.min_replicas
    assert result.samples[-1].ready == s.min_replicas
    # The operator read the HPA's conditions as the controller wrote them: it scales.
    [degraded] = [c for c in result.conditions if c["type"] == "Degraded"]
    assert degraded["status"] == "False", degraded

    # Throughout: nothing split, failed, unanswered or lost. Counted, not
    # listed: UIDs stay out of logs and reports, failed ones' included.
    outcome = result.outcome
    assert len(outcome.studies) >= 15
    failed, unanswered = len(outcome.failed), len(outcome.unanswered)
    assert (failed, unanswered) == (0, 0), set(outcome.failed.values())
    unacknowledged = sum(
        1 for study in outcome.studies if set(study.sop_instance_uids) - outcome.acknowledged.keys()
    )
    split, lost = len(result.split_studies()), len(result.lost_instances())
    assert (unacknowledged, split, lost) == (0, 0, 0), result.summary()
    assert result.handovers.get("forced", 0) == 0, result.handovers
