"""Which bucket a study falls in.

Every router replica, whatever its version, process or platform, must put the
instances of one study in the same bucket, or the study is split between
gateways. The bucket is therefore a pure function of the StudyInstanceUID
bytes and the pool's bucket count, computed with BLAKE2b:

- *Stable.* Python's ``hash()`` of a string is salted per process
  (``PYTHONHASHSEED``), so two replicas would disagree. BLAKE2b is specified
  byte for byte (RFC 7693) and ships with every CPython, so the value is the
  same in every process, on every platform and in every release; the tests
  pin known values so that an accidental change is caught.
- *Well mixed.* UIDs are not random: a vendor's UIDs share a long root
  (``1.2.840.113619.2.55.3.``) and differ in a few trailing digits, often a
  counter. A digit sum or a weak hash maps such near neighbours to near or
  equal values; a cryptographic hash spreads them evenly over the buckets.
- *Cheap.* One BLAKE2b call over some 64 bytes takes well under a
  microsecond, nothing next to receiving an instance.

The 64-bit digest is reduced with ``% buckets``. The modulo bias is at most
``buckets / 2**64``, far below anything measurable.
"""

from __future__ import annotations

import hashlib

__all__ = ["study_bucket", "study_hash"]


def study_hash(study_uid: str) -> int:
    """Return the stable 64-bit hash of a StudyInstanceUID.

    Parameters
    ----------
    study_uid
        The UID as it identifies the study: without the trailing NUL or space
        that pads odd-length values in a dataset. Padding is the caller's to
        strip, because it is an encoding detail, not part of the UID; a padded
        and an unpadded copy of one UID would otherwise land in different
        buckets.

    Returns
    -------
    int
        The first 8 bytes of BLAKE2b of the ASCII bytes, read big-endian:
        an integer in ``0 .. 2**64 - 1``.

    Raises
    ------
    ValueError
        If the UID is empty, or not ASCII (a ``UnicodeEncodeError``). A UID
        that cannot be used is refused, never hashed to some bucket: the
        router answers such an instance with a failure status.
    """
    if not study_uid:
        raise ValueError("StudyInstanceUID is empty; an instance without one cannot be routed")
    digest = hashlib.blake2b(study_uid.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def study_bucket(study_uid: str, buckets: int) -> int:
    """Return the bucket, ``0 .. buckets - 1``, that a study belongs to.

    Parameters
    ----------
    study_uid
        The StudyInstanceUID, stripped of padding (see `study_hash`).
    buckets
        The pool's bucket count. It is fixed for the life of a pool, which is
        what lets this function stay a plain modulo: changing the number of
        gateways changes which gateway owns a bucket (the bucket map), never
        which bucket a study is in.

    Returns
    -------
    int
        ``study_hash(study_uid) % buckets``.

    Raises
    ------
    ValueError
        If `buckets` is less than 1, or the UID is unusable (see `study_hash`).
    """
    if buckets < 1:
        raise ValueError(f"buckets: {buckets!r} is not a bucket count (at least 1)")
    return study_hash(study_uid) % buckets
