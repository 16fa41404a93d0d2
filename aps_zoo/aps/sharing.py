"""Sharing level between candidates and the orthogonality regulariser on projections."""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Dict

import torch
import torch.nn as nn

from .layers import aps_modules
from .projection import basis_overlap, orthogonality_penalty, orthonormal_basis, renormalize_columns_


def layer_sharing_level(layer: nn.Module) -> float:
    """Mean subspace overlap between candidates of one layer that differ in width along an axis.

    Out-axis projections are compared among pairs with the same input width and different
    output widths (and in-axis ones the other way round). 1 = ordinal sharing, 0 = disjoint.
    """
    groups = defaultdict(list)
    for axis, key, p in layer.projections():
        c_in, c_out = (int(v) for v in key.split('_'))
        groups[(axis, c_in if axis == 'out' else c_out)].append(p)
    scores = []
    for ps in groups.values():
        bases = [orthonormal_basis(p) for p in ps]  # one QR per projection, not one per pair
        scores += [basis_overlap(a, b) for a, b in combinations(bases, 2) if a.shape[1] != b.shape[1]]
    return float(torch.stack(scores).mean()) if scores else float('nan')


def sharing_levels(model: nn.Module) -> Dict[str, float]:
    """Sharing level of every APS layer that has at least two candidates, by module name."""
    levels = {name: layer_sharing_level(m) for name, m in aps_modules(model).items()}
    return {k: v for k, v in levels.items() if v == v}


def orthogonality_loss(model: nn.Module) -> torch.Tensor:
    """Sum of L1 off-diagonal penalties of P^T P and Q^T Q over every projection of every APS layer."""
    terms = [orthogonality_penalty(p) for m in aps_modules(model).values() for _, _, p in m.projections()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def renormalize_projections(model: nn.Module, only_updated: bool = False) -> None:
    """Scale projection columns to unit norm (the optional hard constraint, after each step).

    ``only_updated``: just the projections that hold a gradient, i.e. the ones this step changed
    (the optimizer leaves projections without a gradient untouched).
    """
    for m in aps_modules(model).values():
        for _, _, p in m.projections():
            if not only_updated or p.grad is not None:
                renormalize_columns_(p)
