"""RFC 9162 Merkle trees: the RFC 6962 reference vectors, and proofs over random trees."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentgate.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

# Certificate Transparency's reference leaves and the root of each tree size 1..8
CT_ENTRIES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_LEAVES = [leaf_hash(e) for e in CT_ENTRIES]


def test_roots_match_the_rfc6962_vectors() -> None:
    assert EMPTY_ROOT.hex() == hashlib.sha256(b"").hexdigest() == root_hash([]).hex()
    for n in range(1, 9):
        assert root_hash(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1], n


def test_inclusion_paths_match_the_rfc6962_vectors() -> None:
    assert [p.hex() for p in inclusion_proof(CT_LEAVES, 0)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [p.hex() for p in inclusion_proof(CT_LEAVES, 5)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


def test_consistency_path_from_2_to_8_starts_as_in_the_vectors() -> None:
    proof = [p.hex() for p in consistency_proof(CT_LEAVES, 2, 8)]
    assert proof[:2] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    root2, root8 = bytes.fromhex(CT_ROOTS[1]), bytes.fromhex(CT_ROOTS[7])
    assert verify_consistency(2, 8, root2, root8, [bytes.fromhex(p) for p in proof])


def _leaves(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(f"entry-{salt}-{i}".encode()) for i in range(n)]


def test_every_proof_verifies_in_every_small_tree_and_a_changed_one_does_not() -> None:
    leaves = _leaves(33)
    for n in range(1, len(leaves) + 1):
        root = root_hash(leaves[:n])
        for i in range(n):
            path = inclusion_proof(leaves, i, n)
            assert verify_inclusion(leaves[i], i, n, path, root)
            assert not verify_inclusion(leaves[(i + 1) % n], i, n, path, root) or n == 1
            assert not verify_inclusion(leaves[i], i + 1, n, path, root) or n == 1
            if path:
                bad = [*path[:-1], node_hash(path[-1], path[-1])]
                assert not verify_inclusion(leaves[i], i, n, bad, root)
        for m in range(0, n + 1):
            proof = consistency_proof(leaves, m, n)
            assert verify_consistency(m, n, root_hash(leaves[:m]), root, proof), (m, n)
            if 0 < m < n:
                assert not verify_consistency(m, n, root_hash(_leaves(m, salt=1)), root, proof)
                assert not verify_consistency(m, n, root_hash(leaves[:m]), root, proof[:-1])


def test_frontier_grows_the_same_root_and_survives_a_round_trip() -> None:
    leaves = _leaves(100)
    frontier = Frontier()
    for i, h in enumerate(leaves):
        frontier.append(h)
        assert frontier.root() == root_hash(leaves[: i + 1])
        frontier = Frontier.load(frontier.dump())
    assert frontier.size == 100
    broken = frontier.dump()
    broken["size"] = 99
    with pytest.raises(ValueError):
        Frontier.load(broken)


def test_out_of_range_requests_are_refused() -> None:
    leaves = _leaves(4)
    with pytest.raises(ValueError):
        inclusion_proof(leaves, 4)
    with pytest.raises(ValueError):
        consistency_proof(leaves, 5, 4)
    assert not verify_inclusion(leaves[0], 4, 4, [], root_hash(leaves))
    assert not verify_consistency(3, 2, EMPTY_ROOT, EMPTY_ROOT, [])


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_random_trees_prove_inclusion_and_consistency(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n, salt=n)
    index = data.draw(st.integers(0, n - 1))
    root = root_hash(leaves)
    path = inclusion_proof(leaves, index)
    assert verify_inclusion(leaves[index], index, n, path, root)
    if path:  # any flipped byte in any node breaks it
        k = data.draw(st.integers(0, len(path) - 1))
        flipped = path[k][:-1] + bytes([path[k][-1] ^ 1])
        assert not verify_inclusion(leaves[index], index, n, [*path[:k], flipped, *path[k + 1:]], root)
    m = data.draw(st.integers(1, n))
    proof = consistency_proof(leaves, m)
    assert verify_consistency(m, n, root_hash(leaves[:m]), root, proof)
    if m < n:  # a log that rewrote any of its first m entries is not consistent with the old head
        j = data.draw(st.integers(0, m - 1))
        forged = [*leaves[:j], leaf_hash(b"forged"), *leaves[j + 1:]]
        assert not verify_consistency(m, n, root_hash(leaves[:m]), root_hash(forged), consistency_proof(forged, m))
