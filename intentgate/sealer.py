"""The sealer: puts new decisions into the Merkle tree, signs a checkpoint, publishes it.

It runs in every serving gateway (one replica seals at a time, see ``store.ledger``) every
``audit.checkpoints.every_seconds`` or as soon as ``every_decisions`` decisions wait, and once
more on shutdown.  A decision therefore stays unsealed for at most about ``every_seconds``
plus one round while a gateway runs; ``intentgate audit verify`` reports rows left unsealed
longer than ``max_unsealed_seconds``.

After each round it folds what was decided into the read-side index (``store.rollup``: the
overview's counts, the search's text index); a failure there is logged and leaves sealing alone.

Publication happens after the checkpoint is committed.  A sink that fails is logged and
counted (``intentgate_checkpoint_publish_failures_total``) and is given the newest checkpoint
again at the next round: each checkpoint covers everything before it, so a sink that misses
one loses nothing it can check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from .checkpoints import AuditSigner, Checkpoint, FileSink, HttpSink
from .clock import Clock
from .config import CheckpointsConfig
from .errors import GatewayError
from .store import Store
from .store.ledger import Rewritten

__all__ = ["Sealer", "sinks_from"]

log = logging.getLogger("intentgate.audit")


class Sink(Protocol):
    name: str

    async def publish(self, checkpoint: Checkpoint, note: str) -> None: ...


class SealerEvents(Protocol):
    def checkpoint(self, size: int) -> None: ...

    def publish_failed(self, sink: str) -> None: ...


def sinks_from(config: CheckpointsConfig) -> list[Sink]:
    return [FileSink(s.file) if s.file is not None else HttpSink(str(s.url)) for s in config.sinks]


class Sealer:
    def __init__(self, store: Store, signer: AuditSigner, config: CheckpointsConfig, clock: Clock, *,
                 horizon: float, sinks: list[Sink] | None = None, events: SealerEvents | None = None) -> None:
        self.store, self.signer, self.config, self.clock = store, signer, config, clock
        self.horizon = horizon
        self.sinks = sinks_from(config) if sinks is None else sinks
        self.events = events
        self._unpublished: dict[str, tuple[Checkpoint, str]] = {}
        self._signed: tuple[int, str] | None = None  # the newest head this process signed
        self._lock = asyncio.Lock()

    async def seal_now(self) -> Checkpoint | None:
        """Seal everything waiting (in batches), publish the newest checkpoint (returned) and fold
        the decisions into the read-side index."""
        async with self._lock:
            newest = None
            while True:
                sealed = await self.store.seal(now=self.clock.now(), sign=self.signer.sign, origin=self.signer.origin,
                                               horizon=self.horizon, signed=self._signed)
                if sealed is None:
                    break
                newest = sealed
                self._signed = (sealed.checkpoint.size, sealed.checkpoint.root.hex())
                if self.events is not None:
                    self.events.checkpoint(sealed.checkpoint.size)
                if not sealed.full:
                    break
            if newest is not None:
                for sink in self.sinks:
                    self._unpublished[sink.name] = (newest.checkpoint, newest.note)
            await self._publish()
            await self._fold()
            return None if newest is None else newest.checkpoint

    async def _fold(self) -> None:
        # never in the way of sealing: the overview and the search read what is not folded yet themselves
        try:
            await self.store.fold(now=self.clock.now(), horizon=self.horizon)
        except GatewayError as exc:
            log.error("folding decisions into the read-side index failed: %s", exc.message)
        except Exception:
            log.exception("folding decisions into the read-side index failed")

    async def _publish(self) -> None:
        for sink in self.sinks:
            pending = self._unpublished.get(sink.name)
            if pending is None:
                continue
            try:
                await sink.publish(*pending)
            except Exception as exc:  # a sink is outside us: any failure is logged and retried
                log.error("checkpoint %d not published to %s: %s", pending[0].size, sink.name, exc)
                if self.events is not None:
                    self.events.publish_failed(sink.name)
            else:
                del self._unpublished[sink.name]

    async def run_forever(self) -> None:
        """Seal every ``every_seconds``, or sooner when ``every_decisions`` are waiting."""
        last_round, last_count = time.monotonic(), self.store.committed
        while True:
            await asyncio.sleep(min(0.25, self.config.every_seconds))
            due = time.monotonic() - last_round >= self.config.every_seconds
            if not due and self.store.committed - last_count < self.config.every_decisions:
                continue
            last_round, last_count = time.monotonic(), self.store.committed
            try:
                await self.seal_now()
            except Rewritten as exc:
                log.critical("%s", exc.message)
            except GatewayError as exc:
                log.error("sealing the decision log failed: %s", exc.message)
            except Exception:  # never let the loop die: the next round tries again
                log.exception("sealing the decision log failed")
