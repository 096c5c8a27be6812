"""Structured logging: one JSON object per line, fields as keys.

Log lines carry identifiers needed to operate the system (AE titles, peer
addresses, study and SOP instance UIDs, status codes) and never patient
attributes: no call site passes PatientName, PatientID or birth dates, and
``log_event`` refuses field names that look like them, so a careless
addition fails loudly in tests instead of leaking into a log store.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

_FORBIDDEN = ("patient", "birth")


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with structured ``fields``.

    Parameters
    ----------
    logger : logging.Logger
        The module's logger.
    level : int
        A :mod:`logging` level.
    event : str
        A dotted event name, stable for log queries (``association.released``).
    **fields
        Values rendered as JSON (non-JSON values through ``str``).
    """
    for name in fields:
        lowered = name.lower()
        if any(word in lowered for word in _FORBIDDEN):
            raise ValueError(f"log field {name!r} looks like patient data")
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """Render records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Render records as ``time level event key=value ...`` for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{stamp} {record.levelname.lower():7s} {record.getMessage()}"]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(f"{key}={value}" for key, value in fields.items())
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Context(logging.Filter):
    """Put fixed fields (a worker's index) on every record, ahead of the event's own."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        super().__init__()
        self._context = dict(context)

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {**self._context, **(fields if isinstance(fields, dict) else {})}
        return True


def configure(
    *, level: str = "info", fmt: str = "json", context: Mapping[str, Any] | None = None
) -> None:
    """Configure the root logger for a GatewayPool process (stderr).

    Parameters
    ----------
    context
        Fields written on every line, such as the worker a router process
        is: the workers of one replica share its stderr, and a line must
        say which of them wrote it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if context:
        handler.addFilter(_Context(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom is chatty at INFO and may print dataset summaries at DEBUG.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pynetdicom.utils logs a whole traceback for every AE title that is not
    # ASCII before it decodes it another way: one hostile connection, one
    # traceback. The router logs its own line for what it refuses.
    logging.getLogger("pynetdicom.utils").setLevel(logging.CRITICAL)
