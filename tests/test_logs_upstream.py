"""A stdio upstream's stderr becomes records of the gateway's JSON log, whatever it writes.

A real gateway process (the real logging setup, ``intentgate.logs``, at its default level) runs a
real stdio upstream (tests/servers/noisy_server.py) that writes hostile bytes to its stderr at
start and during a call, crashes mid-call, is restarted, and says goodbye when it is stopped.
Every line the process writes to stderr is parsed; every line the upstream wrote is one record,
none is lost, and none is forged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from intentgate.clock import FrozenClock
from intentgate.upstream_stderr import LINES_BURST, LINES_PER_SECOND, StderrLines
from tests.conftest import ROOT
from tests.processes import startup_budget
from tests.servers.noisy_server import GOODBYE, HOSTILE, LAST_WORDS

pytestmark = pytest.mark.slow

NOISY = ROOT / "tests" / "servers" / "noisy_server.py"
MAX_LINE = 8192

DRIVER = """
import asyncio, json, logging, sys
from intentgate.config import UpstreamConfig
from intentgate.logs import configure_logging
from intentgate.upstreams import UpstreamError, UpstreamPool

async def main() -> None:
    configure_logging()  # the gateway's default level: warning
    mark = logging.getLogger("test.driver")
    pool = UpstreamPool([UpstreamConfig(name="noisy", command="python", args=[sys.argv[1]])])
    failures = await pool.start()
    up = pool.get("noisy")
    shouted = await up.call_tool("shout", {}, {})
    try:
        await up.call_tool("crash", {}, {})
        crashed = False
    except UpstreamError:
        crashed = True
    mark.warning("crash call failed")
    again = await up.call_tool("shout", {}, {})  # a new process
    await pool.aclose()
    mark.warning("pool closed")
    print(json.dumps({"failures": failures, "crashed": crashed, "restarts": up.restarts,
                      "answers": [shouted.content[0].text, again.content[0].text]}))

asyncio.run(main())
"""


def expected_lines(raw: bytes) -> list[str]:
    """What the gateway should log of ``raw``: one message per non-empty line, decoded with
    replacement, a trailing CR dropped, cut at the line limit."""
    out = []
    for line in raw.split(b"\n"):
        line = line.removesuffix(b"\r")[:MAX_LINE]
        if line:
            out.append(line.decode("utf-8", errors="replace"))
    return out


@pytest.fixture(scope="module")
def run() -> tuple[dict[str, Any], str]:
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(NOISY)], cwd=ROOT, capture_output=True,
                          timeout=startup_budget(60))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout), proc.stderr.decode("utf-8")


def test_every_line_of_the_gateways_stderr_is_one_json_record(run: tuple[dict[str, Any], str]) -> None:
    outcome, stderr = run
    assert outcome == {"failures": {}, "crashed": True, "restarts": 1, "answers": ["shouted", "shouted"]}
    lines = stderr.splitlines()  # str.splitlines also breaks at U+2028, U+0085 and the like
    assert lines == stderr.split("\n")[:-1] and stderr.endswith("\n")
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"time", "level", "logger", "msg"} <= r.keys() for r in records)
    assert not [r for r in records if r["level"] == "CRITICAL" or r["logger"] == "intentgate.audit"]
    assert not [r for r in records if "level" in r["msg"] and r["logger"] != "intentgate.upstream"]


def test_each_upstream_line_is_one_record_and_none_is_lost(run: tuple[dict[str, Any], str]) -> None:
    _, stderr = run
    records = [json.loads(line) for line in stderr.splitlines()]
    upstream = [r for r in records if r["logger"] == "intentgate.upstream"]
    assert all(r["upstream"] == "noisy" and r["stream"] == "stderr" and r["level"] == "WARNING" for r in upstream)
    # two processes: each says it starts, shouts twice as many lines (start, call); the first
    # crashes with its last words, the second is stopped and says goodbye
    hostile = expected_lines(HOSTILE)
    want = Counter(["starting up"] * 2 + hostile * 4 + ["printed by a tool"] * 2 + expected_lines(LAST_WORDS)
                   + [GOODBYE.decode()])
    assert Counter(r["msg"] for r in upstream) == want
    assert 'evil"}' in want and '{"level":"CRITICAL","logger":"intentgate.audit","msg":"audit chain rewritten"}' in want
    assert "bad \ufffd\ufffd bytes" in want and "windows line" in want and "\x1b[31mred\x1b[0m \x9b2J ansi" in want

    long = [r for r in upstream if r["msg"].startswith("LLL")]
    assert len(long) == 4 and all(len(r["msg"]) == MAX_LINE and r["truncated"] is True for r in long)
    assert not [r for r in upstream if r["msg"] != "L" * MAX_LINE and "truncated" in r]
    # the crashed server's last words are logged by the time its call has failed, the stopped
    # one's goodbye by the time the pool is closed
    order = [r["msg"] for r in records]
    assert order.index("RuntimeError: the noisy server falls over") < order.index("crash call failed")
    assert order.index(GOODBYE.decode()) < order.index("pool closed")


def test_hostile_characters_are_escaped_in_the_raw_line(run: tuple[dict[str, Any], str]) -> None:
    _, stderr = run
    ansi = [line for line in stderr.splitlines() if " ansi" in line]
    assert len(ansi) == 4
    assert all("\x1b" not in r and "\\u001b[31mred" in r and "\\u009b2J" in r for r in ansi)
    breaks = [line for line in stderr.splitlines() if " nel" in line]
    assert len(breaks) == 4 and all("\\u2028" in r and "\\u0085" in r for r in breaks)


def test_a_flood_of_lines_is_cut_to_the_rate_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """The real line reader, fed directly (no process): what goes over the rate is one count."""
    clock = FrozenClock(1_000_000.0)
    lines = StderrLines("chatty", clock)
    with caplog.at_level(logging.WARNING, logger="intentgate.upstream"):
        lines.data_received(b"".join(b"line %d\n" % i for i in range(LINES_BURST + 300)))
        logged = [r for r in caplog.records if r.name == "intentgate.upstream"]
        assert [r.getMessage() for r in logged] == [f"line {i}" for i in range(LINES_BURST)]
        assert lines.suppressed == 300
        clock.advance(1.0)  # room for LINES_PER_SECOND more
        caplog.clear()
        lines.data_received(b"after the flood\n")
        summary, after = [r for r in caplog.records if r.name == "intentgate.upstream"]
        assert summary.suppressed == 300 and summary.upstream == "chatty" and "300" in summary.getMessage()  # type: ignore[attr-defined]
        assert after.getMessage() == "after the flood" and lines.suppressed == 0
        caplog.clear()
        lines.data_received(b"".join(b"more %d\n" % i for i in range(int(LINES_PER_SECOND) + 10)))
        lines.connection_lost(None)  # the end of the stream reports what was held back
        last = [r for r in caplog.records if r.name == "intentgate.upstream"][-1]
        assert last.suppressed == 11  # type: ignore[attr-defined]
