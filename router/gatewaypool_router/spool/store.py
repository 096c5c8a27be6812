"""The spool's files: how an instance becomes durable, and what a restart finds.

Layout under ``--spool-dir``::

    tmp/<pid>-<n>.part            an instance being received (never acknowledged)
    queue/<bucket>/<seq>.inst     acknowledged, waiting to be forwarded, FIFO by <seq>
    sending/<seq>                 a send of <seq> began (a later send is a resend)
    refused/<seq>.inst, .json     refused for good by a gateway, with its status
    state                         "<last seq> <bytes>": under flock(2), shared by all processes

An entry file holds the data set exactly as received, then a trailer: the
metadata as JSON (the C-STORE command, the context, bucket, study, when it
was spooled), its length (4 bytes, big-endian) and `MAGIC`. A file without
a valid trailer is no entry.

Commit (what comes before Success, :meth:`SpoolWriter.commit`): trailer
written, ``fsync(file)``; then under the state lock the size limit is
checked, the next sequence number taken and the file renamed into its
bucket's folder; then ``fsync(bucket folder)`` (and ``fsync(queue)`` when
the folder is new). Only then is the sender answered. A crash before the
rename leaves a ``tmp/`` file, deleted by :func:`recover` at the next start;
a crash after it leaves an entry that is forwarded then. Taking the sequence
number and renaming under one lock makes the visible entries a prefix of the
sequence: a reader that sees ``<seq>`` sees every earlier commit too.

Deleting a forwarded entry is not fsynced: after a power loss it may come
back and be sent again, which at-least-once delivery allows (and counts).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The last bytes of every committed entry file.
MAGIC = b"GWPSPL1\n"
_TRAILER = struct.Struct(">L8s")
_MAX_META = 1 << 20
_SEQ_DIGITS = 20


class SpoolFullError(Exception):
    """The spool has no room for this instance (``--spool-max-bytes``)."""


class EntryError(ValueError):
    """A file in the queue that is no committed entry (cut short, or not ours)."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What forwarding an entry needs besides its data set."""

    bucket: int
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    command: bytes
    message_id: int
    calling_ae: str
    spooled_at: float = 0.0

    def to_json(self) -> bytes:
        data = {
            "bucket": self.bucket,
            "studyUid": self.study_uid,
            "sopClassUid": self.sop_class_uid,
            "sopInstanceUid": self.sop_instance_uid,
            "transferSyntax": self.transfer_syntax,
            "command": self.command.hex(),
            "messageId": self.message_id,
            "callingAe": self.calling_ae,
            "spooledAt": self.spooled_at,
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Meta:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            bucket=int(data["bucket"]),
            study_uid=str(data["studyUid"]),
            sop_class_uid=str(data["sopClassUid"]),
            sop_instance_uid=str(data["sopInstanceUid"]),
            transfer_syntax=str(data["transferSyntax"]),
            command=bytes.fromhex(data["command"]),
            message_id=int(data["messageId"]),
            calling_ae=str(data["callingAe"]),
            spooled_at=float(data["spooledAt"]),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed instance: where it is, its data set's size, its metadata."""

    seq: int
    path: Path
    size: int
    file_size: int
    meta: Meta


def entry_name(seq: int) -> str:
    return f"{seq:0{_SEQ_DIGITS}d}.inst"


def seq_of(name: str) -> int | None:
    """The sequence number an entry file's name carries, or None for any other name."""
    stem, dot, ext = name.partition(".")
    if ext != "inst" or not dot or len(stem) != _SEQ_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def read_entry(path: Path) -> Entry:
    """Read an entry's trailer; `EntryError` if the file is no committed entry."""
    seq = seq_of(path.name)
    if seq is None:
        raise EntryError(f"{path.name}: not an entry name")
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        if file_size < _TRAILER.size:
            raise EntryError(f"{path.name}: {file_size} bytes, no trailer")
        file.seek(file_size - _TRAILER.size)
        length, magic = _TRAILER.unpack(file.read(_TRAILER.size))
        if magic != MAGIC or length > min(_MAX_META, file_size - _TRAILER.size):
            raise EntryError(f"{path.name}: no valid trailer")
        size = file_size - _TRAILER.size - length
        file.seek(size)
        try:
            meta = Meta.from_json(file.read(length))
        except (ValueError, KeyError, TypeError) as exc:
            raise EntryError(f"{path.name}: unreadable metadata ({exc})") from None
    return Entry(seq=seq, path=path, size=size, file_size=file_size, meta=meta)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolStore:
    """One process's handle on the spool folder (every worker and the forwarder have one)."""

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.sending = root / "sending"
        self.refused = root / "refused"
        self._state_path = root / "state"
        self._names = itertools.count()
        self._pid = os.getpid()
        for folder in (self.tmp, self.queue, self.sending, self.refused):
            folder.mkdir(parents=True, exist_ok=True)
        self._state_path.touch(exist_ok=True)

    # -- the shared state: last sequence number and bytes held ---------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[list[int]]:
        """Hold the state lock; yields ``[last_seq, bytes]``, written back when changed."""
        fd = os.open(self._state_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = _parse_state(os.pread(fd, 64, 0))
            before = list(state)
            yield state
            if state != before:
                text = f"{state[0]} {state[1]}\n".encode()
                os.pwrite(fd, text.ljust(48), 0)
        finally:
            os.close(fd)  # closing drops the lock

    def held_bytes(self) -> int:
        """Bytes of the entries waiting and refused, as the shared state counts them."""
        with open(self._state_path, "rb") as file:
            return _parse_state(file.read(64))[1]

    def full(self) -> bool:
        return self.max_bytes is not None and self.held_bytes() >= self.max_bytes

    def waiting(self, bucket: int) -> bool:
        """Whether `bucket` has entries waiting (its folder exists and is not empty)."""
        try:
            with os.scandir(self.queue / str(bucket)) as entries:
                return any(True for _ in entries)
        except FileNotFoundError:
            return False

    # -- writing ---------------------------------------------------------------

    def writer(self) -> SpoolWriter:
        """A new instance file in ``tmp/``; commit or discard it."""
        if os.getpid() != self._pid:  # never the case with spawn, but names must not clash
            self._pid, self._names = os.getpid(), itertools.count()
        path = self.tmp / f"{self._pid}-{next(self._names)}.part"
        return SpoolWriter(self, path)

    def commit(self, path: Path, size: int, bucket: int) -> int:
        """Rename a written, fsynced file into the queue (see the module docstring)."""
        folder = self.queue / str(bucket)
        with self.locked() as state:
            if self.max_bytes is not None and state[1] + size > self.max_bytes:
                raise SpoolFullError(f"{state[1]} + {size} bytes exceed {self.max_bytes}")
            created = not folder.is_dir()
            if created:
                folder.mkdir(exist_ok=True)
            seq = state[0] + 1
            os.rename(path, folder / entry_name(seq))
            state[0], state[1] = seq, state[1] + size
        fsync_dir(folder)
        if created:
            fsync_dir(self.queue)
        return seq

    def forget(self, entry: Entry) -> None:
        """Delete a forwarded entry (and its folder once empty); not fsynced."""
        with self.locked() as state:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            state[1] = max(0, state[1] - entry.file_size)
            with contextlib.suppress(OSError):
                entry.path.parent.rmdir()  # fails while not empty: fine
        with contextlib.suppress(FileNotFoundError):
            (self.sending / str(entry.seq)).unlink()

    def refuse(self, entry: Entry, *, status: int, reason: str) -> Path:
        """Move an entry aside with the status a gateway refused it with."""
        target = self.refused / entry.path.name
        note = {"status": status, "reason": reason, "refusedAt": time.time()}
        note_path = target.with_suffix(".json")
        note_path.write_text(json.dumps(note, sort_keys=True) + "\n")
        with self.locked():
            os.rename(entry.path, target)
            with contextlib.suppress(OSError):
                entry.path.parent.rmdir()
        fsync_dir(self.refused)
        with contextlib.suppress(FileNotFoundError):
            (self.sending / str(entry.seq)).unlink()
        return target

    def sent_before(self, seq: int) -> None:
        """Note that entry `seq` may be on its gateway already (its send failed midway)."""
        (self.sending / str(seq)).touch()

    def mark_sending(self, entry: Entry) -> bool:
        """Note that a send of `entry` begins; True if one began before (a resend)."""
        marker = self.sending / str(entry.seq)
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return True
        return False


class SpoolWriter:
    """One instance's file in ``tmp/``: written as it arrives, then committed or discarded."""

    def __init__(self, store: SpoolStore, path: Path) -> None:
        self._store = store
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def commit(self, meta: Meta) -> int:
        """Make the instance durable and queue it; its sequence number.

        Raises `SpoolFullError` (the file is discarded) or OSError.
        """
        assert self._fd is not None
        try:
            raw = meta.to_json()
            self.write(raw)
            self.write(_TRAILER.pack(len(raw), MAGIC))
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            return self._store.commit(self.path, self.size, meta.bucket)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _parse_state(raw: bytes) -> list[int]:
    parts = raw.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return [0, 0]
    return [int(parts[0]), int(parts[1])]


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a start finds in the spool folder."""

    entries: list[Entry]
    refused: dict[Path, int]
    discarded: int
    unreadable: int


def recover(store: SpoolStore) -> Recovered:
    """Clean up after a crash and read what waits; call before any process writes.

    Files in ``tmp/`` were never acknowledged: deleted. A file in the queue
    without a valid trailer cannot have been renamed there by a commit
    (fsync came first); should one appear anyway, it is moved aside as
    refused with status 0 and reason ``unreadable``, never dropped.
    """
    discarded = 0
    for part in store.tmp.iterdir():
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            discarded += 1
    entries: list[Entry] = []
    unreadable = 0
    for folder in store.queue.iterdir():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                entries.append(read_entry(path))
            except (EntryError, OSError) as exc:
                unreadable += 1
                note = {"status": 0, "reason": f"unreadable: {exc}", "refusedAt": time.time()}
                target = store.refused / (path.name if seq_of(path.name) else path.name + ".inst")
                target.with_suffix(".json").write_text(json.dumps(note) + "\n")
                os.rename(path, target)
        with contextlib.suppress(OSError):
            folder.rmdir()
    refused = {
        path: path.stat().st_size for path in store.refused.iterdir() if path.suffix == ".inst"
    }
    live = {str(entry.seq) for entry in entries}
    for marker in store.sending.iterdir():
        if marker.name not in live:
            marker.unlink()
    entries.sort(key=lambda entry: entry.seq)
    seqs = [entry.seq for entry in entries] + [seq_of(p.name) or 0 for p in refused]
    with store.locked() as state:
        state[0] = max([state[0], *seqs])
        state[1] = sum(entry.file_size for entry in entries) + sum(refused.values())
    return Recovered(entries=entries, refused=refused, discarded=discarded, unreadable=unreadable)
