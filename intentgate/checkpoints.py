"""Signed checkpoints of the decision log, and where they are published.

A checkpoint is the log's tree head (origin, tree size, root hash, time) in the C2SP
``tlog-checkpoint`` format, signed as a C2SP signed note with the gateway's **audit key**
(Ed25519, its own directory ``<data_dir>/keys/audit``, separate from the action-token keys;
rotated keys' public halves are kept so old checkpoints stay checkable)::

    intentgate/audit
    1042
    3q2+7w...base64 root hash...=
    time 2026-12-01T15:54:09Z

    — intentgate/audit AbCd...base64(key hash || signature)...

The gateway stores each checkpoint in its database *and* appends it to sinks outside it
(``audit.checkpoints.sinks``: an append-only JSON-lines file, or an HTTP witness that is
POSTed the note).  Someone who can rewrite the database can recompute every hash in it, but
not sign a checkpoint, nor reach the copies already published: ``intentgate audit verify
--checkpoints FILE`` recomputes the tree from the database and compares it with each
published head, which finds any rewrite, reordering or truncation of what they cover.

Everything here but :class:`HttpSink` and :class:`FileSink` is pure; :func:`verify_checkpoint`
with the published verifier key (``GET /.well-known/intentgate-audit-keys``) is what an
auditor needs, together with ``intentgate.merkle``'s proof verifiers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import GatewayError
from .keys import KeySet, PublicKeySet, SigningKey

__all__ = [
    "AuditSigner",
    "Checkpoint",
    "CheckpointError",
    "FileSink",
    "HttpSink",
    "read_published",
    "sign_checkpoint",
    "verifier_key",
    "parse_verifier_key",
    "verify_checkpoint",
]

log = logging.getLogger("intentgate.audit")

_ED25519 = b"\x01"  # signed-note signature type for Ed25519
_DASH = "\u2014 "
_B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class CheckpointError(GatewayError):
    """A checkpoint or verifier key that does not parse, or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    at: float

    def body(self) -> str:
        stamp = datetime.fromtimestamp(self.at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\ntime {stamp}\n"


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_hash(name: str, public: Ed25519PublicKey) -> bytes:
    """signed-note key hash: the first 4 bytes of SHA-256(name || "\\n" || 0x01 || key)."""
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + _raw(public)).digest()[:4]


def verifier_key(name: str, public: Ed25519PublicKey) -> str:
    """The signed-note verifier key string ``<name>+<hex key hash>+<base64(0x01 || key)>``."""
    return f"{name}+{_key_hash(name, public).hex()}+{base64.b64encode(_ED25519 + _raw(public)).decode()}"


def parse_verifier_key(text: str) -> tuple[str, Ed25519PublicKey]:
    parts = text.strip().split("+", 2)  # the base64 key may hold "+" itself
    if len(parts) != 3 or not parts[0]:
        raise CheckpointError(f"not a verifier key (<name>+<hash>+<key>): {text[:80]!r}")
    name, hash_hex, key_b64 = parts
    try:
        raw = base64.b64decode(key_b64, validate=True)
        if len(raw) != 33 or raw[:1] != _ED25519:
            raise ValueError("not an Ed25519 key")
        public = Ed25519PublicKey.from_public_bytes(raw[1:])
    except (ValueError, binascii.Error) as exc:
        raise CheckpointError(f"verifier key {name!r}: {exc}") from exc
    if _key_hash(name, public).hex() != hash_hex.lower():
        raise CheckpointError(f"verifier key {name!r}: its key hash does not match the key")
    return name, public


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> str:
    """The checkpoint as a signed note, signed by ``key`` under the checkpoint's origin."""
    body = checkpoint.body()
    signature = key.private.sign(body.encode())
    blob = base64.b64encode(_key_hash(checkpoint.origin, key.public) + signature).decode()
    return f"{body}\n{_DASH}{checkpoint.origin} {blob}\n"


def _parse_body(body: str) -> Checkpoint:
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError("checkpoint body must be origin, size, root hash and a time line")
    origin, size, root, *extensions = lines[:-1]
    if not origin or not size.isdigit() or (len(size) > 1 and size.startswith("0")):
        raise CheckpointError("checkpoint: bad origin or tree size")
    try:
        root_bytes = base64.b64decode(root, validate=True)
    except binascii.Error as exc:
        raise CheckpointError("checkpoint: root hash is not base64") from exc
    if len(root_bytes) != 32:
        raise CheckpointError("checkpoint: root hash is not 32 bytes")
    stamps = [e[5:] for e in extensions if e.startswith("time ")]
    if len(stamps) != 1:
        raise CheckpointError("checkpoint: needs exactly one time line")
    try:
        at = datetime.fromisoformat(stamps[0].replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise CheckpointError(f"checkpoint: bad time {stamps[0]!r}") from exc
    return Checkpoint(origin, int(size), root_bytes, at)


def verify_checkpoint(note: str, keys: Iterable[tuple[str, Ed25519PublicKey]]) -> Checkpoint:
    """Parse a signed checkpoint and check it carries a valid signature by one of ``keys``
    (``(name, public key)`` pairs); raises :class:`CheckpointError` otherwise."""
    body, sep, signatures = note.partition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise CheckpointError("not a signed note (no blank line before the signatures)")
    body += "\n"
    checkpoint = _parse_body(body)
    wanted = {(name, _key_hash(name, public)): public for name, public in keys}
    for line in signatures[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise CheckpointError(f"signed note: bad signature line {line[:60]!r}")
        name, _, blob = line[len(_DASH):].rpartition(" ")
        if not _B64.match(blob):
            raise CheckpointError("signed note: signature is not base64")
        raw = base64.b64decode(blob)
        public = wanted.get((name, raw[:4]))
        if public is None or name != checkpoint.origin:
            continue
        try:
            public.verify(raw[4:], body.encode())
        except InvalidSignature:
            raise CheckpointError(f"checkpoint of size {checkpoint.size}: signature does not verify") from None
        return checkpoint
    raise CheckpointError(f"checkpoint of size {checkpoint.size}: not signed by a known audit key")


class AuditSigner:
    """Signs checkpoints with the current audit key, under the log's origin."""

    def __init__(self, keys: KeySet, origin: str) -> None:
        self.keys = keys
        self.origin = origin

    @classmethod
    def open(cls, directory: Path, origin: str) -> AuditSigner:
        return cls(KeySet.open_or_create(directory, retire_public=True), origin)

    def sign(self, size: int, root: bytes, at: float) -> tuple[str, str]:
        key = self.keys.current
        return sign_checkpoint(Checkpoint(self.origin, size, root, at), key), key.kid

    def public_keys(self) -> list[tuple[str, Ed25519PublicKey]]:
        """Every audit key that ever signed here (retired ones too), as (name, key) pairs."""
        public = self.keys.all_public()
        return [(self.origin, key) for kid in public.kids() if (key := public.get(kid)) is not None]

    def published(self) -> dict[str, Any]:
        """What ``/.well-known/intentgate-audit-keys`` serves: the origin, the signed-note
        verifier keys and the same keys as a JWKS, current first."""
        public = self.keys.all_public()
        current_first = [k.kid for k in reversed(self.keys.published())]
        kids = current_first + [kid for kid in public.kids() if kid not in current_first]
        keys = [(kid, key) for kid in kids if (key := public.get(kid)) is not None]
        return {"origin": self.origin,
                "verifier_keys": [verifier_key(self.origin, key) for _, key in keys],
                "jwks": PublicKeySet(dict(keys)).jwks()}


# ----- publication -----------------------------------------------------------------------
class FileSink:
    """Append each checkpoint as one JSON line (``{"size", "root", "at", "note"}``), fsynced.

    Meant for a file the gateway can append to but an operator of the database cannot
    rewrite (another host's mount, an append-only attribute, a log shipper's input)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file:{path}"

    async def publish(self, checkpoint: Checkpoint, note: str) -> None:
        line = json.dumps({"size": checkpoint.size, "root": checkpoint.root.hex(), "at": checkpoint.at,
                           "note": note}, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class HttpSink:
    """POST each checkpoint's note (``text/plain``) to a witness URL; any 2xx is success."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.name = f"url:{url}"

    async def publish(self, checkpoint: Checkpoint, note: str) -> None:
        import httpx2

        async with httpx2.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(self.url, content=note.encode(),
                                         headers={"content-type": "text/plain; charset=utf-8"})
            response.raise_for_status()


def read_published(source: Path) -> list[str]:
    """The notes in a file sink (JSON lines), or in a directory of ``*.note`` / JSON-lines files.

    A line that is not a JSON object with a ``note`` is a :class:`CheckpointError`: a damaged
    publication must be looked at, not skipped."""
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    notes: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read published checkpoints: {exc.strerror or exc}") from exc
        if path.suffix == ".note":
            notes.append(text)
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry: Any = json.loads(line)
            except ValueError as exc:
                raise CheckpointError(f"{path}:{n}: not a JSON line") from exc
            if not isinstance(entry, dict) or not isinstance(entry.get("note"), str):
                raise CheckpointError(f"{path}:{n}: no 'note' in the published checkpoint")
            notes.append(entry["note"])
    return notes
