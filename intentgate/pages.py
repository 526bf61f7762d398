"""Pages of the gateway's own listings: ``tools/list``, ``resources/list``,
``resources/templates/list`` and ``prompts/list``.

The gateway merges what every upstream lists for an agent into one listing (each upstream's
own pages are followed to the end in ``upstreams``) and hands it out ``front.page_size``
items at a time, the rest behind ``nextCursor``.  A cursor is opaque to the client: it holds
the offset of the next page and a fingerprint of the whole listing as it was when the
previous page was given.  A cursor that is not one of the gateway's, or whose listing has
changed since (an upstream's ``list_changed``, an intent registered or removed), is refused
with ``INVALID_PARAMS``, which the protocol tells a client to take as "list again from the
start", rather than handing out a page that would skip or repeat items.  A cursor names
nothing beyond what the agent was already listed, so it needs no signature: a forged offset
only selects another page of the agent's own listing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import mcp_types as types
from mcp import MCPError

__all__ = ["page"]

T = TypeVar("T")


def _fingerprint(keys: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _cursor(fingerprint: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{fingerprint}.{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str, fingerprint: str, total: int, what: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seen, _, offset_text = raw.partition(".")
        offset = int(offset_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MCPError(types.INVALID_PARAMS, f"invalid cursor for {what}: not one this gateway gave",
                       {"reasons": ["malformed_request:cursor"]}) from None
    if seen != fingerprint or not 0 < offset < total:
        raise MCPError(types.INVALID_PARAMS, f"stale cursor for {what}: the listing changed; list again from the start",
                       {"reasons": ["malformed_request:cursor"]})
    return offset


def page(items: Sequence[T], cursor: str | None, size: int, key: Callable[[T], str],
         what: str) -> tuple[list[T], str | None]:
    """The page of ``items`` that ``cursor`` names (the first without one), and the cursor of the next
    page (``None`` on the last).  ``key`` names an item (its exposed name or URI) for the fingerprint."""
    fingerprint = _fingerprint([key(item) for item in items]) if cursor is not None or len(items) > size else ""
    offset = 0 if cursor is None else _offset(cursor, fingerprint, len(items), what)
    end = offset + size
    return list(items[offset:end]), (_cursor(fingerprint, end) if end < len(items) else None)
