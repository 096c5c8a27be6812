"""ReactorGate: the pause that pynetdicom's own checkpoint only hopes for."""

from __future__ import annotations

import threading

from gatewaypool_local.scu import ReactorGate


def test_an_open_gate_lets_the_reactor_through() -> None:
    gate = ReactorGate()
    assert gate.is_set()
    assert gate.wait(timeout=0) is True


def test_pause_returns_only_once_the_reactor_waits_at_the_closed_gate() -> None:
    gate = ReactorGate()
    passed = threading.Event()
    reactor_may_go = threading.Event()

    def reactor() -> None:
        reactor_may_go.wait()
        gate.wait()
        passed.set()

    thread = threading.Thread(target=reactor, daemon=True)
    thread.start()
    # The reactor has not reached the gate yet: a short pause times out...
    assert gate.pause(timeout=0.05) is False
    assert not gate.is_set()
    # ...and once it arrives, the pause confirms it is held there.
    reactor_may_go.set()
    assert gate.pause(timeout=10) is True
    assert not passed.is_set()
    gate.set()
    assert passed.wait(timeout=10)
    thread.join(timeout=10)


def test_a_waiter_times_out_at_a_closed_gate() -> None:
    gate = ReactorGate()
    gate.clear()
    assert gate.wait(timeout=0.01) is False
    gate.set()
    assert gate.wait(timeout=0) is True
