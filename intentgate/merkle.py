"""RFC 9162 Merkle trees: tree hashes, inclusion and consistency proofs, and their verifiers.

The decision log is the sequence of its entries' leaf hashes (``SHA-256(0x00 || entry)``,
§2.1.1); a checkpoint signs the tree head (size, root hash) over a prefix of it.  Everything
here is pure: an auditor or a SIEM verifies a proof printed by ``intentgate audit prove`` or
``audit consistency`` with :func:`verify_inclusion` / :func:`verify_consistency` and a
checkpoint (``intentgate.checkpoints.verify_checkpoint``), without the gateway's database.

Hashes are ``bytes`` of 32; proofs print them as lower-case hex.  The algorithms are those of
RFC 9162 §2.1.3 and §2.1.4, written from the text (PATH, PROOF/SUBPROOF and the two
verification procedures), and checked against the RFC 6962 test vectors in the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256()


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes (RFC 9162 §2.1.1), in O(n) hashing and O(log n) memory."""
    frontier = Frontier()
    for h in leaves:
        frontier.append(h)
    return frontier.root()


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return leaves[lo]
    k = _split(hi - lo)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(m, D[n]): the audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
    n = len(leaves) if size is None else size
    if not 0 <= index < n <= len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of size {n}")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:  # walk down, collecting the sibling subtree at each split
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaves, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(leaves: Sequence[bytes], first: int, second: int | None = None) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 §2.1.4.1): the tree of ``first`` leaves is a prefix of ``second``."""
    n = len(leaves) if second is None else second
    if not 0 <= first <= n <= len(leaves):
        raise ValueError(f"no consistency proof from size {first} to size {n}")
    if first == 0 or first == n:
        return []
    out: list[bytes] = []
    _subproof(leaves, first, 0, n, True, out)
    return out


def _subproof(leaves: Sequence[bytes], m: int, lo: int, hi: int, whole: bool, out: list[bytes]) -> None:
    n = hi - lo
    if m == n:
        if not whole:
            out.append(_mth(leaves, lo, hi))
        return
    k = _split(n)
    if m <= k:
        _subproof(leaves, m, lo, lo + k, whole, out)
        out.append(_mth(leaves, lo + k, hi))
    else:
        _subproof(leaves, m - k, lo + k, hi, False, out)
        out.append(_mth(leaves, lo, lo + k))


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` prove leaf hash ``leaf`` at ``index`` under ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       path: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (``first``, ``first_root``) a prefix of (``second``, ``second_root``)?

    ``first == 0`` (the empty tree) is a prefix of every tree; ``first == second`` holds when
    the roots are equal and the path is empty.
    """
    if not 0 <= first <= second:
        return False
    if first == 0:
        return not path
    if first == second:
        return not path and first_root == second_root
    if not path:
        return False
    nodes = list(path)
    if first & (first - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        nodes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


@dataclass
class Frontier:
    """The compact form of a tree: the roots of its perfect subtrees, largest (leftmost) first.

    ``size`` = sum of 2**height over them.  Appending a leaf costs O(1) amortised hashes, so
    the sealer extends the tree incrementally and never rereads sealed leaves.
    """

    size: int = 0
    nodes: list[tuple[int, bytes]] = field(default_factory=list)  # (height, hash)

    def append(self, leaf: bytes) -> None:
        height, h = 0, leaf
        while self.nodes and self.nodes[-1][0] == height:
            _, left = self.nodes.pop()
            h, height = node_hash(left, h), height + 1
        self.nodes.append((height, h))
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r

    def dump(self) -> dict[str, object]:
        return {"size": self.size, "nodes": [[height, h.hex()] for height, h in self.nodes]}

    @classmethod
    def load(cls, data: dict[str, object]) -> Frontier:
        nodes = [(int(height), bytes.fromhex(h)) for height, h in data["nodes"]]  # type: ignore[union-attr]
        frontier = cls(int(data["size"]), nodes)  # type: ignore[call-overload]
        if sum(1 << height for height, _ in nodes) != frontier.size:
            raise ValueError("frontier nodes do not add up to its size")
        return frontier
