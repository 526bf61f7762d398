"""Names that come from outside, checked before anything is matched against them.

- **Identity globs** (intent ``agents``, task issuers' ``subjects`` and ``agents``) match
  segment by segment: ``*`` and ``?`` stay within one ``/``-separated segment, ``**`` crosses
  them.  The same semantics as Rego's ``glob.match(pattern, ["/"], value)``, which the base
  policy uses, so the gateway's listings and the policy agree.  ``**`` may only be the whole
  last segment (``spiffe://example.org/agent/**``): elsewhere OPA and the embedded engine
  (regorus) disagree on what it matches (``a-**`` against ``a-b/c``, ``a/**/c`` against ``a/c``).
- **SPIFFE IDs** are checked against the SPIFFE ID specification (trust domain of
  ``[a-z0-9._-]``, a path of non-empty segments of ``[A-Za-z0-9._-]``, no ``.`` or ``..``
  segment, no percent-encoding, query or fragment) before they are matched against anything.
- **Resource URIs** (RFC 3986) are normalised before the policy sees them: percent-encoded
  unreserved characters are decoded, other escapes upper-cased; an encoded ``/``, ``\\`` or
  NUL, a ``.`` or ``..`` path segment (encoded or not), a control character or a
  malformed escape is refused.  The normalised URI is what is decided and what is forwarded.
- **Prompt names** are NFC-normalised; control characters and ``%`` are refused.
"""

from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["RefusedName", "glob_match", "identity_glob_problem", "normalise_prompt_name", "normalise_uri",
           "spiffe_id_problem"]


class RefusedName(ValueError):
    """A name refused before matching: the message says why (for the log, not for agents)."""


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, value: str) -> bool:
    """``*``/``?`` within one ``/`` segment, ``**`` across (Rego ``glob.match`` with ``["/"]``)."""
    return _glob(pattern).fullmatch(value) is not None


def identity_glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused as an identity glob (``None`` when it is fine)."""
    body = pattern[:-3] if pattern.endswith("/**") else ("" if pattern == "**" else pattern)
    if "**" in body:
        return "'**' may only be the whole last segment (e.g. spiffe://example.org/agent/**)"
    return None


_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def spiffe_id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid SPIFFE ID of a workload (``None`` when it is)."""
    if not value.startswith("spiffe://"):
        return "not a spiffe:// URI"
    rest = value[len("spiffe://"):]
    domain, slash, path = rest.partition("/")
    if not domain or not _TRUST_DOMAIN.fullmatch(domain):
        return "trust domain must be non-empty, of [a-z0-9._-]"
    if not slash or not path:
        return "a workload's SPIFFE ID has a path"
    for segment in path.split("/"):
        if not segment:
            return "empty path segment"
        if segment in (".", ".."):
            return "'.' or '..' path segment"
        if not _SEGMENT.fullmatch(segment):
            return "path segments are of [A-Za-z0-9._-] (no percent-encoding, query or fragment)"
    return None


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_REFUSED_ESCAPES = {"2F": "an encoded '/'", "5C": "an encoded '\\'", "00": "an encoded NUL"}


def normalise_uri(uri: str) -> str:
    """The RFC 3986 normal form of a resource URI, or :class:`RefusedName` (see the module doc)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise RefusedName("a control character")
    if re.search(r"%(?![0-9A-Fa-f]{2})", uri):
        raise RefusedName("a malformed percent escape")

    def fix(m: re.Match[str]) -> str:
        code = m.group(1).upper()
        if code in _REFUSED_ESCAPES:
            raise RefusedName(_REFUSED_ESCAPES[code])
        char = chr(int(code, 16))
        return char if char in _UNRESERVED else f"%{code}"

    normal = _ESCAPE.sub(fix, uri)
    scheme, colon, rest = normal.partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise RefusedName("no scheme")
    path = rest.split("?", 1)[0].split("#", 1)[0]
    if path.startswith("//"):
        path = path[2:].partition("/")[2]  # after the authority
    if any(segment in (".", "..") for segment in path.split("/")):
        raise RefusedName("a '.' or '..' path segment")
    return scheme.lower() + ":" + rest


def normalise_prompt_name(name: str) -> str:
    """A prompt name in NFC, or :class:`RefusedName` for control characters or ``%``."""
    if any(unicodedata.category(c) == "Cc" for c in name) or "%" in name:
        raise RefusedName("a control character or '%'")
    return unicodedata.normalize("NFC", name)
