"""Running the policy's Rego unit tests (``test_*`` rules in ``*_test.rego``), like ``opa test``.

Tests run on regorus's interpreter (``Engine``), which supports ``with``; its compiled VM
(what serves decisions) does not, and rego-cpp's ``with`` crashes the process.

Guard: regorus 0.13's interpreter evaluates rules reached through an ``import data.<pkg>``
alias incorrectly when the package is split over several files (it answered ``allow ==
true`` where the full reference ``data.<pkg>.allow`` is false).  A test run that could be
wrong that way must not pass, so every test fails with an explanation while any loaded
module imports ``data.…``; write the full reference (``data.intentgate.decision``) instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydantic_core
import regorus
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ._bundle import load_policy_dir
from ._embedded import regorus_message
from ._notes import ref_path as _ref_path

__all__ = ["RegoTestResult", "run_rego_tests"]


class RegoTestResult(BaseModel):
    """One ``test_*`` rule's outcome.  ``error`` says why a test did not pass."""

    model_config = ConfigDict(frozen=True)

    package: str
    name: str
    file: str
    line: int
    passed: bool
    error: str | None = None
    duration_ms: float = 0.0

    @property
    def ref(self) -> str:
        return f"data.{self.package}.{self.name}"


def _test_rules(modules: list[dict[str, Any]], test_files: set[str]) -> list[tuple[str, str, str, int]]:
    """(package, rule, file, line) of every ``test_*`` rule in the test files, once each."""
    found: dict[tuple[str, str], tuple[str, str, str, int]] = {}
    for module in modules:
        file = module["source"]["file"]
        if file not in test_files:
            continue
        ast = module["ast"]
        package = ".".join(_ref_path(ast["package"]["refr"]))
        for rule in ast.get("rules", []):
            spec = rule.get("Spec")
            if not spec:
                continue
            head = spec["head"]
            kind = next(iter(head))
            if kind == "Func":  # test_* functions are helpers, as in opa test
                continue
            name_path = _ref_path(head[kind].get("refr"))
            if name_path and name_path[0].startswith("test_"):
                # a test with several bodies (or a test_x[note] table) is one test
                found.setdefault((package, name_path[0]), (package, name_path[0], file, spec["span"]["line"]))
    return list(found.values())


def _data_imports(modules: list[dict[str, Any]]) -> list[str]:
    """``file:line`` of every ``import data.…`` in the loaded modules."""
    out = []
    for module in modules:
        for imp in module["ast"].get("imports", []):
            if _ref_path(imp.get("refr"))[:1] == ["data"]:
                out.append(f"{module['source']['file']}:{imp['span']['line']}")
    return out


def _verdict(value: Any) -> str | None:
    """None if a test's value means pass, else why not."""
    if value is True:
        return None
    if isinstance(value, dict) and value and all(v is True for v in value.values()):
        return None  # test_x[note]: every row that evaluated passed
    if value is None:
        return "undefined"
    if value == {}:
        return "no row of the table test passed"
    return f"evaluated to {value!r}"[:500]


def run_rego_tests(policy_dir: Path | str, intents_doc: dict[str, Any]) -> list[RegoTestResult]:
    """Run every ``test_*`` rule of the policy dir's ``*_test.rego`` files.

    A test passes iff its rule is ``true``; undefined, any other value, or an error fails
    it.  Raises ``ConfigError`` if the policy dir does not load or compile.  Results are
    in file and line order.
    """
    bundle = load_policy_dir(policy_dir)
    engine = regorus.Engine()
    try:
        for module_id, text in [*bundle.modules, *bundle.tests]:
            engine.add_policy(module_id, text)
        engine.add_data_json(pydantic_core.to_json(bundle.data_with(intents_doc)).decode())
        modules = json.loads(engine.get_ast_as_json())
    except Exception as exc:  # noqa: BLE001 - parse errors name file, line and column
        raise ConfigError(f"{bundle.root}: policy does not compile: {regorus_message(exc)}") from exc
    aliased = _data_imports(modules)
    results = []
    for package, name, file, line in _test_rules(modules, {module_id for module_id, _ in bundle.tests}):
        start = time.perf_counter()
        error: str | None = None
        if aliased:
            error = (
                f"not run: `import data.…` at {', '.join(aliased)}; regorus evaluates rules reached "
                "through such imports incorrectly, use full references (data.intentgate.decision)"
            )
        else:
            try:
                error = _verdict(engine.eval_rule(f"data.{package}.{name}"))
            except Exception as exc:  # noqa: BLE001 - an erroring test is a failing test
                error = regorus_message(exc)
        results.append(
            RegoTestResult(
                package=package, name=name, file=file, line=line, passed=error is None, error=error,
                duration_ms=(time.perf_counter() - start) * 1000,
            )
        )
    return sorted(results, key=lambda r: (r.file, r.line))
