"""Beginning tasks in tests as the product does: by a task issuer, not by the agent.

The shipped intents that move money, credentials or mail are ``begin: [issuer]``.  Tests that
drive the decision core directly begin them with :data:`ISSUER` (an orchestrator, as
``POST /v1/tasks`` would); tests that talk MCP to a gateway hand the agent a task grant signed
with the gateway's local task-issuer key (``<data_dir>/keys/task-issuer``, as
``intentgate task grant`` does), which the agent presents to ``intentgate__begin_task``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from intentgate.keys import KeySet
from intentgate.tasks import TaskGrantMinter, TaskIssuer

__all__ = ["ISSUER", "ISSUERS_CONFIG", "ORCHESTRATOR", "grant_args", "issue_task", "mint_grant", "orchestrator_token"]

ORCHESTRATOR = "spiffe://example.org/orchestrator"
ISSUER = TaskIssuer("orchestrator", ORCHESTRATOR, "rest")
# the `tasks:` section of a test gateway's config: the orchestrator may begin any intent for any agent
ISSUERS_CONFIG = {"issuers": [{"name": "orchestrator", "subjects": [ORCHESTRATOR]}]}


def orchestrator_token(data_dir: Path) -> str:
    """The orchestrator's workload token from the gateway's development issuer."""
    from intentgate.identity import DevIssuer

    return DevIssuer(KeySet.open_or_create(Path(data_dir) / "keys" / "agent-issuer")).mint(ORCHESTRATOR)


async def issue_task(base_url: str, data_dir: Path, agent: str, intent: str, params: dict[str, Any],
                     reason: str = "assigned by the queue") -> str:
    """Begin a task for ``agent`` over ``POST /v1/tasks`` as the orchestrator; the task id."""
    import httpx2

    async with httpx2.AsyncClient(base_url=base_url, timeout=30,
                                  headers={"Authorization": f"Bearer {orchestrator_token(data_dir)}"}) as http:
        r = await http.post("/v1/tasks", json={"agent": agent, "intent": intent, "params": params, "reason": reason})
    assert r.status_code == 201, r.text
    return str(r.json()["task"])


def mint_grant(data_dir: Path, agent: str, intent: str, params: dict[str, Any], reason: str = "assigned by the queue",
               *, ttl_seconds: int = 300, task_ttl_seconds: int | None = None) -> str:
    """A task grant for ``agent``, signed with ``data_dir``'s local task-issuer key."""
    minter = TaskGrantMinter(KeySet.open_or_create(Path(data_dir) / "keys" / "task-issuer"))
    token, _ = minter.mint(agent=agent, intent=intent, params=params, reason=reason, ttl_seconds=ttl_seconds,
                           task_ttl_seconds=task_ttl_seconds, requested_by=ORCHESTRATOR)
    return token


def grant_args(data_dir: Path, agent: str, intent: str, params: dict[str, Any], reason: str = "assigned by the queue"
               ) -> dict[str, str]:
    """The arguments of ``intentgate__begin_task`` that begin this task from a fresh grant."""
    return {"grant": mint_grant(data_dir, agent, intent, params, reason)}
