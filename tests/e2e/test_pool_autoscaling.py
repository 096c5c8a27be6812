"""An autoscaled pool follows a load that rises from 1 to 8 senders and falls, splitting nothing.

Everything real but the cluster (see :mod:`support.autoscale`): the operator
renders the HPA from ``spec.autoscaling``; a stand-in for Kubernetes' HPA
controller (:mod:`support.hpa_controller`, the documented autoscaling/v2
algorithm, its sync period compressed from 15 s to 1 s) reads that HPA and
the routers' real ``/metrics``, and writes replicas through the pool's
``/scale`` subresource; the kubelet harness starts gateways late and makes
them Ready later; senders send whole studies over several associations.

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
from support.hpa_algorithm import parse_hpa
from support.kubeemu import KubeEmulator

#: Short holds, so that the whole test takes about 70 s.
SCENARIO = autoscale.Scenario(hold_syncs=2, peak_syncs=4, calm_syncs=4)


@pytest.mark.slow
def test_replicas_follow_the_load_within_the_windows_and_no_study_is_split(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    s = SCENARIO
    result = autoscale.run(kube, tmp_path, s)
    print(result.summary())  # shown with a failure's report
    assert not result.errors

    # The stand-in followed the HPA the operator rendered from spec.autoscaling.
    hpa = parse_hpa(result.hpa)
    assert (hpa.min_replicas, hpa.max_replicas) == (s.min_replicas, s.max_replicas)
    assert hpa.target == s.studies_in_flight
    assert hpa.scale_down.window == s.stabilization_seconds
    [policy] = hpa.scale_down.policies
    assert (policy.kind, policy.value, policy.period) == ("Pods", 1, s.period_seconds)

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

    # Down: only once the window has passed since the load fell, one per period.
    downs = [(t, a, b) for t, a, b in events if b < a]
    assert downs, "never scaled down"
    assert downs[0][0] >= result.marks["load falls"] + s.stabilization_seconds - s.sync_period, (
        downs,
        result.marks,
    )
    assert all(a - b == 1 for _, a, b in downs), downs
    for (t1, a1, b1), (t2, a2, b2) in itertools.pairwise(events):
        if b1 < a1 and b2 < a2:  # two scale-downs in a row (a scale-up between allows more)
            assert t2 - t1 >= s.period_seconds, events
    # ... and the controller's own view agrees: every recommendation of the
    # window before a scale-down asked for no more than it left.
    for sync in result.syncs:
        if sync.wrote and sync.decision.replicas < sync.current:
            window = [
                other.decision.metric_replicas
                for other in result.syncs
                if sync.time - s.stabilization_seconds < other.time <= sync.time
                and other.decision.metric_replicas is not None
            ]
            assert max(window) <= sync.decision.replicas, (sync, window)

    # The end: back at the minimum once the load stopped, and staying there.
    assert "settled back at min" in result.marks
    assert result.samples[-1].spec_replicas == s.min_replicas
    assert result.samples[-1].ready == s.min_replicas
    # The operator read the HPA's conditions as the stand-in wrote them: it scales.
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
