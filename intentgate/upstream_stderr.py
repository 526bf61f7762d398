"""A stdio upstream's stderr, read line by line into the gateway's own log.

An MCP server on stdio may write anything to its stderr (the specification leaves it to the
server: debug output, tracebacks, banners).  Inherited, those bytes would land in the
gateway's JSON log as raw text, where a quote, a newline or a line of fake JSON could forge a
record.  Instead each upstream's stderr is a pipe the event loop reads (no thread, no
blocking read); every line becomes one record of the logger ``intentgate.upstream`` with the
line as ``msg`` and the fields ``upstream`` and ``stream: "stderr"``, so the JSON formatter
(``intentgate.logs``) escapes it like any other field.

- Lines are split on ``\\n`` (a trailing ``\\r`` is dropped), decoded as UTF-8 with
  undecodable bytes replaced; empty lines are skipped.
- A line is at most :data:`MAX_LINE_BYTES`: a longer one is logged cut there, with
  ``truncated: true``, and the rest of it is dropped (an upstream cannot make one record of
  unbounded size).
- The records are WARNINGs: the gateway cannot tell a traceback from chatter, and at the
  default level they are seen, as the inherited stderr was.
- An upstream cannot flood the log: each one's lines are logged at most
  :data:`LINES_PER_SECOND` on average, in bursts of up to :data:`LINES_BURST`; the lines over
  that are counted, not logged, and the count is one record (``suppressed: N``) as soon as a
  line may be logged again, or when the upstream's stderr ends.
- Nothing written before the upstream exits is lost: the pipe is read to its end when the
  session closes (bounded by :data:`DRAIN_SECONDS`, for a descendant that kept it open), and
  a crashed server's last lines are logged as soon as it dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client

from .clock import Clock, SystemClock
from .ratelimit import RateLimiter

__all__ = ["DRAIN_SECONDS", "LINES_BURST", "LINES_PER_SECOND", "MAX_LINE_BYTES", "StderrLines", "stdio_transport"]

log = logging.getLogger("intentgate.upstream")

MAX_LINE_BYTES = 8192
DRAIN_SECONDS = 2.0
LINES_PER_SECOND = 50.0  # an upstream's stderr lines logged per second, on average ...
LINES_BURST = 500  # ... and at once


class StderrLines(asyncio.Protocol):
    """Bytes of one upstream's stderr in, one log record per line out."""

    def __init__(self, upstream: str, clock: Clock | None = None) -> None:
        self.upstream = upstream
        self.closed = anyio.Event()
        self._pending = bytearray()
        self._skipping = False  # inside the dropped rest of an over-long line
        self._limit = RateLimiter(LINES_PER_SECOND, LINES_BURST, clock or SystemClock())
        self.suppressed = 0  # lines over the rate not logged since the last record of them

    def data_received(self, data: bytes) -> None:
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end])
            del self._pending[:end + 1]
            if self._skipping:  # the end of a line whose head was logged already
                self._skipping = False
            else:
                self._emit(line)
        if self._skipping:
            self._pending.clear()
        elif len(self._pending) > MAX_LINE_BYTES:  # no end in sight: log the head now, drop the rest
            self._emit(bytes(self._pending))
            self._pending.clear()
            self._skipping = True

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost flushes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pending and not self._skipping:
            self._emit(bytes(self._pending))  # a last line without its newline
        self._pending.clear()
        self._report_suppressed()
        self.closed.set()

    def _emit(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return
        if not self._limit.allow(self.upstream):
            self.suppressed += 1
            return
        self._report_suppressed()
        extra: dict[str, Any] = {"upstream": self.upstream, "stream": "stderr"}
        if len(raw) > MAX_LINE_BYTES:
            raw = raw[:MAX_LINE_BYTES]
            extra["truncated"] = True
        log.warning("%s", raw.decode("utf-8", errors="replace"), extra=extra)

    def _report_suppressed(self) -> None:
        if self.suppressed:
            log.warning("%d stderr lines of upstream %s were not logged (over %g lines/s)", self.suppressed,
                        self.upstream, LINES_PER_SECOND,
                        extra={"upstream": self.upstream, "stream": "stderr", "suppressed": self.suppressed})
            self.suppressed = 0


@asynccontextmanager
async def stdio_transport(params: StdioServerParameters, upstream: str) -> AsyncIterator[Any]:
    """The SDK's stdio transport for ``params``, with the server's stderr logged as ``upstream``'s.

    The write end of the pipe is the server's fd 2; the gateway's copy of it is closed as
    soon as the server runs, so the read end sees its end when the server (and whatever it
    started) exits.
    """
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    errlog = os.fdopen(write_fd, "w", encoding="utf-8")
    try:
        transport, lines = await asyncio.get_running_loop().connect_read_pipe(lambda: StderrLines(upstream), reader)
    except BaseException:
        reader.close()
        errlog.close()
        raise
    try:
        async with stdio_client(params, errlog=errlog) as streams:
            errlog.close()  # the server holds its own copy
            yield streams
    finally:
        errlog.close()
        # read what the server wrote up to its exit; shielded, so that a cancelled session
        # still logs its server's last words
        with anyio.move_on_after(DRAIN_SECONDS, shield=True):
            await lines.closed.wait()
        transport.close()
