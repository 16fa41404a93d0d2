"""Projection matrices of Affine Parameter Sharing.

Each candidate width ``c`` of a layer axis reads the shared meta weight through a projection of
shape ``(meta_width, c)``. Projections start as identity blocks placed by ``overlap``: overlap 1
puts every candidate at the front (ordinal sharing: candidate = first c channels), overlap 0
gives disjoint blocks (independent weights). Both are special cases of APS.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch

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


class _OffDiagonalL1(torch.autograd.Function):
    """L1 norm of the off-diagonal of ``a_g^T a_g`` for each matrix of a batch ``a: (G, rows, cols)``,
    with a one-matmul backward.

    The Gram matrix is symmetric, so the gradient ``a (S + S^T)`` of its sign pattern ``S`` is
    ``2 a S``: one batched ``(rows, cols) x (cols, cols)`` product where autograd's generic rule
    takes two.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        device = a.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            gram = a.transpose(1, 2) @ a  # in a's precision under mixed precision too
        gram.diagonal(dim1=1, dim2=2).zero_()
        ctx.save_for_backward(a, gram)
        return gram.abs().sum((1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        a, off_diagonal = ctx.saved_tensors
        return a @ off_diagonal.sign().mul_(2 * grad[:, None, None])


def off_diagonal_l1(a: torch.Tensor) -> torch.Tensor:
    """L1 norm of the off-diagonal of ``a^T a`` (zero iff the columns are mutually orthogonal);
    for a batch ``(G, rows, cols)`` one value per matrix."""
    return _OffDiagonalL1.apply(a) if a.dim() == 3 else _OffDiagonalL1.apply(a[None])[0]


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
