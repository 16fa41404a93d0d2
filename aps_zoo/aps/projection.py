"""Projection matrices of Affine Parameter Sharing.

Each candidate width ``c`` of a layer axis reads the shared meta weight through a projection of
shape ``(meta_width, c)``. Projections start as identity blocks placed by ``overlap``: overlap 1
puts every candidate at the front (ordinal sharing: candidate = first c channels), overlap 0
gives disjoint blocks (independent weights). Both are special cases of APS.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, Hashable, Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn

INIT_NOISE = 1e-3


def overlap_offsets(candidates: Sequence[int], overlap: float) -> list:
    """Row offset of each candidate's identity block (candidates taken in ascending order)."""
    ordered = sorted(candidates)
    offsets, start = {}, 0
    for c in ordered:
        offsets[c] = int(round((1.0 - overlap) * start))
        start += c
    return [offsets[c] for c in candidates]


def required_meta_width(candidates: Sequence[int], overlap: float) -> int:
    """Smallest meta width that holds every candidate's block at ``overlap``."""
    return max(o + c for o, c in zip(overlap_offsets(candidates, overlap), candidates))


def init_projection(meta_width: int, width: int, offset: int, noise: float = INIT_NOISE,
                    generator: torch.Generator = None) -> torch.Tensor:
    """An identity block at rows ``offset:offset+width`` of a ``(meta_width, width)`` matrix, plus noise."""
    if offset + width > meta_width:
        raise ValueError(f"candidate width {width} at offset {offset} does not fit meta width {meta_width}")
    if torch.get_default_device().type == 'meta':  # a shape-only build (memory estimates): no values
        return torch.empty(meta_width, width)
    p = torch.randn(meta_width, width, generator=generator) * noise
    p[offset:offset + width] += torch.eye(width)
    return p


@torch.no_grad()
def renormalize_columns_(p: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale every column of ``p`` to unit L2 norm in place (the optional hard constraint)."""
    p.div_(p.norm(dim=0, keepdim=True).clamp_min(eps))
    return p


class ProjectionBank(nn.Module):
    """Every projection of one layer axis in one parameter, stored transposed: ``weight: (total width,
    meta_width)``, one row per projection column.

    Each candidate pair's ``(meta_width, c)`` matrix is the transpose of a block of ``c`` rows
    (``bank[key]``, a view), and the blocks of one penalty group are consecutive, so a group is one
    contiguous ``(width, meta_width)`` slab: its Gram and the penalty's gradient are plain batched matmuls
    on contiguous memory, and the optimizer, the renormalisation and the gradient touch one tensor per
    axis instead of one per pair. ``blocks``: (group, pair key, width, row offset of its identity block),
    in the order the initial noise is drawn.
    """

    def __init__(self, meta_width: int, blocks: Sequence[Tuple[Hashable, str, int, int]], noise: float = INIT_NOISE):
        super().__init__()
        drawn = {key: init_projection(meta_width, width, offset, noise) for _, key, width, offset in blocks}
        self.members: Dict[Hashable, List[str]] = {}  # group -> its pair keys, in row order
        for group, key, *_ in blocks:
            self.members.setdefault(group, []).append(key)
        self.spans: Dict[str, Tuple[int, int]] = {}  # pair key -> its rows
        start, group_spans = 0, []
        for keys in self.members.values():
            group_spans.append((start, start + sum(drawn[k].shape[1] for k in keys)))
            for key in keys:
                self.spans[key] = (start, start + drawn[key].shape[1])
                start += drawn[key].shape[1]
        # no pairs: a stride-1 shortcut whose widths are always equal (the identity) in a one-candidate space
        self.weight = nn.Parameter(torch.cat([drawn[key].t() for key in self.spans]) if self.spans
                                   else torch.empty(0, meta_width))
        self.batches = _equal_width_runs(group_spans)

    def __getitem__(self, key: str) -> torch.Tensor:
        start, stop = self.spans[key]
        return self.weight[start:stop].t()

    def pair_grad(self, key: str) -> torch.Tensor:
        """The gradient of one pair's matrix (a view of ``weight.grad``); None before any backward."""
        start, stop = self.spans[key]
        return None if self.weight.grad is None else self.weight.grad[start:stop].t()

    def __contains__(self, key: str) -> bool:
        return key in self.spans

    def keys(self) -> List[str]:
        return list(self.spans)

    def items(self) -> Iterator[Tuple[str, torch.Tensor]]:
        return ((key, self[key]) for key in self.spans)

    def groups(self) -> Dict[Hashable, List[torch.Tensor]]:
        """The pair matrices of each penalty group (views), groups in row order."""
        return {group: [self[key] for key in keys] for group, keys in self.members.items()}

    def group_slabs(self, tensor: torch.Tensor = None) -> Iterator[torch.Tensor]:
        """Each run of consecutive equal-width groups of ``tensor`` (default ``weight``; its gradient
        works too) as one contiguous ``(groups, width, meta_width)`` view: group ``g``'s concatenated
        projections, transposed."""
        tensor = self.weight if tensor is None else tensor
        for start, count, width in self.batches:
            yield tensor[start:start + count * width].view(count, width, -1)

    @torch.no_grad()
    def renormalize_(self) -> None:
        """Scale every projection column (a row of ``weight``) to unit L2 norm."""
        renormalize_columns_(self.weight.t())


def _equal_width_runs(spans: Sequence[Tuple[int, int]]) -> List[Tuple[int, int, int]]:
    """(start row, number of groups, width) of each run of consecutive groups of one width."""
    runs: List[List[int]] = []
    for start, stop in spans:
        if runs and runs[-1][2] == stop - start:
            runs[-1][1] += 1
        else:
            runs.append([start, 1, stop - start])
    return [tuple(r) for r in runs]


def off_diagonal_l1_grad_(slab: torch.Tensor, scale: float, out: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """:func:`off_diagonal_l1` of the transposed batch ``slab: (G, cols, rows)`` (one value per matrix,
    without autograd); ``scale`` times its gradient, ``2 S slab`` for the sign pattern ``S`` of the
    off-diagonal Gram, is added to ``out`` (contiguous, the shape of ``slab``), or written into it
    without ``accumulate`` (its contents ignored)."""
    gram = _off_diagonal_gram(slab.transpose(1, 2))
    value = torch.linalg.vector_norm(gram, 1, dim=(1, 2))
    torch.baddbmm(out, gram.sign_(), slab, beta=1 if accumulate else 0, alpha=2 * scale, out=out)
    return value


def _off_diagonal_gram(a: torch.Tensor) -> torch.Tensor:
    """``a_g^T a_g`` of each matrix of a batch with its diagonal zeroed, in ``a``'s precision (also
    under mixed precision)."""
    device = a.device.type
    with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
        gram = a.transpose(1, 2) @ a
    gram.diagonal(dim1=1, dim2=2).zero_()
    return gram


def off_diagonal_l1(a: torch.Tensor) -> torch.Tensor:
    """L1 norm of the off-diagonal of ``a^T a`` (zero iff the columns are mutually orthogonal);
    for a batch ``(G, rows, cols)`` one value per matrix. Plain autograd: the search's step uses
    :func:`off_diagonal_l1_grad_` instead, so this stays the definition its gradient is checked against."""
    gram = _off_diagonal_gram(a if a.dim() == 3 else a[None])
    values = gram.abs().sum((1, 2))
    return values if a.dim() == 3 else values[0]


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How much the column spaces of ``a`` and ``b`` share, in [0, 1].

    Mean squared cosine of the principal angles between the two subspaces
    (``||Qa^T Qb||_F^2 / min(rank)``): 1 when the smaller lies inside the larger, 0 when orthogonal.
    """
    return basis_overlap(orthonormal_basis(a), orthonormal_basis(b))


def orthonormal_basis(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of ``p`` (reduced QR, float32, detached)."""
    return torch.linalg.qr(p.detach().float())[0]


def basis_overlap(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """:func:`subspace_overlap` of two orthonormal bases."""
    return (qa.t() @ qb).pow(2).sum() / min(qa.shape[1], qb.shape[1])
