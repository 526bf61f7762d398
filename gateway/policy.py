"""Policy engines: the same Rego files served in process or by an OPA server.

Both engines answer ``data.intentgate.decision`` for an input and return a
:class:`PolicyResult`; anything else (error, timeout, off-contract answer) raises
``PolicyError`` so that the caller denies.  Policy and data are loaded once and reloaded
when the files change, never per call.

- :class:`EmbeddedEngine`: regorus (Rust) compiled program on an RVM, evaluated on the
  calling thread (the VM is bound to the thread that created it), about ten microseconds.
- :class:`OpaServerEngine`: a real OPA server over its REST Data API (opa-python-client).

Data files are mapped the way ``opa run`` and bundles map them: ``opa/intentgate/data.json``
becomes ``data.intentgate``.  The intents are added at ``data.intentgate.intents``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import regorus
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .canonical import canonical_json, sha256_hex
from .errors import ConfigError, PolicyError

__all__ = [
    "DECISION_PATH",
    "EmbeddedEngine",
    "OpaServerEngine",
    "PolicyBundle",
    "PolicyEngine",
    "PolicyResult",
    "RegoTestResult",
    "load_policy_dir",
    "make_engine",
    "run_rego_tests",
]

log = logging.getLogger("intentgate.policy")

DECISION_PATH = "data.intentgate.decision"
RELOAD_CHECK_INTERVAL = 1.0


class PolicyResult(BaseModel):
    """The policy's answer (the contract in DESIGN.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    allow: bool
    reasons: list[str] = Field(default_factory=list)
    hold: bool = False
    ttl_seconds: int | None = Field(default=None, ge=1, le=3600)


def parse_result(raw: Any) -> PolicyResult:
    """Validate an engine's answer; off-contract answers are ``PolicyError``."""
    if not isinstance(raw, dict):
        raise PolicyError(f"policy answered {type(raw).__name__}, not a decision object")
    try:
        result = PolicyResult.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"policy answer is off-contract: {exc.errors()[0]['msg']}") from exc
    return result.model_copy(update={"reasons": sorted(result.reasons)})


class PolicyEngine(Protocol):
    """What the decision pipeline needs from a policy engine."""

    revision: str

    async def evaluate(self, input: dict[str, Any]) -> PolicyResult: ...

    def set_intents(self, intents_doc: dict[str, Any]) -> None: ...

    async def reload_if_changed(self) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass
class PolicyBundle:
    """Rego modules (tests excluded unless asked) and merged data documents of a policy dir."""

    root: Path
    modules: list[tuple[str, str]]
    data: dict[str, Any]
    tests: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: tuple[tuple[str, int, int], ...] = ()

    def data_with(self, intents_doc: dict[str, Any]) -> dict[str, Any]:
        data = json.loads(json.dumps(self.data))
        data.setdefault("intentgate", {})
        if not isinstance(data["intentgate"], dict):
            raise ConfigError("data.intentgate must be an object")
        data["intentgate"]["intents"] = intents_doc
        return data

    def revision(self, intents_doc: dict[str, Any]) -> str:
        material = {"modules": sorted(self.modules), "data": self.data_with(intents_doc)}
        return sha256_hex(canonical_json(material))[:16]


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in {".rego", ".json", ".yaml", ".yml"}:
            st = path.stat()
            out.append((str(path.relative_to(root)), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _merge(into: dict[str, Any], path: list[str], value: Any, source: Path) -> None:
    node = into
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: data path {'.'.join(path)} conflicts with another data document")
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: a data document must hold a JSON object")
    for key, val in value.items():
        if key in node and isinstance(node[key], dict) and isinstance(val, dict):
            _merge(node, [key], val, source)
        elif key in node:
            raise ConfigError(f"{source}: data key {'.'.join([*path, key])} is defined twice")
        else:
            node[key] = val


def load_policy_dir(root: Path) -> PolicyBundle:
    """Read ``*.rego`` and ``data.json``/``data.yaml`` files under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: policy directory does not exist")
    modules: list[tuple[str, str]] = []
    tests: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root)
        try:
            if path.suffix == ".rego":
                (tests if path.stem.endswith("_test") else modules).append((str(rel), path.read_text("utf-8")))
            elif path.name in {"data.json", "data.yaml", "data.yml"}:
                text = path.read_text("utf-8")
                value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
                _merge(data, list(rel.parent.parts), value, path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}".replace("\n", " ")) from exc
    if not modules:
        raise ConfigError(f"{root}: no Rego policy files (*.rego) found")
    return PolicyBundle(root, modules, data, tests, _fingerprint(root))


class _Reloading:
    """Shared reload bookkeeping: recheck file fingerprints at most once per interval."""

    bundle: PolicyBundle
    intents_doc: dict[str, Any]
    revision: str

    def _init_reload(self, policy_dir: Path) -> None:
        self.policy_dir = Path(policy_dir)
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL

    def _changed_bundle(self, force: bool = False) -> PolicyBundle | None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return None
        self._next_check = now + RELOAD_CHECK_INTERVAL
        try:
            if _fingerprint(self.policy_dir) == self.bundle.fingerprint and not force:
                return None
            return load_policy_dir(self.policy_dir)
        except (OSError, ConfigError) as exc:
            log.error("policy reload failed; keeping revision %s: %s", self.revision, exc)
            return None


_ORPHANS: dict[int, list[Any]] = {}
_ORPHANS_LOCK = threading.Lock()


class _ThreadBoundVM:
    """Owns a regorus ``Rvm``, which must be freed on the thread that created it.

    If the last reference goes away on another thread (e.g. a garbage-collector run that a
    worker thread triggered), the VM is parked instead of freed, and released the next time
    its own thread builds or runs a VM.
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


class EmbeddedEngine(_Reloading):
    """regorus compiled program, in process."""

    def __init__(self, policy_dir: Path, intents_doc: dict[str, Any], *, environment: str = "prod") -> None:
        self.environment = environment
        self._init_reload(policy_dir)
        self.intents_doc = intents_doc
        self.bundle = load_policy_dir(policy_dir)
        self._vm, self.revision = self._compile(self.bundle, intents_doc)

    @staticmethod
    def _compile(bundle: PolicyBundle, intents_doc: dict[str, Any]) -> tuple[Any, str]:
        _ThreadBoundVM.release_orphans()
        data_json = json.dumps(bundle.data_with(intents_doc))
        try:
            program = regorus.Program.compile_from_modules(data_json, bundle.modules, [DECISION_PATH])
            vm = regorus.Rvm()
            vm.load_program(program)
            vm.set_data_json(data_json)
        except Exception as exc:  # noqa: BLE001 - regorus raises RuntimeError with a located message
            raise ConfigError(f"policy does not compile: {str(exc).split('Stack backtrace')[0].strip()}") from exc
        return _ThreadBoundVM(vm), bundle.revision(intents_doc)

    async def evaluate(self, input: dict[str, Any]) -> PolicyResult:
        return self.evaluate_sync(input)

    def evaluate_sync(self, input: dict[str, Any]) -> PolicyResult:
        bound = self._vm
        if bound is None:
            raise PolicyError("policy engine is closed")
        if bound.owner != threading.get_ident():
            raise PolicyError("embedded policy engine used from a thread other than its own")
        try:
            bound.vm.set_input_json(json.dumps(input))
            raw = json.loads(bound.vm.execute())
        except Exception as exc:  # noqa: BLE001 - any engine failure denies
            raise PolicyError(f"embedded policy evaluation failed: {type(exc).__name__}") from exc
        return parse_result(raw)

    def set_intents(self, intents_doc: dict[str, Any]) -> None:
        self._vm, self.revision = self._compile(self.bundle, intents_doc)
        self.intents_doc = intents_doc

    async def reload_if_changed(self, *, force: bool = False) -> bool:
        bundle = self._changed_bundle(force)
        if bundle is None:
            return False
        try:
            vm, revision = self._compile(bundle, self.intents_doc)
        except ConfigError as exc:
            log.error("policy reload failed; keeping revision %s: %s", self.revision, exc)
            self.bundle.fingerprint = bundle.fingerprint  # don't retry a broken edit every second
            return False
        self.bundle, self._vm, self.revision = bundle, vm, revision
        log.info("policy reloaded, revision %s", revision)
        return True

    async def aclose(self) -> None:
        self._vm = None  # type: ignore[assignment]


class OpaServerEngine(_Reloading):
    """A real OPA server over its REST Data API."""

    def __init__(
        self,
        url: str,
        policy_dir: Path,
        intents_doc: dict[str, Any],
        *,
        push_policy: bool = True,
        timeout: float = 2.0,
    ) -> None:
        from opa_client import AsyncOpaClient

        self.url = url.rstrip("/")
        self.push_policy = push_policy
        self.timeout = timeout
        self._init_reload(policy_dir)
        self.intents_doc = intents_doc
        self.bundle = load_policy_dir(policy_dir)
        self.revision = self.bundle.revision(intents_doc)
        parts = urlsplit(self.url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"policy.url {url!r} is not an http(s) URL")
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            timeout=timeout,
            retries=0,  # a slow or failing OPA must deny fast, not retry into the timeout
        )
        self._session_open = False
        self._pushed: str | None = None
        self._lock = asyncio.Lock()

    async def _ensure_session(self) -> None:
        if not self._session_open:
            await self._client.__aenter__()
            self._session_open = True

    async def _push(self) -> None:
        """Upload modules and data (when push_policy), once per revision."""
        if not self.push_policy or self._pushed == self.revision:
            return
        async with self._lock:
            if self._pushed == self.revision:
                return
            try:
                for module_id, text in self.bundle.modules:
                    await self._client.update_policy_from_string(text, f"intentgate/{module_id}", rego_compat=False)
                for key, value in self.bundle.data_with(self.intents_doc).items():
                    await self._client.update_or_create_data(value, key)
            except Exception as exc:  # noqa: BLE001 - any upload failure is a policy failure
                raise PolicyError(f"could not push policy to OPA at {self.url}: {type(exc).__name__}: {exc}") from exc
            self._pushed = self.revision

    async def evaluate(self, input: dict[str, Any]) -> PolicyResult:
        try:
            async with asyncio.timeout(self.timeout):
                await self._ensure_session()
                await self._push()
                response = await self._client.query_rule(input, "intentgate", "decision")
        except PolicyError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreachable, slow or failing server: deny
            raise PolicyError(f"OPA server query failed: {type(exc).__name__}") from exc
        if not isinstance(response, dict) or "result" not in response:
            raise PolicyError("OPA server returned no result for data.intentgate.decision")
        return parse_result(response["result"])

    def set_intents(self, intents_doc: dict[str, Any]) -> None:
        self.intents_doc = intents_doc
        self.revision = self.bundle.revision(intents_doc)

    async def reload_if_changed(self, *, force: bool = False) -> bool:
        bundle = self._changed_bundle(force)
        if bundle is None:
            return False
        self.bundle = bundle
        self.revision = bundle.revision(self.intents_doc)
        return True

    async def aclose(self) -> None:
        if self._session_open:
            await self._client.close_connection()
            self._session_open = False


def make_engine(
    kind: Literal["embedded", "opa"],
    *,
    policy_dir: Path,
    intents_doc: dict[str, Any],
    environment: str = "prod",
    url: str | None = None,
    push_policy: bool = True,
    timeout: float = 2.0,
) -> PolicyEngine:
    if kind == "embedded":
        return EmbeddedEngine(policy_dir, intents_doc, environment=environment)
    if kind == "opa":
        if not url:
            raise ConfigError("policy.engine is 'opa' but policy.url is not set")
        return OpaServerEngine(url, policy_dir, intents_doc, push_policy=push_policy, timeout=timeout)
    raise ConfigError(f"unknown policy engine {kind!r}")


# ----- Rego unit tests (the embedded engine runs `with`-based test rules) -------------------


class RegoTestResult(BaseModel):
    package: str
    name: str
    file: str
    line: int
    passed: bool
    error: str | None = None
    duration_ms: float = 0.0


def _ref_path(node: Any) -> list[str]:
    """Flatten a regorus AST reference (``Var`` / ``RefDot`` chain) into names."""
    if not isinstance(node, dict):
        return []
    if "Var" in node:
        return [node["Var"]["value"]]
    if "RefDot" in node:
        ref = node["RefDot"]
        return [*_ref_path(ref["refr"]), ref["field"][1]]
    return []


def _discover_tests(engine: Any) -> list[tuple[str, str, str, int]]:
    found = []
    for module in json.loads(engine.get_ast_as_json()):
        ast = module["ast"]
        package = ".".join(_ref_path(ast["package"]["refr"]))
        for rule in ast.get("rules", []):
            spec = rule.get("Spec")
            if not spec:
                continue
            head = spec["head"]
            kind = next(iter(head))
            name_path = _ref_path(head[kind].get("refr"))
            if name_path and name_path[0].startswith("test_"):
                found.append((package, name_path[0], module["source"]["file"], spec["span"]["line"]))
    unique: dict[tuple[str, str], tuple[str, str, str, int]] = {}
    for item in found:  # a test rule with several bodies is one test
        unique.setdefault((item[0], item[1]), item)
    return list(unique.values())


def run_rego_tests(policy_dir: Path, intents_doc: dict[str, Any]) -> list[RegoTestResult]:
    """Run every ``test_*`` rule of the policy dir's test files; pass iff it is true."""
    bundle = load_policy_dir(policy_dir)
    engine = regorus.Engine()
    try:
        for module_id, text in [*bundle.modules, *bundle.tests]:
            engine.add_policy(module_id, text)
        engine.add_data_json(json.dumps(bundle.data_with(intents_doc)))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"policy does not compile: {str(exc).split('Stack backtrace')[0].strip()}") from exc
    test_files = {module_id for module_id, _ in bundle.tests}
    results = []
    for package, name, file, line in _discover_tests(engine):
        if file not in test_files:
            continue
        start = time.perf_counter()
        error = None
        try:
            value = engine.eval_rule(f"data.{package}.{name}")
            passed = value is True
            if not passed:
                error = "undefined" if value is None else f"evaluated to {value!r}"
        except Exception as exc:  # noqa: BLE001 - an erroring test is a failing test
            passed = False
            error = str(exc).split("Stack backtrace")[0].strip()
        results.append(
            RegoTestResult(
                package=package, name=name, file=file, line=line, passed=passed, error=error,
                duration_ms=(time.perf_counter() - start) * 1000,
            )
        )
    return sorted(results, key=lambda r: (r.file, r.line))
