"""Proof documents of the decision log, and their verifier (no database needed).

``intentgate audit prove DECISION_ID`` prints an **inclusion proof** and ``intentgate audit
consistency OLD NEW`` a **consistency proof**, each as one JSON document in the shapes of RFC
9162 (§2.1.3, §2.1.4) together with the signed checkpoint(s) they are proved against::

    {"kind": "inclusion", "origin": "...", "decision": {...the row...}, "leaf_index": 41,
     "tree_size": 1042, "leaf_hash": "<hex>", "inclusion_path": ["<hex>", ...], "checkpoint": "<note>"}
    {"kind": "consistency", "origin": "...", "first": {"size": 1000, "root": "<hex>", "checkpoint": "<note>"},
     "second": {...}, "consistency_path": ["<hex>", ...]}

:func:`verify_proof` checks one with nothing but the audit public keys (pinned by the auditor,
e.g. from ``/.well-known/intentgate-audit-keys`` saved earlier): the checkpoint signatures,
the decision's own hash (recomputed from its fields), and the Merkle path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checkpoints import CheckpointError, verify_checkpoint
from .merkle import verify_consistency, verify_inclusion
from .store.records import entry_hash, leaf_of

__all__ = ["verify_proof"]


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(h, str) and len(h) == 64 for h in value):
        raise CheckpointError(f"proof: {what} must be a list of 64-digit hex hashes")
    try:
        return [bytes.fromhex(h) for h in value]
    except ValueError as exc:
        raise CheckpointError(f"proof: {what} holds a non-hex hash") from exc


def verify_proof(doc: dict[str, Any], keys: Iterable[tuple[str, Ed25519PublicKey]]) -> str:
    """Check a proof document; returns what it proved, raises :class:`CheckpointError` if it does not."""
    keys = list(keys)
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "inclusion":
        checkpoint = verify_checkpoint(str(doc.get("checkpoint", "")), keys)
        decision = doc.get("decision")
        index, size = doc.get("leaf_index"), doc.get("tree_size")
        if not isinstance(decision, dict) or not isinstance(index, int) or size != checkpoint.size:
            raise CheckpointError("proof: needs decision, leaf_index and the checkpoint's tree_size")
        try:
            recomputed = entry_hash(decision)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"proof: the decision cannot be hashed: {exc}") from exc
        if recomputed != decision.get("hash"):
            raise CheckpointError("proof: the decision's fields do not give its hash (edited?)")
        leaf = leaf_of(recomputed, int(decision.get("hash_v") or 1))
        if not verify_inclusion(leaf, index, size, _hashes(doc.get("inclusion_path"), "inclusion_path"),
                                checkpoint.root):
            raise CheckpointError(f"proof: decision {decision.get('id')} is not leaf {index} of the tree "
                                  f"the checkpoint of size {size} signs")
        return f"decision {decision.get('id')} is leaf {index} of the signed tree of size {size}"
    if kind == "consistency":
        first, second = doc.get("first") or {}, doc.get("second") or {}
        a = verify_checkpoint(str(first.get("checkpoint", "")), keys)
        b = verify_checkpoint(str(second.get("checkpoint", "")), keys)
        if not verify_consistency(a.size, b.size, a.root, b.root,
                                  _hashes(doc.get("consistency_path"), "consistency_path")):
            raise CheckpointError(f"proof: the tree of size {a.size} is not a prefix of the tree of size {b.size}")
        return f"the signed tree of size {a.size} is a prefix of the signed tree of size {b.size}"
    raise CheckpointError("proof: kind must be inclusion or consistency")
