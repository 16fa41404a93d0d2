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
    """L1 norm of the off-diagonal of ``p^T p`` with a one-matmul backward.

    The Gram matrix is symmetric, so the gradient ``p (S + S^T)`` of the sign pattern ``S`` is
    ``2 p S``: one ``(meta, c) x (c, c)`` product where autograd's generic rule takes two. For
    the wide 1x1 layers of an ImageNet ResNet-50 this penalty costs more than the convolutions.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor) -> torch.Tensor:
        device = p.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            gram = p.t() @ p  # in p's precision under mixed precision too
        gram.diagonal().zero_()
        ctx.save_for_backward(p, gram)
        return gram.abs().sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        p, off_diagonal = ctx.saved_tensors
        return p @ off_diagonal.sign().mul_(2 * grad)


def orthogonality_penalty(p: torch.Tensor) -> torch.Tensor:
    """L1 norm of the off-diagonal of ``p^T p``: zero iff the columns are mutually orthogonal."""
    return _OffDiagonalL1.apply(p)


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
