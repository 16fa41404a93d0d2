"""Sharing level between candidates and the grouped orthogonality penalty that moves it (APS-T)."""
from __future__ import annotations

from itertools import combinations
from typing import Dict

import torch
import torch.nn as nn

from .layers import aps_modules
from .projection import basis_overlap, off_diagonal_l1, off_diagonal_l1_grad_, orthonormal_basis

# The projections' own SGD group (the reference code's momentum; no Nesterov, no weight decay).
PROJECTION_MOMENTUM = 0.9
# search.projection_grad: the projections learn from the penalty alone (detached in the forward, the reference's
# DETACH_PQ), or from the task loss too
PROJECTION_GRADS = ('penalty', 'task_and_penalty')
# lr x weight x updates after which penalty-only projection updates (PROJECTION_MOMENTUM, column
# renormalisation) take a ResNet-20 CIFAR layer (candidates 4..64, meta 124) from ordinal sharing
# (overlap 1) to mean sharing 0.05, measured with benchmarks/sharing_transition.py at weight 5e-3:
# 0.1007 at lr 1e-2 (2,014 updates), 0.1032 at 4e-2, 0.108 at 0.1; sharing 0.54 comes at ~0.05
# (docs/design.md#how-the-projections-learn: 19,600 updates at lr 1e-3, i.e. 0.098).
TRANSITION_LR_WEIGHT_UPDATES = 0.10
# Above lr x weight = 5e-4 per update the steps overshoot: at 1e-3 the transition ends late (0.127),
# at 2e-3 sharing stalls near 0.2 (same measurement). Derived learning rates stop there.
MAX_LR_WEIGHT = 5e-4
# The reference code's projection lr; the default under projection_grad: task_and_penalty, where the task
# gradient reaches the projections and the penalty-only law above does not hold.
REFERENCE_PROJECTION_LR = 1e-3


def transition_projection_lr(fraction: float, updates: int, weight: float) -> float:
    """Projection lr that brings sharing near its end value (0.05) after ``fraction`` of the
    ``updates`` penalised projection updates of a search at penalty ``weight``: the speed of the
    transition scales with lr x weight x updates (``TRANSITION_LR_WEIGHT_UPDATES``). Capped at
    ``MAX_LR_WEIGHT / weight``: a search with fewer than ``TRANSITION_LR_WEIGHT_UPDATES / MAX_LR_WEIGHT``
    (200) updates in that fraction cannot complete the transition."""
    return min(TRANSITION_LR_WEIGHT_UPDATES / (fraction * max(1, updates)), MAX_LR_WEIGHT) / weight


def layer_sharing_level(layer: nn.Module) -> float:
    """Mean subspace overlap between the candidates of each penalty group of one layer that differ
    in width (:meth:`~aps_zoo.aps.APSConv2d.projection_groups`). 1 = ordinal sharing, 0 = disjoint."""
    scores = []
    for ps in layer.projection_groups().values():
        bases = [orthonormal_basis(p) for p in ps]  # one QR per projection, not one per pair
        scores += [basis_overlap(a, b) for a, b in combinations(bases, 2) if a.shape[1] != b.shape[1]]
    return float(torch.stack(scores).mean()) if scores else float('nan')


def sharing_levels(model: nn.Module) -> Dict[str, float]:
    """Sharing level of every APS layer that has at least two candidates, by module name."""
    levels = {name: layer_sharing_level(m) for name, m in aps_modules(model).items()}
    return {k: v for k, v in levels.items() if v == v}


def mean_sharing_level(levels: Dict[str, float]) -> float:
    """The mean of :func:`sharing_levels` over the layers (0 without a layer that shares): the ``sharing_mean``
    of metrics.jsonl and what ``search.sharing_floor`` is compared with."""
    return sum(levels.values()) / max(1, len(levels))


def grouped_orthogonality(layer: nn.Module) -> torch.Tensor:
    """The grouped orthogonality penalty of one APS layer, one value per group (in the order of
    ``layer.projection_groups()``): one batched Gram per run of equal-width groups of each bank."""
    return torch.cat([off_diagonal_l1(slab.transpose(1, 2)) for bank in layer.banks() for slab in bank.group_slabs()])


def orthogonality_terms(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The grouped orthogonality penalty of every APS layer by module name (a function of the
    projections alone; docs/design.md#how-the-projections-learn): each layer's sum over its groups."""
    return {name: grouped_orthogonality(m).sum() for name, m in aps_modules(model).items()}


def orthogonality_loss(model: nn.Module) -> torch.Tensor:
    """The grouped orthogonality penalty summed over every APS layer of ``model`` (stem, every block
    conv and shortcut, depthwise convs, classifier: each once)."""
    terms = list(orthogonality_terms(model).values())
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def add_orthogonality_grad_(model: nn.Module, weight: float) -> torch.Tensor:
    """Add ``weight`` x the gradient of :func:`orthogonality_loss` to every projection bank's ``.grad``
    (computed directly, ``2 a S`` per group, accumulated in place: no autograd graph, so it can follow
    the task loss's backward under DistributedDataParallel, where it is the same on every rank); returns
    the penalty."""
    values = []
    for m in aps_modules(model).values():
        for bank in m.banks():
            p, accumulate = bank.weight, bank.weight.grad is not None
            if not accumulate:
                p.grad = torch.empty_like(p)  # every row is in a group, so every entry gets written
            for slab, out in zip(bank.group_slabs(), bank.group_slabs(p.grad)):
                values.append(off_diagonal_l1_grad_(slab, weight, out, accumulate).sum())
    return torch.stack(values).sum() if values else torch.zeros(())


@torch.no_grad()
def renormalize_projections(model: nn.Module, only_updated: bool = False) -> None:
    """Scale projection columns to unit norm (the hard constraint, after each projection step).

    ``only_updated``: just the projections that hold a gradient, i.e. the ones this step changed
    (the optimizer leaves projections without a gradient untouched).
    """
    for m in aps_modules(model).values():
        for bank in m.banks():
            if not only_updated or bank.weight.grad is not None:
                bank.renormalize_()
