"""Scoring a subnet of the supernet without depending on the order of the evaluation split.

The supernet keeps BatchNorm statistics per candidate pair and trains on batch statistics, so its
running averages lag behind meta weights that every sampled architecture changes. Scoring a subnet
on the batch statistics of an ordered split (an imagefolder sorted by class) normalises each batch
by one class's statistics, and the accuracy then measures the order, not the subnet. Two remedies
(``search.evaluation``):

- ``recalibrate`` (the default; as slimmable networks and OFA do): before scoring, the subnet's
  per-pair statistics are recomputed as the exact average over a few fixed training batches, and
  evaluation uses them, so every image is scored independently of its batch.
- ``shuffle``: batch statistics, on evaluation batches in a fixed seeded random order.

``benchmarks/ranking.py`` measures which of the two ranks subnets better (docs/ranking.md).
"""
from __future__ import annotations

from itertools import islice
from typing import List, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from ..aps.layers import APSBatchNorm2d

EVALUATIONS = ('recalibrate', 'shuffle')  # search.evaluation


def calibration_batches(loader: DataLoader, count: int, seed: int) -> List[torch.Tensor]:
    """``count`` training batches (images only) drawn once with ``seed``, the same on every rank: a
    seeded permutation of a map-style dataset, the first batches of a streamed one."""
    ds, size = loader.dataset, loader.batch_size
    if hasattr(ds, '__len__') and hasattr(ds, '__getitem__'):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
        batches = (loader.collate_fn([ds[i] for i in order[j * size:(j + 1) * size]])
                   for j in range(min(count, len(ds) // size)))
    else:
        batches = iter(DataLoader(ds, batch_size=size, collate_fn=loader.collate_fn))
    return [x for x, _ in islice(batches, count)]


def norms(model: torch.nn.Module) -> List[APSBatchNorm2d]:
    """Every per-candidate BatchNorm of ``model``."""
    return [m for m in model.modules() if isinstance(m, APSBatchNorm2d)]


@torch.no_grad()
def recalibrate(model: torch.nn.Module, widths: Sequence[int], batches: Sequence[torch.Tensor]) -> None:
    """Set the running statistics of the pairs the subnet ``widths`` uses to their average over
    ``batches`` (momentum 1/(i+1) on batch i: the first batch replaces the old values), then leave the
    model in eval mode normalising with them."""
    layers = norms(model)
    saved = [m.momentum for m in layers]
    model.train()
    device = next(model.parameters()).device
    for i, x in enumerate(batches):
        for m in layers:
            m.momentum = 1.0 / (i + 1)
        model(x.to(device), widths)
    for m, momentum in zip(layers, saved):
        m.momentum = momentum
        m.use_running_stats = True
    model.eval()


def shuffled(loader: DataLoader, seed: int) -> DataLoader:
    """The same evaluation loader over its dataset in one fixed seeded random order."""
    ds = loader.dataset
    if hasattr(ds, '__len__') and hasattr(ds, '__getitem__'):
        ds = Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist())
    else:  # a streamed dataset: a seeded shuffle buffer
        ds = ds.shuffle(seed=seed, buffer_size=10_000)
    return DataLoader(ds, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn)
