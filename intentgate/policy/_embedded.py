"""The embedded engine: the policy compiled by regorus and run on its VM, in process.

The regorus ``Program`` and ``Rvm`` are bound to the thread that created them (using or
freeing one elsewhere is a panic), so the engine evaluates synchronously on the calling
thread, which is the event loop's, with no thread hop; an evaluation takes tens of
microseconds.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pydantic_core
import regorus
from pydantic import ValidationError

from ..errors import ConfigError, PolicyError
from ._bundle import PolicyBundle, PolicyWatcher, load_policy_dir
from ._notes import ReasonNote, read_reason_notes
from ._result import DECISION_PATH, PolicyResult, parse_result

__all__ = ["EmbeddedEngine", "check_compiles", "regorus_message"]

log = logging.getLogger("intentgate.policy")

_UNDEFINED = '"<undefined>"'  # what Rvm.execute() answers when the entry point is undefined


def regorus_message(exc: BaseException) -> str:
    """A regorus error without the Rust backtrace it carries."""
    return str(exc).split("Stack backtrace")[0].strip()


_ORPHANS: dict[int, list[Any]] = {}
_ORPHANS_LOCK = threading.Lock()


class _ThreadBoundVM:
    """Owns a regorus ``Rvm``, which must be freed on the thread that created it.

    If the last reference goes away on another thread (e.g. a garbage-collector run that a
    worker thread triggered), the VM is parked instead of freed, and released the next time
    its own thread builds a VM.
    """

    __slots__ = ("owner", "vm")

    def __init__(self, vm: Any) -> None:
        self.vm = vm
        self.owner = threading.get_ident()

    def __del__(self) -> None:
        if threading.get_ident() != self.owner:
            with _ORPHANS_LOCK:
                _ORPHANS.setdefault(self.owner, []).append(self.vm)

    @staticmethod
    def release_orphans() -> None:
        me = threading.get_ident()
        if _ORPHANS.get(me):
            with _ORPHANS_LOCK:
                parked = _ORPHANS.pop(me, [])
            del parked  # freed here, on their own thread


def _compile(bundle: PolicyBundle, intents_doc: dict[str, Any]) -> tuple[_ThreadBoundVM, str]:
    """Compile the bundle's modules for ``data.intentgate.decision`` and load a VM."""
    _ThreadBoundVM.release_orphans()
    revision = bundle.revision(intents_doc)
    data_json = pydantic_core.to_json(bundle.data_with(intents_doc)).decode()
    try:
        program = regorus.Program.compile_from_modules(data_json, bundle.modules, [DECISION_PATH])
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(data_json)
    except Exception as exc:  # noqa: BLE001 - regorus raises RuntimeError with a located message
        raise ConfigError(f"{bundle.root}: policy does not compile: {regorus_message(exc)}") from exc
    return _ThreadBoundVM(vm), revision


def check_compiles(bundle: PolicyBundle, intents_doc: dict[str, Any]) -> None:
    """Raise ``ConfigError`` unless the bundle compiles for ``data.intentgate.decision``."""
    _compile(bundle, intents_doc)


class EmbeddedEngine:
    """The policy in process (regorus).  See :class:`~intentgate.policy.PolicyEngine`."""

    def __init__(
        self,
        policy_dir: Path | str,
        intents_doc: dict[str, Any],
        *,
        environment: str = "prod",
        reload_interval: float = 1.0,
    ) -> None:
        self.policy_dir = Path(policy_dir)
        self.environment = environment
        self._watcher = PolicyWatcher(self.policy_dir, reload_interval)
        self.bundle = load_policy_dir(self.policy_dir)
        self.intents_doc = intents_doc
        self._vm: _ThreadBoundVM | None
        self._vm, self.revision = _compile(self.bundle, intents_doc)
        self.reason_notes: dict[str, ReasonNote] = read_reason_notes(self.bundle.modules)

    async def evaluate(self, input: dict[str, Any], *, decision_id: str | None = None) -> PolicyResult:
        return self.evaluate_sync(input)

    def evaluate_sync(self, input: dict[str, Any]) -> PolicyResult:
        """Evaluate on the calling thread (which must be the one that built the engine)."""
        bound = self._vm
        if bound is None:
            raise PolicyError("policy engine is closed")
        if bound.owner != threading.get_ident():
            raise PolicyError("embedded policy engine used from a thread other than its own")
        try:
            bound.vm.set_input_json(pydantic_core.to_json(input).decode())
            out = bound.vm.execute()
        except Exception as exc:  # noqa: BLE001 - any engine failure denies
            raise PolicyError(f"embedded policy evaluation failed: {regorus_message(exc)[:300]}") from exc
        except BaseException as exc:  # pyo3's PanicException is not an Exception
            if type(exc).__name__ != "PanicException":
                raise
            raise PolicyError(f"embedded policy engine panicked: {regorus_message(exc)[:300]}") from exc
        try:
            return PolicyResult.model_validate_json(out)
        except ValidationError:
            return parse_result(None if out == _UNDEFINED else pydantic_core.from_json(out))

    def set_intents(self, intents_doc: dict[str, Any]) -> None:
        """Replace ``data.intentgate.intents`` (raises ``ConfigError`` and keeps the old on failure)."""
        self._vm, self.revision = _compile(self.bundle, intents_doc)
        self.intents_doc = intents_doc

    async def reload_if_changed(self, *, force: bool = False) -> bool:
        """Recompile if the policy files changed (checked at most once per interval).

        A reload that fails keeps the running policy and logs the error.
        """
        if self._vm is None or not self._watcher.changed(force=force):
            return False
        try:
            bundle = load_policy_dir(self.policy_dir)
            vm, revision = _compile(bundle, self.intents_doc)
            notes = read_reason_notes(bundle.modules)
        except ConfigError as exc:
            log.error("policy reload failed; keeping revision %s: %s", self.revision, exc.message)
            return False
        changed = revision != self.revision
        self.bundle, self._vm, self.revision, self.reason_notes = bundle, vm, revision, notes
        if changed:
            log.info("policy reloaded, revision %s", revision)
        return changed

    async def aclose(self) -> None:
        self._vm = None
