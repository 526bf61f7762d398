"""Bindings: an argument tied to a value the task already holds.

A binding names its source and, optionally, a path and a mode::

    order_id: {bind: params.order_id}                                  # equals the task parameter
    order_id: {bind: steps.lookup.arguments.order_id}                  # equals what lookup was called with
    sku:      {bind: steps.lookup.result, path: /lines/*/sku, mode: one_of}   # one of what lookup returned
    files:    {bind: params.files, mode: subset_of}                    # a list, each element one of the param's
    when:     {bind: params.day, mode: date}                           # a datetime on the task's day
    path:     {bind: params.directory, mode: prefix}                   # a string under the task's directory

**Sources.** ``params.<name>``; ``steps.<step>.arguments.<name>[.<key>…]`` (what the step's
latest call was called with); ``steps.<step>.result`` with a ``path``: the values found at
that path in the results of the step's calls so far (all of them, in order).

**Paths** are JSON Pointers (RFC 6901: ``/lines/0/sku``, ``~1`` for ``/``, ``~0`` for ``~``)
in which a segment ``*`` stands for every element of an array or every member of an object.
A result is the call's structured content, or its one text content parsed as JSON.

**Modes** (the candidates are the values found; a list value of a ``params``/``arguments``
source gives its elements, for ``one_of`` and ``subset_of``):

- ``equals`` (default): the candidates are one value (several equal ones are one), and the
  argument equals it;
- ``one_of``: the argument equals one of the candidates;
- ``contains``: the argument is a list holding every candidate;
- ``subset_of``: the argument is a list whose every element is a candidate;
- ``prefix``: the argument is a string that starts with the one candidate (a string);
- ``date``: the argument is an RFC 3339 date or date-time whose calendar date, as written (no
  time-zone conversion), is the one candidate's (a date, or a date-time's date).

Equality is JSON equality (``true`` is not ``1``, ``1`` is ``1.0``).  No candidate (the step
not taken, or nothing found at the path) is ``binding_unresolved``; a value that does not
satisfy the mode is ``binding_mismatch``.

**What is kept.** Only the values at the paths that bindings name, never whole results: at
most ``MAX_VALUES`` values a call (each at most ``MAX_VALUE_BYTES`` of canonical JSON; larger
ones are not kept) and ``MAX_CALLS_KEPT`` calls a task; past that, nothing more is kept and a
call bound to what would have been is refused (``binding_unresolved``): fail closed.  The
policy input (``input.task.results``) shows the first ``POLICY_VALUES`` values of each path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from .canonical import canonical_json

__all__ = [
    "MAX_CALLS_KEPT",
    "MAX_VALUES",
    "MAX_VALUE_BYTES",
    "MODES",
    "POLICY_VALUES",
    "Binding",
    "BindingError",
    "Verdict",
    "extract",
    "judge",
    "keep_values",
    "parse_binding",
    "parse_pointer",
    "result_document",
]

Mode = Literal["equals", "one_of", "contains", "subset_of", "prefix", "date"]
MODES: tuple[str, ...] = ("equals", "one_of", "contains", "subset_of", "prefix", "date")
MAX_VALUES = 500
MAX_VALUE_BYTES = 4096
MAX_CALLS_KEPT = 100
POLICY_VALUES = 100  # the policy input shows this many of each path's values
MAX_POINTER_SEGMENTS = 32
_SOURCE = re.compile(
    r"^(?:params\.(?P<param>[A-Za-z0-9_-]+)"
    r"|steps\.(?P<step>[A-Za-z0-9_-]+)\.(?:arguments\.(?P<arg>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)"
    r"|(?P<result>result)))$"
)

Verdict = Literal["ok", "unresolved", "mismatch"]


class BindingError(ValueError):
    """A binding that cannot be used; the message says why."""


@dataclass(frozen=True)
class Binding:
    """A parsed binding: where the value comes from, at which path, compared how."""

    source: Literal["params", "arguments", "result"]
    name: str  # the parameter, or the step
    keys: tuple[str, ...] = ()  # arguments: the argument and the keys into it
    pointer: tuple[str, ...] = ()  # result: the JSON Pointer's segments ("*" a wildcard)
    path: str = ""  # result: the pointer as written
    mode: Mode = "equals"

    @property
    def step(self) -> str | None:
        return self.name if self.source != "params" else None


def parse_pointer(text: Any) -> tuple[str, ...]:
    """RFC 6901 segments of ``text`` (``""`` the whole document); raises ``BindingError``."""
    if not isinstance(text, str):
        raise BindingError("path must be a JSON Pointer string such as /lines/*/sku")
    if text == "":
        return ()
    if not text.startswith("/"):
        raise BindingError(f"path {text[:60]!r} must start with '/' (a JSON Pointer)")
    segments = text[1:].split("/")
    if len(segments) > MAX_POINTER_SEGMENTS:
        raise BindingError(f"path has more than {MAX_POINTER_SEGMENTS} segments")
    for seg in segments:
        if re.search(r"~(?![01])", seg):
            raise BindingError(f"path segment {seg[:40]!r}: '~' must be followed by 0 or 1")
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in segments)


def parse_binding(spec: dict[str, Any]) -> Binding:
    """The binding an argument rule declares (``bind``, ``path``, ``mode``); raises ``BindingError``."""
    bind, path, mode = spec.get("bind"), spec.get("path"), spec.get("mode", "equals")
    if not isinstance(bind, str) or not (m := _SOURCE.match(bind)):
        raise BindingError(
            f"binding {str(bind)[:80]!r} must be 'params.<name>', 'steps.<step>.arguments.<name>' "
            "or 'steps.<step>.result' (with a path)")
    if mode not in MODES:
        raise BindingError(f"mode {str(mode)[:40]!r} must be one of {', '.join(MODES)}")
    if m["result"]:
        if path is None:
            raise BindingError("a binding to a step's result needs a path (a JSON Pointer, '*' for every element)")
        return Binding("result", m["step"], pointer=parse_pointer(path), path=path, mode=mode)
    if path is not None:
        raise BindingError("path is for bindings to a step's result; parameters and arguments are named directly")
    if m["param"]:
        return Binding("params", m["param"], mode=mode)
    return Binding("arguments", m["step"], keys=tuple(m["arg"].split(".")), mode=mode)


def _walk(node: Any, pointer: tuple[str, ...], out: list[Any]) -> None:
    if len(out) > MAX_VALUES:
        return
    if not pointer:
        out.append(node)
        return
    head, rest = pointer[0], pointer[1:]
    if head == "*":
        children = node if isinstance(node, list) else list(node.values()) if isinstance(node, dict) else []
        for child in children:
            _walk(child, rest, out)
            if len(out) > MAX_VALUES:
                return
    elif isinstance(node, dict) and head in node:
        _walk(node[head], rest, out)
    elif isinstance(node, list) and head.isdigit() and (head == "0" or not head.startswith("0")):
        index = int(head)
        if index < len(node):
            _walk(node[index], rest, out)


def extract(document: Any, pointer: tuple[str, ...]) -> tuple[list[Any], bool]:
    """The values at ``pointer`` that may be kept, and whether any had to be dropped (too
    many, too large, or not plain JSON)."""
    found: list[Any] = []
    _walk(document, pointer, found)
    dropped = len(found) > MAX_VALUES
    kept = []
    for value in found[:MAX_VALUES]:
        try:
            size = len(canonical_json(value))
        except Exception:  # noqa: BLE001 - NaN, integers beyond 2**53: not comparable, not kept
            dropped = True
            continue
        if size > MAX_VALUE_BYTES:
            dropped = True
            continue
        kept.append(value)
    return kept, dropped


def result_document(structured: Any, texts: list[str]) -> Any:
    """What a result's paths are read from: its structured content, else its one text content
    parsed as JSON (an upstream that answers JSON as text); None when there is neither."""
    if isinstance(structured, dict | list):
        return structured
    if len(texts) == 1 and len(texts[0]) <= 4_000_000:
        try:
            parsed = json.loads(texts[0])
        except (ValueError, RecursionError):
            return None
        if isinstance(parsed, dict | list):
            return parsed
    return None


def _key(value: Any) -> bytes | None:
    try:
        return canonical_json(value)
    except Exception:  # noqa: BLE001 - not JSON: equal to nothing
        return None


def _date_of(value: Any) -> date | None:
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        return datetime.fromisoformat(value).date()
    except ValueError:
        return None


def judge(binding: Binding, candidates: list[Any], value: Any) -> Verdict:
    """Whether ``value`` satisfies ``binding`` given the values the task holds for it."""
    if binding.source != "result" and binding.mode in ("one_of", "subset_of") and len(candidates) == 1 \
            and isinstance(candidates[0], list):
        candidates = candidates[0]  # a list parameter or argument: its elements are the candidates
    keys = {k for k in map(_key, candidates) if k is not None}
    if not keys:
        return "unresolved"
    mode = binding.mode
    if mode == "equals":
        return "ok" if len(keys) == 1 and _key(value) in keys else "mismatch"
    if mode == "one_of":
        return "ok" if _key(value) in keys else "mismatch"
    if mode == "contains":
        if not isinstance(value, list):
            return "mismatch"
        have = {_key(v) for v in value}
        return "ok" if keys <= have else "mismatch"
    if mode == "subset_of":
        if not isinstance(value, list):
            return "mismatch"
        return "ok" if all(_key(v) in keys for v in value) else "mismatch"
    if len(keys) != 1:  # prefix and date compare with one value
        return "mismatch"
    (only,) = [c for c in candidates if _key(c) in keys][:1]
    if mode == "prefix":
        return "ok" if isinstance(only, str) and isinstance(value, str) and value.startswith(only) else "mismatch"
    wanted, got = _date_of(only), _date_of(value)
    return "ok" if wanted is not None and got is not None and wanted == got else "mismatch"


def keep_values(document: Any, keep: dict[str, tuple[str, ...]]) -> tuple[dict[str, list[Any]], set[str]]:
    """The values at each of ``keep``'s paths in a result ``document`` (see ``result_document``),
    and the paths where some had to be dropped."""
    values: dict[str, list[Any]] = {}
    dropped: set[str] = set()
    for path, pointer in keep.items():
        found, lost = extract(document, pointer) if document is not None else ([], False)
        values[path] = found
        if lost:
            dropped.add(path)
    return values, dropped
