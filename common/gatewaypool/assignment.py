"""Which gateway owns which bucket: balanced, and moving as little as possible.

Every bucket that changes owner is a handover the operator has to drain (a
study in flight in that bucket must finish on its old gateway first), so an
assignment should move no bucket it does not have to. These functions decide
owners as plain data; the operator publishes them in the bucket map, and the
routers only read the map, so every replica agrees by construction.

Gateways are numbered ``0 .. N - 1`` like the pods of a StatefulSet, whose
scale-down removes the highest ordinals. `rebalance` therefore takes any owner
index ``>= N`` to be a gateway that is leaving.

The bound on scaling up: going from ``N`` to ``N + k`` gateways (from a
balanced assignment) moves exactly the buckets the newcomers need to reach
their share, ``B // (N + k)`` each or one more, and no survivor gains or
trades a bucket. That is about ``k / (N + k)`` of the ``B`` buckets and never
more than ``ceil(k * B / (N + k))``. Going from 3 to 4 gateways with 4096
buckets moves 1024 buckets, a quarter; a ``% N`` scheme would move three
quarters of them. Scaling down moves the leaving gateways' buckets and
nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["initial_owners", "moved_buckets", "rebalance"]


def initial_owners(buckets: int, gateway_count: int) -> list[int]:
    """Return the owners of a new pool: bucket ``b`` to gateway ``b % gateway_count``.

    Round robin is balanced (counts differ by at most one, the extra buckets
    going to the lowest indices), which is exactly what `rebalance` keeps
    unchanged, so a fresh pool needs no handover.

    Parameters
    ----------
    buckets
        The pool's bucket count, at least 1.
    gateway_count
        Number of gateways, ``1 .. buckets``.

    Returns
    -------
    list[int]
        ``owners[b]`` is the index of the gateway that owns bucket ``b``.

    Raises
    ------
    ValueError
        If `buckets` is less than 1 or `gateway_count` is outside ``1 .. buckets``.
    """
    _check_counts(buckets, gateway_count)
    return [bucket % gateway_count for bucket in range(buckets)]


def rebalance(owners: Sequence[int], gateway_count: int) -> list[int]:
    """Return owners over ``gateway_count`` gateways, balanced, moving the fewest buckets.

    Every gateway gets ``B // N`` or ``B // N + 1`` buckets (``B`` buckets,
    ``N`` gateways). Among all such balanced assignments the result moves
    the fewest buckets:

    - the buckets of leaving gateways (index ``>= N``) must move;
    - the ``B % N`` larger shares go to the gateways that hold the most now
      (ties to the lower index), because a larger share is only worth a
      bucket to a gateway that already holds that many;
    - a gateway keeps as many of its own buckets as its share allows, and
      gives up the rest; a gateway below its share only receives.

    The choice among equally small moves is fixed, so the operator computes
    the same map every time it reconciles: an over-full gateway gives up its
    highest-numbered buckets, and the buckets given up are handed out in
    ascending bucket order to the under-full gateways in ascending index
    order.

    Parameters
    ----------
    owners
        Current owner index of every bucket. Indices ``>= gateway_count``
        are gateways that are leaving.
    gateway_count
        Number of gateways after the change, ``1 .. len(owners)``.

    Returns
    -------
    list[int]
        The new owners, a fresh list (`owners` is not modified).

    Raises
    ------
    ValueError
        If `gateway_count` is outside ``1 .. len(owners)``, or an owner index
        is negative.
    """
    buckets = len(owners)
    _check_counts(buckets, gateway_count)
    held: list[list[int]] = [[] for _ in range(gateway_count)]
    released: list[int] = []
    for bucket, owner in enumerate(owners):
        if owner < 0:
            raise ValueError(f"owners[{bucket}]: {owner!r} is not a gateway index (>= 0)")
        if owner < gateway_count:
            held[owner].append(bucket)  # ascending, as enumerate goes
        else:
            released.append(bucket)
    targets = _targets([len(mine) for mine in held], buckets)
    for gateway, mine in enumerate(held):
        surplus = len(mine) - targets[gateway]
        if surplus > 0:
            released.extend(mine[-surplus:])
    released.sort()
    new_owners = list(owners)
    handed_out = iter(released)
    for gateway, mine in enumerate(held):
        for _ in range(targets[gateway] - len(mine)):
            new_owners[next(handed_out)] = gateway
    return new_owners


def moved_buckets(old: Sequence[int], new: Sequence[int]) -> list[int]:
    """Return the buckets whose owner differs between two assignments, ascending.

    These are the buckets the operator has to hand over.

    Raises
    ------
    ValueError
        If the two assignments do not have the same number of buckets.
    """
    if len(old) != len(new):
        raise ValueError(f"assignments differ in size: {len(old)} and {len(new)} buckets")
    return [bucket for bucket, (was, now) in enumerate(zip(old, new, strict=True)) if was != now]


def _targets(counts: Sequence[int], buckets: int) -> list[int]:
    """Return each gateway's share: ``B // N``, plus one for the ``B % N`` fullest."""
    share, extra = divmod(buckets, len(counts))
    targets = [share] * len(counts)
    fullest_first = sorted(range(len(counts)), key=lambda gateway: (-counts[gateway], gateway))
    for gateway in fullest_first[:extra]:
        targets[gateway] += 1
    return targets


def _check_counts(buckets: int, gateway_count: int) -> None:
    if buckets < 1:
        raise ValueError(f"buckets: {buckets!r} is not a bucket count (at least 1)")
    if not 1 <= gateway_count <= buckets:
        raise ValueError(
            f"gateway_count: {gateway_count!r} is not in 1..{buckets} "
            "(every gateway needs at least one bucket)"
        )
