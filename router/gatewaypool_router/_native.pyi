"""Types of the Rust extension (router/native): see gatewaypool_router.scanner."""

from collections.abc import Callable
from typing import Final

MAX_STUDY_UID_BYTES: Final[int]
MAX_NESTING_DEPTH: Final[int]

class Scanner:
    def __new__(
        cls, encoding: int, may_be_sequence: Callable[[int], bool], transfer_syntax: str
    ) -> Scanner: ...
    @property
    def state_code(self) -> int: ...
    @property
    def decided(self) -> bool: ...
    @property
    def study_uid(self) -> str | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def offending(self) -> int | None: ...
    @property
    def bytes_seen(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def deflated(self) -> bool: ...
    @property
    def skippable(self) -> int: ...
    @property
    def transfer_syntax(self) -> str: ...
    def skip(self, size: int) -> None: ...
    def feed(self, fragment: bytes | bytearray | memoryview) -> None: ...
    def finish(self) -> bool: ...

def splice_move(
    source: int,
    sink: int,
    pipe_read: int,
    pipe_write: int,
    capacity: int,
    size: int,
    more: bool,
    source_timeout: float | None,
    sink_timeout: float | None,
    on_wait: Callable[[bool], None] | None,
) -> tuple[int, int, int]: ...
def stream_rest(
    scanner: Scanner,
    link: tuple[int, int, int, int, int, int, float | None, float | None],
    context_id: int,
    control: int,
    size: int,
    prefix: bytes,
    on_wait: Callable[[bool, int, int], None],
) -> tuple[int, int, int, int]: ...
