"""The reviewer web UI in a real browser: Debian's Chromium, headless, driven by Playwright,
against `intentgate serve` as a subprocess with real upstream tool servers and a real MCP
agent over Streamable HTTP.

The agent walks refund-order up to a refund the policy holds; a reviewer signs in, filters the
inbox to the held call, opens it, approves it in the approvals queue; the agent's identical
retry then goes through to the tool server.

Screenshots of the main pages (overview, inbox, decision, approvals, grants) are saved as CI
artefacts under ``$INTENTGATE_ARTIFACTS/screenshots`` (default ``artifacts/screenshots`` in
the checkout; `.ci/run` says where), and ``failure.png`` of the page a failing step was on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

import pytest

from intentgate.keys import KeySet
from intentgate.review import AdminTokenIssuer
from tests.test_front_http import agent_token, gateway, mcp_client  # noqa: F401
from tests.test_front_stdio import PARAMS, SUPPORT
from tests.tasks import grant_args

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
HELD = {"order_id": "ORD-7", "amount": 1800, "currency": "EUR"}
STEP_TIMEOUT_MS = 15_000
TEST_TIMEOUT_S = 120
SCREENSHOTS = ("overview", "inbox", "decision", "approvals", "grants")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def screenshot_dir() -> Path:
    """Where the screenshots go: ``$INTENTGATE_ARTIFACTS/screenshots``, else ``artifacts/screenshots``
    in the checkout (git ignores it)."""
    root = os.environ.get("INTENTGATE_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts"
    out = Path(root) / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for name in (*SCREENSHOTS, "failure"):  # never pass on a picture an earlier run left
        (out / f"{name}.png").unlink(missing_ok=True)
    return out


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, from its IHDR chunk; fails on anything else."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _no_browser(why: str) -> None:
    """Fail in CI (where .ci/run installs Chromium), skip elsewhere: never a silent pass."""
    message = f"{why}: the browser test cannot run (CI installs it: apt-get install -y chromium)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        _no_browser(f"no Chromium at {CHROMIUM}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM


async def test_reviewer_approves_a_held_refund_in_the_browser(gateway, chromium: Path) -> None:  # noqa: F811
    from playwright.async_api import async_playwright, expect

    base, data_dir = gateway
    admin = AdminTokenIssuer(KeySet.open_or_create(data_dir / "keys" / "admin")).mint("carol", 600)
    async with asyncio.timeout(TEST_TIMEOUT_S), mcp_client(base, agent_token(data_dir)) as agent:
        # the agent: read the ticket, look the order up, ask for a refund the policy holds
        r = await agent.call_tool("intentgate__begin_task", grant_args(data_dir, SUPPORT, "refund-order", PARAMS,
                                                                       "customer asked for a refund"))
        assert not r.is_error, r.content
        task = r.structured_content["task"]

        def meta(step: str) -> dict[str, str]:
            return {"intentgate/task": task, "intentgate/step": step}

        for tool, args, step in [("tickets__get_ticket", {"ticket_id": "TCK-1"}, "read_ticket"),
                                 ("orders__get_order", {"order_id": "ORD-7"}, "lookup")]:
            r = await agent.call_tool(tool, args, meta=meta(step))
            assert not r.is_error, r.content
        r = await agent.call_tool("payments__refund", HELD, meta=meta("refund"))
        assert r.is_error and r.structured_content["outcome"] == "hold", r.structured_content
        held_decision, approval = r.structured_content["decision_id"], r.structured_content["approval_id"]
        assert approval

        # the reviewer, in Chromium
        shots = screenshot_dir()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(chromium), headless=True)
            page = await browser.new_page(viewport={"width": 1400, "height": 900})

            async def screenshot(name: str) -> None:
                await page.screenshot(path=shots / f"{name}.png", full_page=True)

            try:
                page.set_default_timeout(STEP_TIMEOUT_MS)
                await page.goto(f"{base}/ui/decisions")
                await expect(page).to_have_url(f"{base}/ui/login?next=%2Fui%2Fdecisions")
                await page.fill("#token", agent_token(data_dir))  # an agent's token is refused
                await page.click("button:has-text('Sign in')")
                await expect(page.locator("[role=alert]")).to_contain_text("agent's workload token")
                await page.fill("#token", admin)
                await page.click("button:has-text('Sign in')")
                await expect(page).to_have_url(f"{base}/ui/decisions")
                await expect(page.locator("header .who")).to_contain_text("carol")

                # the overview: the last 24h of the agent's calls, the held refund waiting for a reviewer
                await page.click("nav >> text=Overview")
                await expect(page).to_have_url(f"{base}/ui/overview")
                await expect(page.locator(".total-card.hold .n")).to_have_text("1")
                await expect(page.locator(".total-card.deny .n")).to_have_text("0")
                await expect(page.locator("svg.timeline g.series.hold rect")).to_have_count(1)
                await expect(page.locator("svg.timeline g.series.deny rect")).to_have_count(0)
                await expect(page.locator("#top-tools tr[data-name='payments.refund'] td.total")).to_have_text("1")
                await expect(page.locator("#waiting-approvals")).to_contain_text(held_decision)
                await screenshot("overview")
                await page.select_option("select[name=range]", "1h")
                await page.click("button:has-text('Show')")
                await expect(page).to_have_url(f"{base}/ui/overview?range=1h&since=&until=&refresh=0")
                await expect(page.locator(".total-card.hold .n")).to_have_text("1")
                await page.goto(f"{base}/ui/overview?since=yesterday")  # not a date: said in words
                await expect(page.locator("[role=alert]")).to_contain_text("“yesterday” is not a date and time")
                await page.click("nav >> text=Overview")
                await page.click("svg.timeline g.series.hold a")  # the bar: that bucket's held calls
                await expect(page).to_have_url(re.compile(r"/ui/decisions\?outcome=hold&since=[^&]+&until="))
                await expect(page.locator("table.decisions tbody tr")).to_have_count(1)
                await expect(page.locator("table.decisions tbody tr").first).to_contain_text(held_decision)
                await page.click("nav >> text=Inbox")

                # filter the inbox to the held refund and open it
                await page.select_option("select[name=outcome]", "hold")
                await page.fill("input[name=tool]", "payments.refund")
                await page.click("button:has-text('Filter')")
                rows = page.locator("table.decisions tbody tr")
                await expect(rows).to_have_count(1)
                await expect(rows.first).to_contain_text("policy_hold")
                await expect(rows.first.locator(".reason-title")).to_have_text("Large refund")  # the rule's METADATA
                await screenshot("inbox")
                await page.click(f"a:has-text('{held_decision}')")
                await expect(page).to_have_url(f"{base}/ui/decisions/{held_decision}")
                await expect(page.locator(".explanation")).to_contain_text("held for a reviewer's approval")
                attempted = page.locator("svg.graph g.node.attempted.hold[data-step=refund]")
                await expect(attempted).to_be_visible()
                await expect(page.locator("svg.graph g.node.taken")).to_have_count(2)  # read_ticket, lookup
                await screenshot("decision")

                # approve it in the queue
                await page.click("nav >> text=Approvals")
                await expect(page).to_have_url(f"{base}/ui/approvals")
                row = page.locator(f"tr#{approval}")
                await screenshot("approvals")
                await row.locator("input[name=note]").fill("checked with the customer")
                await row.locator("button:has-text('Approve')").click()
                await expect(page.locator("[role=status]")).to_contain_text(f"Approved {approval}")
                await expect(page.locator(f"tr#{approval}")).to_have_count(0)

                await page.click("nav >> text=Break-glass grants")
                await expect(page).to_have_url(f"{base}/ui/grants")
                await expect(page.locator("h1")).to_have_text("Break-glass grants")
                await screenshot("grants")
            except BaseException:
                with contextlib.suppress(Exception):  # the step's own error is the one to report
                    await page.screenshot(path=shots / "failure.png", full_page=True)
                raise
            finally:
                await browser.close()
        for name in SCREENSHOTS:
            width, height = png_size(shots / f"{name}.png")
            assert width >= 1400 and height >= 400, (name, width, height)
            assert (shots / f"{name}.png").stat().st_size > 10_000, name  # a page drawn, not a blank image

        # the agent's identical retry goes through, once, and reaches the tool server
        r = await agent.call_tool("payments__refund", HELD, meta=meta("refund"))
        assert not r.is_error, r.content
        assert r.structured_content["arguments"] == HELD and r.structured_content["verified_jti"]
        again = await agent.call_tool("payments__refund", HELD, meta=meta("refund"))
        assert again.is_error  # the approval is used up
