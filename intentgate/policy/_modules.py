"""Rego module headers: the package a module declares, and one module per package.

OPA's Policy API (``PUT /v1/policies/<id>``) compiles every upload together with the modules
already on the server and refuses one that does not compile on its own terms.  Modules of one
package routinely use each other's rules both ways (``decision.rego`` reads ``hold_reasons``
from ``refunds.rego``, which reads ``_tool`` from ``decision.rego``), so no upload order can
work for them one file at a time.  The OPA engine therefore uploads each package as one
module: the files' bodies in file order under one ``package`` line and the union of their
imports.  That is the same program (Rego rules are unordered and a package is the union of
its modules), and a policy that compiles as files (regorus, ``opa test``) compiles merged.

Only the header of a file is rewritten: leading comments, the ``package`` line and the
``import`` lines that follow it.  Rule bodies (and raw strings in them) are kept verbatim.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

__all__ = ["merge_by_package", "package_of"]

_PACKAGE = re.compile(r"^package\s+(\S+)\s*(#.*)?$")
_IMPORT = re.compile(r"^import\s+(\S+)(?:\s+as\s+([A-Za-z_][A-Za-z0-9_]*))?\s*(#.*)?$")


def _split(module_id: str, text: str) -> tuple[list[str], str, list[tuple[str, str]], list[str]]:
    """(comments before the package line, package, [(import target, alias)], body lines)."""
    lines = text.splitlines()
    i = 0
    leading: list[str] = []
    while i < len(lines) and not _PACKAGE.match(lines[i].strip()):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            raise ConfigError(f"{module_id}:{i + 1}: expected the package statement, found {stripped[:60]!r}")
        leading.append(lines[i])
        i += 1
    if i == len(lines):
        raise ConfigError(f"{module_id}: no package statement")
    m = _PACKAGE.match(lines[i].strip())
    assert m is not None
    package = m.group(1)
    i += 1
    imports: list[tuple[str, str]] = []
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        im = _IMPORT.match(stripped)
        if not im:
            break
        target = im.group(1)
        imports.append((target, im.group(2) or target.rsplit(".", 1)[-1]))
        i += 1
    return leading, package, imports, lines[i:]


def package_of(module_id: str, text: str) -> str:
    """The package a module declares (``intentgate``, ``intentgate.reads``)."""
    return _split(module_id, text)[1]


def merge_by_package(modules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One module per package, ``(package path with / for ., text)``, in first-seen order.

    Raises ``ConfigError`` when two files of a package import different things under one
    name: merged, the two imports would clash.
    """
    order: list[str] = []
    parts: dict[str, list[str]] = {}
    imports: dict[str, dict[str, tuple[str, str]]] = {}  # package -> alias -> (target, file)
    for module_id, text in modules:
        leading, package, module_imports, body = _split(module_id, text)
        if package not in parts:
            order.append(package)
            parts[package] = []
            imports[package] = {}
        seen = imports[package]
        for target, alias in module_imports:
            if alias in seen and seen[alias][0] != target:
                raise ConfigError(
                    f"{module_id}: 'import {target}' uses the name {alias!r}, which {seen[alias][1]} imports as "
                    f"{seen[alias][0]!r}; the OPA server receives one module per package, so give them distinct "
                    "names (or let OPA load a bundle: policy.push_policy false)"
                )
            seen.setdefault(alias, (target, module_id))
        # a METADATA block before a package line would attach to the next rule once the package
        # line is gone: keep the text, as a plain comment
        kept = [line.replace("# METADATA", "# (package metadata)", 1) for line in leading]
        parts[package].append("\n".join([f"# --- {module_id}", *kept, *body]))
    merged = []
    for package in order:
        header = [f"package {package}", ""]
        header += [f"import {t}" if t.rsplit(".", 1)[-1] == a else f"import {t} as {a}"
                   for a, (t, _) in imports[package].items()]
        merged.append((package.replace(".", "/"), "\n".join([*header, "", *parts[package], ""])))
    return merged
