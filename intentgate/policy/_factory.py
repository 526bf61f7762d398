"""Building the configured engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ._embedded import EmbeddedEngine
from ._result import PolicyEngine

__all__ = ["make_engine"]


def make_engine(
    kind: Literal["embedded", "opa"],
    *,
    policy_dir: Path | str,
    intents_doc: dict[str, Any],
    environment: str = "prod",
    url: str | None = None,
    push_policy: bool = True,
    timeout: float = 2.0,
    reload_interval: float = 1.0,
) -> PolicyEngine:
    """The embedded engine, or an OPA server at ``url``.  Raises ``ConfigError``."""
    if kind == "embedded":
        return EmbeddedEngine(policy_dir, intents_doc, environment=environment, reload_interval=reload_interval)
    if kind == "opa":
        if not url:
            raise ConfigError("policy.engine is 'opa' but policy.url is not set")
        from ._opa import OpaServerEngine  # only here: the OPA client pulls in aiohttp and requests

        return OpaServerEngine(
            url, policy_dir, intents_doc, push_policy=push_policy, timeout=timeout, reload_interval=reload_interval
        )
    raise ConfigError(f"unknown policy engine {kind!r} (expected 'embedded' or 'opa')")
