"""The OPA-server engine: a real OPA over its REST Data API (opa-python-client, aiohttp).

With ``push_policy`` the engine uploads the policy modules (``PUT /v1/policies/...``) and
the data documents, intents included (``PUT /v1/data/<top-level key>``), before its first
query and again whenever the revision changes; modules that disappeared from the policy
dir are deleted.  Without it, the server is expected to have the policy and data from its
own bundles, and ``revision`` describes the local files only.

Every failure (connection refused, timeout, HTTP error, undefined or off-contract result)
raises ``PolicyError``: the caller denies.  Requests are not retried: a failing OPA must
deny fast rather than retry into the timeout.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opa_client import AsyncOpaClient

from ..errors import ConfigError, PolicyError
from ._bundle import PolicyBundle, PolicyWatcher, load_policy_dir
from ._embedded import check_compiles
from ._result import PolicyResult, parse_result

__all__ = ["OpaServerEngine"]

log = logging.getLogger("intentgate.policy")

POLICY_ID_PREFIX = "intentgate"


class OpaServerEngine:
    """The policy on an OPA server.  See :class:`~gateway.policy.PolicyEngine`."""

    def __init__(
        self,
        url: str,
        policy_dir: Path | str,
        intents_doc: dict[str, Any],
        *,
        push_policy: bool = True,
        timeout: float = 2.0,
        reload_interval: float = 1.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"policy.url {url!r} is not an http(s) URL")
        if parts.path.strip("/") not in {"", "v1"}:
            raise ConfigError(f"policy.url {url!r}: give the server's base URL, without a path")
        self.url = url.rstrip("/")
        self.push_policy = push_policy
        self.timeout = timeout
        self.policy_dir = Path(policy_dir)
        self._watcher = PolicyWatcher(self.policy_dir, reload_interval)
        self.bundle = load_policy_dir(self.policy_dir)
        self.intents_doc = intents_doc
        self.revision = self.bundle.revision(intents_doc)
        self._check_pushable(self.bundle, intents_doc)
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            timeout=timeout,
            retries=0,
        )
        self._session_open = False
        self._pushed_revision: str | None = None
        self._pushed_modules: set[str] = set()
        self._lock = asyncio.Lock()

    def _check_pushable(self, bundle: PolicyBundle, intents_doc: dict[str, Any]) -> None:
        """What will be uploaded must compile (checked with regorus) and map onto data paths."""
        if not self.push_policy:
            return
        for key, value in bundle.data_with(intents_doc).items():
            if not isinstance(value, dict):
                raise ConfigError(f"{bundle.root}: top-level data key {key!r} must hold an object to push to OPA")
        check_compiles(bundle, intents_doc)

    async def _prepare(self) -> None:
        """Open the HTTP session, and upload the policy if it is not there at this revision."""
        if self._session_open and (not self.push_policy or self._pushed_revision == self.revision):
            return
        async with self._lock:
            if not self._session_open:
                await self._client.__aenter__()
                self._session_open = True
            if not self.push_policy or self._pushed_revision == self.revision:
                return
            revision, bundle, intents_doc = self.revision, self.bundle, self.intents_doc
            try:
                module_ids = {f"{POLICY_ID_PREFIX}/{module_id}": text for module_id, text in bundle.modules}
                for policy_id, text in module_ids.items():
                    await self._client.update_policy_from_string(text, policy_id, rego_compat=False)
                for policy_id in sorted(self._pushed_modules - module_ids.keys()):
                    await self._client.delete_policy(policy_id)
                self._pushed_modules = set(module_ids)
                for key, value in bundle.data_with(intents_doc).items():
                    await self._client.update_or_create_data(value, key)
            except Exception as exc:  # noqa: BLE001 - any upload failure is a policy failure
                raise PolicyError(f"could not push the policy to OPA at {self.url}: {type(exc).__name__}: {exc}") from exc
            self._pushed_revision = revision
            log.info("policy revision %s pushed to OPA at %s", revision, self.url)

    async def evaluate(self, input: dict[str, Any]) -> PolicyResult:
        try:
            async with asyncio.timeout(self.timeout):
                await self._prepare()
                response = await self._client.query_rule(input, "intentgate", "decision")
        except PolicyError:
            raise
        except TimeoutError as exc:
            raise PolicyError(f"OPA at {self.url} did not answer within {self.timeout}s") from exc
        except Exception as exc:  # noqa: BLE001 - unreachable or failing server: deny
            raise PolicyError(f"OPA query failed: {type(exc).__name__}: {exc}"[:300]) from exc
        if not isinstance(response, dict):
            raise PolicyError("OPA answered something other than a JSON object")
        return parse_result(response.get("result"))

    def set_intents(self, intents_doc: dict[str, Any]) -> None:
        """Replace ``data.intentgate.intents``; pushed with the next query."""
        self._check_pushable(self.bundle, intents_doc)
        self.revision = self.bundle.revision(intents_doc)
        self.intents_doc = intents_doc

    async def reload_if_changed(self, *, force: bool = False) -> bool:
        """Reread the policy dir if its files changed; pushed with the next query.

        An edit that does not load or compile (checked with regorus before anything is
        pushed) keeps the running policy and logs the error.
        """
        if not self._watcher.changed(force=force):
            return False
        try:
            bundle = load_policy_dir(self.policy_dir)
            self._check_pushable(bundle, self.intents_doc)
            revision = bundle.revision(self.intents_doc)
        except ConfigError as exc:
            log.error("policy reload failed; keeping revision %s: %s", self.revision, exc.message)
            return False
        changed = revision != self.revision
        self.bundle, self.revision = bundle, revision
        return changed

    async def aclose(self) -> None:
        if self._session_open:
            await self._client.close_connection()
            self._session_open = False
