"""Wiring: build the decision core (intents, policy, store, keys, decider) from a config."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .checkpoints import AuditSigner
from .clock import Clock, SystemClock
from .config import GatewayConfig
from .decide import Decider
from .errors import GatewayError
from .identity import DevIssuer, IdentityVerifier
from .intents import IntentRegistry, load_intents
from .keys import KeySet
from .metrics import Metrics
from .policy import PolicyEngine, make_engine
from .ratelimit import RateLimiter
from .sealer import Sealer
from .store import Store
from .tasks import TaskGrantMinter, TaskIssuers
from .tokens import ActionTokenIssuer
from .tracing import OFF, Tracing
from .verify import ActionTokenVerifier

__all__ = ["Runtime", "sealing_horizon"]

log = logging.getLogger("intentgate.runtime")


def sealing_horizon(config: GatewayConfig) -> float:
    """How long after its ``seq`` was taken a decision may still commit (see ``store.ledger``):
    far beyond any transaction the store's timeouts let live."""
    return max(120.0, 20 * config.store.timeout_seconds)


@dataclass
class Runtime:
    """Everything a front needs to decide and verify; close it when done."""

    config: GatewayConfig
    clock: Clock
    intents: IntentRegistry
    policy: PolicyEngine
    store: Store
    keys: KeySet
    issuer: ActionTokenIssuer
    verifier: ActionTokenVerifier
    decider: Decider
    metrics: Metrics
    task_issuers: TaskIssuers
    sealer: Sealer
    tracing: Tracing = OFF

    @classmethod
    async def open(cls, config: GatewayConfig, *, clock: Clock | None = None) -> Runtime:
        clock = clock or SystemClock()
        intents = load_intents(config.intents_dir, default_begin=config.tasks.begin)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        policy = make_engine(
            config.policy.engine,
            policy_dir=config.policy_dir,
            intents_doc=intents.data_document(),
            environment=config.environment,
            url=config.policy.url,
            push_policy=config.policy.push_policy,
            timeout=config.policy.timeout_seconds,
        )
        store: Store | None = None
        tracing = OFF
        try:
            tracing = Tracing.open(config.telemetry.tracing)
            store = Store.open(
                config.database_url,
                timeout=config.store.timeout_seconds,
                pool_size=config.store.pool_size,
                sqlite_synchronous=config.store.sqlite_synchronous,
                inline=config.store.sqlite_inline,
                migrate=config.store.migrate,
            )
            keys = KeySet.open_or_create(config.action_keys_dir, clock=clock)
            issuer = ActionTokenIssuer(
                keys, issuer=config.tokens.issuer, clock=clock, default_ttl=config.tokens.ttl_seconds
            )
            verifier = ActionTokenVerifier(
                keys, issuer=config.tokens.issuer, clock=clock, leeway=config.tokens.leeway_seconds
            )
            decider = Decider(
                intents=intents,
                policy=policy,
                store=store,
                issuer=issuer,
                clock=clock,
                environment=config.environment,
                mode=config.mode,
                policy_timeout=config.policy.timeout_seconds,
                approval_ttl=config.approval_ttl_seconds,
                audit_arguments=config.audit.arguments,
                limiter=RateLimiter(config.front.rate_limit_per_second, config.front.rate_limit_burst, clock)
                if config.front.rate_limit_per_second else None,
                tracing=tracing,
            )
            task_issuers = TaskIssuers(config.tasks, local_keys=cls._task_issuer_keys(config, clock), clock=clock)
            signer = AuditSigner.open(config.audit_keys_dir, config.audit.checkpoints.origin)
        except BaseException:
            if store is not None:
                store.close()
            await policy.aclose()
            tracing.shutdown()
            raise
        metrics = Metrics()
        store.events = metrics
        sealer = Sealer(store, signer, config.audit.checkpoints, clock, horizon=sealing_horizon(config),
                        events=metrics)
        return cls(config, clock, intents, policy, store, keys, issuer, verifier, decider, metrics, task_issuers,
                   sealer, tracing)

    @staticmethod
    def _task_issuer_keys(config: GatewayConfig, clock: Clock) -> KeySet | None:
        return KeySet.open_or_create(config.task_issuer_keys_dir, clock=clock) if config.tasks.local_issuer else None

    def task_grant_minter(self) -> TaskGrantMinter:
        """Signs task grants as the ``local`` task issuer (``intentgate task grant``)."""
        return TaskGrantMinter(KeySet.open_or_create(self.config.task_issuer_keys_dir, clock=self.clock),
                               clock=self.clock)

    def identity_verifier(self) -> IdentityVerifier:
        """Verifier for agents' workload tokens: configured issuers, plus the dev issuer if enabled."""
        issuers = list(self.config.identity.issuers)
        if self.config.identity.dev_issuer:
            issuers.append(self.dev_issuer().issuer_config())
        return IdentityVerifier(issuers, clock=self.clock, leeway=self.config.identity.leeway_seconds)

    def dev_issuer(self) -> DevIssuer:
        return DevIssuer(KeySet.open_or_create(self.config.agent_issuer_keys_dir, clock=self.clock), clock=self.clock)

    async def run_background(self) -> None:
        """What a serving gateway runs beside its front: the task sweep and the sealer."""
        await asyncio.gather(self.sweep_forever(), self.sealer.run_forever())

    async def sweep_forever(self, interval: float = 30.0) -> None:
        """Expire overdue tasks (revoking their tokens) every ``interval`` seconds; run as a task."""
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.decider.expire_tasks()
                if expired:
                    log.info("expired %d task(s) and revoked their tokens", expired)
                now = self.clock.now()
                windows = [b.window_seconds for i in self.decider.intents for b in i.budgets.values()]
                await self.store.purge(spends_before=now - 2 * max(windows, default=366 * 86400),
                                       grants_before=now - self.config.tasks.leeway_seconds)
            except GatewayError as exc:
                log.warning("task expiry sweep failed: %s", exc.message)

    async def aclose(self) -> None:
        try:  # what was decided since the last round is sealed and published before we go
            await self.sealer.seal_now()
        except GatewayError as exc:
            log.error("sealing the decision log at shutdown failed: %s", exc.message)
        await self.policy.aclose()
        self.store.close()
        if self.tracing.enabled:  # the spans still queued are exported (up to the exporter's timeout)
            await asyncio.to_thread(self.tracing.shutdown)
