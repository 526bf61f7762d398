"""The gateway's ``subscriptions/listen`` stream to an upstream on the 2026-07-28 protocol.

On 2026-07-28 a server tells a client of changes only on a stream the client opened for them
(``subscriptions/listen``, SEP-2575): there is no standing channel and no
``resources/subscribe``.  For each such upstream whose capabilities say it serves listen,
the gateway keeps one stream open, for the list changes it offers (tools, resources,
prompts) and for the resource URIs some agent has subscribed to through the gateway.  The
SDK's session passes every event on the stream to the upstream's message handler as the
notification it stands for, so the gateway follows them exactly as it follows an earlier
protocol's notifications (``Upstream._on_message``, then the front: a resource update to
the connections that subscribed, a list change to every agent that uses the upstream).

The set of URIs is fixed for the life of a stream, so a subscription (or its end) opens a
new one in place of the old; ``want`` returns once the upstream has acknowledged a stream
with the new set, and says whether it honoured the URI.  The old stream is closed before the
new one opens: an update in that instant is not delivered, which the protocol allows (there
is no replay; a subscriber reads the resource again).  A stream that ends, gracefully or
not, is opened again after a pause that doubles up to ``RETRY_MAX`` seconds; one that
stays open for ``STEADY`` seconds resets the pause.  The URIs wanted outlive the session, so
a restarted upstream is listened to for the same resources.
"""

from __future__ import annotations

import asyncio
import logging
import time

import anyio
from mcp import Client, MCPError
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

__all__ = ["Listener"]

log = logging.getLogger("intentgate.upstreams")

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
STEADY = 5.0


class Listener:
    """One upstream's listen stream, and the resource URIs it is to carry."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.wanted: set[str] = set()  # upstream resource URIs some agent subscribed to
        self.honored: frozenset[str] = frozenset()  # those the open stream's acknowledgment named
        self._version = 0  # bumped by each change of ``wanted``
        self._acked_version = 0  # the version the open stream was built from
        self._changed = asyncio.Event()
        self._acked = asyncio.Condition()

    @staticmethod
    def serves(client: Client) -> bool:
        """Whether ``client``'s upstream is on 2026-07-28 and announces changes (so serves listen)."""
        caps = client.server_capabilities
        if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or caps is None:
            return False
        return bool((caps.tools and caps.tools.list_changed) or (caps.prompts and caps.prompts.list_changed)
                    or (caps.resources and (caps.resources.list_changed or caps.resources.subscribe)))

    async def run(self, client: Client) -> None:
        """Keep a stream open on ``client`` until cancelled (the session's end)."""
        caps = client.server_capabilities
        assert caps is not None
        flags = {
            "tools_list_changed": bool(caps.tools and caps.tools.list_changed),
            "prompts_list_changed": bool(caps.prompts and caps.prompts.list_changed),
            "resources_list_changed": bool(caps.resources and caps.resources.list_changed),
        }
        subscribes = bool(caps.resources and caps.resources.subscribe)
        pause = RETRY_FIRST
        while True:
            self._changed.clear()
            version, uris = self._version, sorted(self.wanted) if subscribes else []
            began = time.monotonic()
            try:
                async with client.listen(**flags, resource_subscriptions=uris) as stream:
                    async with self._acked:
                        self.honored = frozenset(stream.honored.resource_subscriptions or ())
                        self._acked_version = version
                        self._acked.notify_all()
                    log.debug("upstream %s: listening for %d resources", self.upstream, len(uris))
                    async with anyio.create_task_group() as tg:
                        async def drain() -> None:  # each event already went to the message handler
                            async for _event in stream:
                                pass
                            tg.cancel_scope.cancel()
                        tg.start_soon(drain)
                        await self._changed.wait()  # new URIs: this stream makes way for one with them
                        tg.cancel_scope.cancel()
                if self._changed.is_set():
                    continue
                log.info("upstream %s closed its listen stream", self.upstream)
            except (SubscriptionLost, MCPError, TimeoutError, ListenNotSupportedError) as exc:
                log.warning("upstream %s: listen stream lost: %s", self.upstream, type(exc).__name__)
            pause = RETRY_FIRST if time.monotonic() - began >= STEADY else min(pause * 2, RETRY_MAX)
            with anyio.move_on_after(pause):
                await self._changed.wait()  # a new subscription need not wait out the pause

    async def want(self, uri: str, on: bool = True) -> bool:
        """Add (or drop) ``uri``, and wait for a stream built from the new set; whether the upstream
        honoured it (for ``on``).  The caller bounds the wait."""
        (self.wanted.add if on else self.wanted.discard)(uri)
        self._version += 1
        mine = self._version
        self._changed.set()
        async with self._acked:
            await self._acked.wait_for(lambda: self._acked_version >= mine)
            return uri in self.honored
