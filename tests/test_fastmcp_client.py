"""Interop with a client no one here wrote: fastmcp's `Client` (pinned in the dev extras) against
`intentgate serve` over Streamable HTTP and `intentgate stdio`, with a bearer token / the
agent token: list, begin a task from a grant, a conformant call, a refusal read back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport

from tests.processes import free_port, serve, stop
from tests.tasks import grant_args
from tests.test_front_http import agent_token
from tests.test_front_stdio import PARAMS, SUPPORT, make_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp_path = tmp_path_factory.mktemp("fastmcp-http")
    make_gateway(tmp_path)
    proc = serve(tmp_path / "intentgate.yaml", port := free_port(), tmp_path / "gateway.log")
    try:
        yield f"http://127.0.0.1:{port}/mcp", tmp_path
    finally:
        stop(proc)


async def workflow(client: Client, data_dir: Path) -> None:
    names = {t.name for t in await client.list_tools()}
    assert {"intentgate__begin_task", "tickets__get_ticket", "payments__refund"} <= names
    begun = await client.call_tool("intentgate__begin_task", grant_args(data_dir, SUPPORT, "refund-order", PARAMS))
    task = begun.structured_content["task"]

    def meta(step: str) -> dict[str, str]:
        return {"intentgate/task": task, "intentgate/step": step}

    r = await client.call_tool("tickets__get_ticket", {"ticket_id": "TCK-1"}, meta=meta("read_ticket"))
    assert not r.is_error and r.structured_content["verified_jti"]
    # out of order: fastmcp raises by default; asked not to, it hands back the refusal
    r = await client.call_tool("payments__refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"},
                               meta=meta("refund"), raise_on_error=False)
    assert r.is_error
    assert "allowed next: lookup" in r.content[0].text and "step_out_of_order:refund" in r.content[0].text
    assert r.meta["intentgate/decision"]["reasons"][0] == "step_out_of_order:refund"
    assert r.structured_content["decision_id"] == r.meta["intentgate/decision"]["decision_id"]
    with pytest.raises(Exception, match="step_out_of_order"):
        await client.call_tool("payments__refund", {"order_id": "ORD-7", "amount": 5, "currency": "EUR"},
                               meta=meta("refund"))


async def test_fastmcp_client_over_streamable_http(http_gateway: tuple[str, Path]) -> None:
    url, data_dir = http_gateway
    async with Client(StreamableHttpTransport(url, auth=agent_token(data_dir))) as client:
        await workflow(client, data_dir)
    with pytest.raises(Exception):  # noqa: B017 - a bad bearer token is refused before MCP (401)
        async with Client(StreamableHttpTransport(url, auth="not-a-token")) as client:
            await client.list_tools()


async def test_fastmcp_client_over_stdio(tmp_path: Path) -> None:
    params = make_gateway(tmp_path)
    transport = StdioTransport(params.command, list(params.args), env=dict(params.env or {}), cwd=params.cwd)
    async with Client(transport) as client:
        await workflow(client, tmp_path)
