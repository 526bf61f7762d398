"""The gateway's own log: one JSON object per line on stderr, for a SIEM.

Built with python-json-logger, so every field is escaped by a JSON encoder (a quote or a
newline in a message, or in a token header an attacker chose, stays inside its string and
cannot start a forged line); every ``extra={...}`` field is kept as a field of its own;
``time`` is RFC 3339 in UTC.  uvicorn's loggers go through the same handler, and so do stdio
upstreams' stderr lines (``upstream_stderr``).  stdout is never used (on ``intentgate stdio``
it carries the protocol).

The encoder escapes control characters below U+0020; the serializer also escapes DEL, the C1
controls (U+0085 is a line break to Python's ``str.splitlines``, U+009B a terminal's CSI) and
U+2028/U+2029 (line breaks to JavaScript and some log readers), so that no reader splits a
record in two and no terminal interprets an escape sequence from a logged string.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_logging"]

# only ever inside JSON strings (the encoder's own output is ASCII punctuation): escaping them
# there keeps the document and its meaning
_LINE_BREAKING = re.compile("[\x7f-\x9f\u2028\u2029]")


def _dumps(obj: Any, **kwargs: Any) -> str:
    return _LINE_BREAKING.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, **kwargs))


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
                                    json_default=str, json_ensure_ascii=False, json_serializer=_dumps))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # the W3C trace context parsers warn of each malformed value, quoting it: a line of the
    # agent's choosing per request (the MCP SDK parses every request's _meta, whatever the
    # config). The value is ignored either way; only their errors are logged.
    otel = logging.getLogger("opentelemetry.trace")
    otel.setLevel(max(logging.ERROR, root.level))
