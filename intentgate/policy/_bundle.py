"""Reading a policy directory: Rego modules, data documents, and noticing when they change.

Data files are mapped the way ``opa run`` and bundles map them, by directory:
``opa/intentgate/data.json`` becomes ``data.intentgate``.  The gateway adds the intents at
``data.intentgate.intents``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..canonical import canonical_json, sha256_hex
from ..errors import ConfigError

__all__ = ["DATA_FILE_NAMES", "PolicyBundle", "PolicyWatcher", "fingerprint", "load_policy_dir"]

log = logging.getLogger("intentgate.policy")

DATA_FILE_NAMES = frozenset({"data.json", "data.yaml", "data.yml"})
_WATCHED_SUFFIXES = frozenset({".rego", ".json", ".yaml", ".yml"})

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class PolicyBundle:
    """The Rego modules (``*_test.rego`` apart) and merged data documents of a policy dir.

    Module ids are paths relative to ``root`` (``intentgate/decision.rego``), as in
    ``opa``'s messages.
    """

    root: Path
    modules: list[tuple[str, str]]
    data: dict[str, Any]
    tests: list[tuple[str, str]] = field(default_factory=list)

    def data_with(self, intents_doc: dict[str, Any]) -> dict[str, Any]:
        """A copy of the data documents with ``data.intentgate.intents`` set."""
        data = copy.deepcopy(self.data)
        node = data.setdefault("intentgate", {})
        if not isinstance(node, dict):
            raise ConfigError(f"{self.root}: data.intentgate must be an object")
        node["intents"] = intents_doc
        return data

    def revision(self, intents_doc: dict[str, Any]) -> str:
        """Content hash of the modules and data (intents included)."""
        material = {"modules": sorted(self.modules), "data": self.data_with(intents_doc)}
        try:
            return sha256_hex(canonical_json(material))[:16]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.root}: policy data is not plain JSON: {exc}") from exc


def fingerprint(root: Path) -> Fingerprint:
    """(path, mtime_ns, size) of every policy or data file under ``root``."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.suffix in _WATCHED_SUFFIXES and path.is_file():
            st = path.stat()
            out.append((path.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _merge(into: dict[str, Any], path: list[str], value: Any, source: Path) -> None:
    node = into
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: data path {'.'.join(path)} conflicts with another data document")
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: a data document must hold an object")
    for key, val in value.items():
        if key in node and isinstance(node[key], dict) and isinstance(val, dict):
            _merge(node, [key], val, source)
        elif key in node:
            raise ConfigError(f"{source}: data key {'.'.join([*path, key])} is defined twice")
        else:
            node[key] = val


def load_policy_dir(root: Path | str) -> PolicyBundle:
    """Read every ``*.rego`` and ``data.json``/``data.yaml`` under ``root``.

    Raises ``ConfigError`` naming the file when the directory is missing, holds no Rego,
    or a file cannot be read or parsed.  Rego syntax is checked when an engine compiles.
    """
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
                text = path.read_text(encoding="utf-8")
                (tests if path.stem.endswith("_test") else modules).append((rel.as_posix(), text))
            elif path.name in DATA_FILE_NAMES:
                text = path.read_text(encoding="utf-8")
                value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
                _merge(data, list(rel.parent.parts), value, path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"{path}: cannot read: {detail}") from exc
    if not modules:
        raise ConfigError(f"{root}: no Rego policy files (*.rego) found")
    return PolicyBundle(root, modules, data, tests)


class PolicyWatcher:
    """Says whether a policy dir's files changed, looking at most once per ``interval``.

    A change is reported once: a broken edit is not retried every interval, only when the
    files change again.
    """

    def __init__(self, root: Path, interval: float = 1.0) -> None:
        self.root = Path(root)
        self.interval = interval
        self._seen = fingerprint(self.root)
        self._next_check = time.monotonic() + interval

    def changed(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.interval
        try:
            current = fingerprint(self.root)
        except OSError as exc:
            log.error("cannot scan policy directory %s: %s", self.root, exc)
            return False
        if current == self._seen:
            return False
        self._seen = current
        return True
