"""The gateway's own log: one JSON object per line on stderr, for a SIEM.

Built with python-json-logger, so every field is escaped by a JSON encoder (a quote or a
newline in a message, or in a token header an attacker chose, stays inside its string and
cannot start a forged line); every ``extra={...}`` field is kept as a field of its own;
``time`` is RFC 3339 in UTC.  uvicorn's loggers go through the same handler.  stdout is never
used (on ``intentgate stdio`` it carries the protocol).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_logging"]


class _Formatter(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name


def configure_logging(level: str = "WARNING") -> None:
    """Every logger of the process to stderr as JSON lines, at ``level`` (and uvicorn's too)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("{message}", style="{", rename_fields={"message": "msg"},
                                    json_default=str, json_ensure_ascii=False))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
