"""The OPA-server engine: a real OPA over its REST Data API (opa-python-client, aiohttp).

With ``push_policy`` the engine uploads the policy (``PUT /v1/policies/intentgate/<package>``,
one module per package: see ``_modules``) and the data documents, intents included
(``PUT /v1/data/<top-level key>``), before its first query and again whenever the revision
changes; other policies under the ``intentgate/`` id prefix are deleted, so the server runs
exactly the policy dir.

Without it, the server gets policy and data from its own bundles (``intentgate policy bundle``
writes one whose manifest revision is the gateway's own revision).  Each query then asks for
OPA's provenance, and ``revision`` is the revision of the bundles that actually answered
(``bundle:<revision>``), so a recorded decision names the policy OPA ran, not the local files.

Each query carries the gateway's decision id in the ``X-IntentGate-Decision-Id`` header:
an OPA whose decision logs keep that header (``decision_logs.request_context.http.headers``)
logs it beside its own ``decision_id``, which the gateway records in the decision's policy
result (``engine_decision_id``).  Either id finds the other.

Every failure (connection refused, timeout, HTTP error, undefined or off-contract result)
raises ``PolicyError``: the caller denies.  Requests are not retried: a failing OPA must
deny fast rather than retry into the timeout.  After a connection failure the policy is
pushed again before the next query, since an OPA that restarted has forgotten it.

A decision waits at most ``timeout`` for everything it needs, an upload included.  The
upload itself is not bound to that deadline: it runs in its own task, each request allowed
``PUSH_TIMEOUT`` (compiling the policy on a busy OPA can take longer than a query may), so a
decision that gave up is denied while the upload finishes for the decisions after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient
from opa_client.errors import DeletePolicyError

from ..errors import ConfigError, PolicyError
from ._bundle import PolicyBundle, PolicyWatcher, load_policy_dir
from ._embedded import check_compiles
from ._modules import merge_by_package
from ._notes import ReasonNote, read_reason_notes
from ._result import PolicyResult, parse_result

__all__ = ["OpaServerEngine"]

log = logging.getLogger("intentgate.policy")

POLICY_ID_PREFIX = "intentgate"
DECISION_ID_HEADER = "X-IntentGate-Decision-Id"
_QUERY_PATH = "/v1/data/intentgate/decision"
PUSH_TIMEOUT = 10.0  # seconds per upload request; queries are bound by the engine's timeout


class _Client(AsyncOpaClient):
    """opa-python-client, plus a decision query that sends the gateway's decision id."""

    async def query_decision(self, input: dict[str, Any], decision_id: str | None, provenance: bool) -> Any:
        headers = {DECISION_ID_HEADER: decision_id} if decision_id else {}
        url = f"{self.root_url}/data/intentgate/decision" + ("?provenance=true" if provenance else "")
        async with self._request("POST", url, json={"input": input}, headers=headers) as response:
            response.raise_for_status()
            return await response.json()


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    """Mark a failed upload's exception as seen (callers that gave up never await it)."""
    if not task.cancelled():
        task.exception()


class OpaServerEngine:
    """The policy on an OPA server.  See :class:`~intentgate.policy.PolicyEngine`."""

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
        self.local_revision = self.bundle.revision(intents_doc)
        self._served_revision: str | None = None  # push_policy false: what OPA's bundles answer with
        self._check_pushable(self.bundle, intents_doc)
        self.reason_notes: dict[str, ReasonNote] = self._notes_of(self.bundle)
        self._client = _Client(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            timeout=max(timeout, PUSH_TIMEOUT),  # a query's own deadline is asyncio.timeout below
            retries=0,
        )
        self._session_open = False
        self._pushed_revision: str | None = None
        self._check_pushed = False  # an undefined answer: is our policy still on the server?
        self._push_task: asyncio.Task[None] | None = None

    @property
    def revision(self) -> str:
        """The policy that answers: the local dir's when pushed, else the bundles' OPA reported."""
        if self.push_policy or self._served_revision is None:
            return self.local_revision
        return self._served_revision

    def _check_pushable(self, bundle: PolicyBundle, intents_doc: dict[str, Any]) -> None:
        """What will be uploaded must compile (checked with regorus) and map onto data paths."""
        if not self.push_policy:
            return
        for key, value in bundle.data_with(intents_doc).items():
            if not isinstance(value, dict):
                raise ConfigError(f"{bundle.root}: top-level data key {key!r} must hold an object to push to OPA")
        check_compiles(bundle, intents_doc)
        merge_by_package(bundle.modules)  # imports that would clash once merged

    def _notes_of(self, bundle: PolicyBundle) -> dict[str, ReasonNote]:
        """The reasons' notes from the policy dir: with ``push_policy`` the very files OPA runs
        (a block OPA would refuse fails here first); without, the files OPA's bundles were
        presumably built from, so an unreadable one costs the notes, not the engine."""
        try:
            return read_reason_notes(bundle.modules)
        except ConfigError as exc:
            if self.push_policy:
                raise
            log.warning("no reason notes from the policy dir %s: %s", bundle.root, exc.message)
            return {}

    async def _ensure_ready(self) -> None:
        """Open the HTTP session, and upload the policy unless the server has this revision.

        The upload runs as its own task, shielded from the caller: a query that gives up
        (its timeout, or the caller's) does not cancel an upload half-way, and the next
        query waits for the same upload instead of starting another.
        """
        if not self._session_open:  # no suspension point inside: never two sessions
            await self._client.__aenter__()
            self._session_open = True
        if self._check_pushed and self.push_policy:
            # an OPA restarted behind a kept-alive address (no refused connection was seen) has
            # forgotten what was pushed: look, and push again if our modules are gone
            on_server = set(await self._client.get_policies_list())
            self._check_pushed = False
            if not {f"{POLICY_ID_PREFIX}/{m}" for m, _ in merge_by_package(self.bundle.modules)} <= on_server:
                log.warning("the policy is gone from OPA at %s (restarted?); pushing it again", self.url)
                self._pushed_revision = None
        while self.push_policy and self._pushed_revision != self.local_revision:
            task = self._push_task
            if task is None or task.done():
                task = self._push_task = asyncio.create_task(self._push_current())
                task.add_done_callback(_retrieve_exception)
            await asyncio.shield(task)

    async def _push_current(self) -> None:
        revision, bundle, intents_doc = self.local_revision, self.bundle, self.intents_doc
        try:
            await self._push(merge_by_package(bundle.modules), bundle.data_with(intents_doc))
        except Exception as exc:  # noqa: BLE001 - any upload failure is a policy failure
            raise PolicyError(f"could not push the policy to OPA at {self.url}: {type(exc).__name__}: {exc}") from exc
        self._pushed_revision = revision
        log.info("policy revision %s pushed to OPA at %s", revision, self.url)

    async def _push(self, modules: list[tuple[str, str]], data: dict[str, Any]) -> None:
        """Make the server's ``intentgate/…`` policies exactly ``modules``, then write the data.

        Modules under the prefix that are not in the bundle (a file removed, or left by an
        earlier run) are deleted: first, so that they cannot conflict with the new ones, and,
        should OPA refuse because a module still needs them, again after the upload.
        """
        wanted = {f"{POLICY_ID_PREFIX}/{module_id}": text for module_id, text in modules}
        on_server = {p for p in await self._client.get_policies_list() if p.startswith(f"{POLICY_ID_PREFIX}/")}
        stale = sorted(on_server - wanted.keys())
        refused = []
        for policy_id in stale:
            try:
                await self._client.delete_policy(policy_id)
            except DeletePolicyError:
                refused.append(policy_id)
        for policy_id, text in wanted.items():
            await self._client.update_policy_from_string(text, policy_id, rego_compat=False)
        for policy_id in refused:
            await self._client.delete_policy(policy_id)
        for key, value in data.items():
            await self._client.update_or_create_data(value, key)

    async def evaluate(self, input: dict[str, Any], *, decision_id: str | None = None) -> PolicyResult:
        try:
            async with asyncio.timeout(self.timeout):
                await self._ensure_ready()
                response = await self._client.query_decision(input, decision_id, provenance=not self.push_policy)
        except PolicyError:
            raise
        except TimeoutError as exc:
            if self._push_task is not None and not self._push_task.done():
                raise PolicyError(f"the policy upload to OPA at {self.url} did not finish within {self.timeout}s "
                                  "(it goes on for the next decision)") from exc
            raise PolicyError(f"OPA at {self.url} did not answer within {self.timeout}s") from exc
        except Exception as exc:  # noqa: BLE001 - unreachable or failing server: deny
            if isinstance(exc, OSError | aiohttp.ClientConnectionError):
                # the server went away; one that comes back (a restarted sidecar) has lost what
                # was pushed to it, so push again before the next query
                self._pushed_revision = None
            raise PolicyError(f"OPA query failed: {type(exc).__name__}: {exc}"[:300]) from exc
        if not isinstance(response, dict):
            raise PolicyError("OPA answered something other than a JSON object")
        if "result" not in response:
            self._check_pushed = True
        result = parse_result(response.get("result"))
        if not self.push_policy:
            self._note_provenance(response.get("provenance"))
        engine_id = response.get("decision_id")
        if isinstance(engine_id, str) and engine_id:
            result = result.model_copy(update={"engine_decision_id": engine_id[:128]})
        return result

    def _note_provenance(self, provenance: Any) -> None:
        """``revision`` := the revision of the bundles that answered (``bundle:<rev>[,<rev>…]``)."""
        bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
        if not isinstance(bundles, dict) or not bundles:
            raise PolicyError("OPA answered without an active bundle (policy.push_policy is false)")
        revs = sorted(f"{name}={b.get('revision', '')}" if len(bundles) > 1 else str(b.get("revision", ""))
                      for name, b in bundles.items() if isinstance(b, dict))
        revision = ("bundle:" + ",".join(revs))[:64]
        if revision != self._served_revision:
            how = "matches" if revision == f"bundle:{self.local_revision}" else "differs from"
            log.info("OPA answers with %s, which %s the local policy dir (%s)", revision, how, self.local_revision)
            self._served_revision = revision

    def set_intents(self, intents_doc: dict[str, Any]) -> None:
        """Replace ``data.intentgate.intents``; pushed with the next query."""
        self._check_pushable(self.bundle, intents_doc)
        self.local_revision = self.bundle.revision(intents_doc)
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
            notes = self._notes_of(bundle)
        except ConfigError as exc:
            log.error("policy reload failed; keeping revision %s: %s", self.local_revision, exc.message)
            return False
        changed = revision != self.local_revision
        self.bundle, self.local_revision, self.reason_notes = bundle, revision, notes
        return changed

    async def aclose(self) -> None:
        if self._push_task is not None and not self._push_task.done():
            self._push_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._push_task
        if self._session_open:
            await self._client.close_connection()
            self._session_open = False
