"""The PDU fuzzer's own parts: reproducible cases, and checks that can fail."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import threading
from collections.abc import Iterator

import pytest

from support import fuzzrun, pdufuzz, scanners


def test_a_case_is_a_function_of_seed_and_index() -> None:
    for index in range(40):
        assert pdufuzz.generate(5, index) == pdufuzz.generate(5, index)
    assert pdufuzz.generate(5, 1).stream != pdufuzz.generate(6, 1).stream


def test_every_builder_is_used_and_cases_print_how_to_reproduce_them() -> None:
    cases = [pdufuzz.generate(3, index) for index in range(400)]
    families = {case.kind.split(".")[0] for case in cases}
    assert families >= {"assoc", "first-pdu", "pdata", "pdv", "command", "sequence", "cut"}
    assert {case.ending for case in cases} == set(pdufuzz.ENDINGS)
    line = cases[17].describe()
    assert "seed=3 index=17" in line and cases[17].kind in line
    assert all(case.describe().isprintable() for case in cases)


@pytest.mark.usefixtures("implementation")  # by the Python scanner and the native one
def test_no_prefix_of_a_fuzz_data_set_from_its_safe_cut_on_passes_for_whole() -> None:
    data_set = pdufuzz.make_data_set(random.Random(1), "1.2.3.4", "1.2.3")
    whole = scanners.make(pdufuzz.TRANSFER_SYNTAX)
    whole.feed(data_set.raw)
    assert whole.finish()
    for end in range(data_set.safe_cut, len(data_set.raw)):
        scanner = scanners.make(pdufuzz.TRANSFER_SYNTAX)
        scanner.feed(data_set.raw[:end])
        assert not scanner.finish(), end


def test_check_stored_fails_a_truncated_or_foreign_instance() -> None:
    data = b"\x08\x00\x18\x00" + bytes(200)
    originals = {hashlib.sha256(data).hexdigest(): "1.2.3"}
    assert fuzzrun.check_stored({"1.2.3": data}, originals) == []
    [truncated] = fuzzrun.check_stored({"1.2.3": data[:-2]}, originals)
    assert "partial" in truncated
    [foreign] = fuzzrun.check_stored({"9.9": b"junk"}, originals)
    assert "unknown" in foreign


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A TCP server that reads everything and never answers nor closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        while conn.recv(65536):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()
    listener.close()
    for conn in held:
        conn.close()


def test_run_case_reports_a_peer_that_never_ends_the_connection(
    silent_server: tuple[str, int],
) -> None:
    case = dataclasses.replace(pdufuzz.generate(1, 0), ending="stall")
    result = fuzzrun.run_case(case, *silent_server, deadline=0.3)
    assert result.outcome == "hung"
    assert fuzzrun.check_cases([result], {})[0].startswith("router did not end the connection")
