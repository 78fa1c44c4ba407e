"""Near-duplicate groups: connected components of the graph "cosine(a, b) >= threshold", exactly.

Definition. The cosine of two stored embeddings (float16 vectors, converted exactly to float64) is
dot(a, b) / (|a| |b|), computed in float64. Two samples are in the same group when a chain of samples
links them, each consecutive pair with cosine >= threshold (transitive closure); with `partition`, only
samples of the same partition (style, prompt) are compared.

How, at scale (N samples, D dims):
- blockwise matrix products over the normalised embeddings, `block` rows at a time (float32 on CPU,
  float16 with float32 accumulation on CUDA), so memory is O(block^2 + block * D) besides the
  embeddings themselves (which may be a np.memmap: blocks are read as needed);
- a product only proposes candidates: every pair above `threshold - margin`, where the margin bounds the
  rounding of that product (float32: |error| <= D * 2^-24 * sum|a_i b_i| <= D * 6e-8 for unit vectors,
  under 1e-4 for D <= 1536; float16 inputs add a relative 2^-11 per element, under 1e-3 in all), and each
  candidate is then decided by the float64 definition above. So the result is exact, not approximate;
- the groups are kept in a union-find forest (numpy arrays, vectorised unions per block), N int64s.
Cost: N^2 D / 2 multiply-adds (per partition: the sum of its sizes squared): one pass, no index to build.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MARGIN = {"float32": 2e-3, "float16": 8e-3}  # comfortably above the rounding bounds in the docstring


def duplicate_groups(
    vectors: np.ndarray,
    threshold: float,
    *,
    partition: np.ndarray | None = None,
    block: int = 4096,
    device: str | None = None,
) -> np.ndarray:
    """The group label of every row of `vectors` (N, D): the smallest row index of its group.

    Rows that are all zero or non-finite have no direction: each is a group of its own."""
    import torch

    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"the cosine threshold must be in [-1, 1], got {threshold}")
    count = len(vectors)
    norms = _norms(vectors, block)
    usable = np.isfinite(norms) & (norms > 0)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    margin = MARGIN["float16" if dtype == torch.float16 else "float32"]
    parent = np.arange(count, dtype=np.int64)

    for members in _partitions(partition, usable):
        for start in range(0, len(members), block):
            rows = members[start : start + block]
            left = _normalised(vectors, norms, rows, device, dtype)
            for other in range(start, len(members), block):
                columns = members[other : other + block]
                right = left if other == start else _normalised(vectors, norms, columns, device, dtype)
                similar = (left @ right.T).float() >= threshold - margin
                if other == start:
                    similar = torch.triu(similar, diagonal=1)  # each pair once, never a row with itself
                a, b = (index.cpu().numpy() for index in similar.nonzero(as_tuple=True))
                if a.size:
                    a, b = rows[a], columns[b]
                    exact = _cosines64(vectors, norms, a, b) >= threshold
                    _union(parent, a[exact], b[exact])
    return _labels(parent)


def _partitions(partition: np.ndarray | None, usable: np.ndarray) -> Iterator[np.ndarray]:
    """Row indices of each partition (sorted), leaving out rows without a direction."""
    indices = np.flatnonzero(usable)
    if partition is None:
        yield indices
        return
    keys = np.asarray(partition)[indices]
    order = np.argsort(keys, kind="stable")
    indices, keys = indices[order], keys[order]
    bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    yield from np.split(indices, bounds)


def _norms(vectors: np.ndarray, block: int) -> np.ndarray:
    norms = np.empty(len(vectors), np.float64)
    for start in range(0, len(vectors), block * 16):
        part = np.asarray(vectors[start : start + block * 16], dtype=np.float64)
        norms[start : start + len(part)] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return norms


def _normalised(vectors, norms, rows, device, dtype):
    import torch

    part = np.asarray(vectors[rows], dtype=np.float64) / norms[rows, None]
    return torch.from_numpy(part.astype(np.float32)).to(device=device, dtype=dtype)


def _cosines64(vectors, norms, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The definition, in float64, for candidate pairs (a[k], b[k])."""
    dots = np.einsum("ij,ij->i", np.asarray(vectors[a], np.float64), np.asarray(vectors[b], np.float64))
    return dots / (norms[a] * norms[b])


def _find(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    roots = parent[nodes]
    while True:
        up = parent[roots]
        if np.array_equal(up, roots):
            break
        roots = up
    parent[nodes] = roots  # path compression for the nodes asked about
    return roots


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Merge the groups of every pair (a[k], b[k]); a root always points to a smaller index. Concurrent
    writes to one root keep one of them, so repeat until every pair shares a root."""
    while a.size:
        ra, rb = _find(parent, a), _find(parent, b)
        apart = ra != rb
        a, b = ra[apart], rb[apart]
        if a.size:
            parent[np.maximum(a, b)] = np.minimum(a, b)


def _labels(parent: np.ndarray) -> np.ndarray:
    while True:  # pointer jumping until every node points at its root
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up
