"""How fast the grouped orthogonality penalty moves sharing: the lr x weight x updates law (APS-T).

With ``search.projection_grad: penalty`` the projections learn from the grouped penalty alone, so
their dynamics do not depend on the data and can be run without it: every update is one SGD step
(momentum 0.9, the projections' group) on ``weight * orthogonality_loss`` followed by column
renormalisation, as in the search. This script runs those updates on the projections of one
searchable layer or of a whole supernet, from the ordinal init (overlap 1), for several projection
learning rates, and reports after how many updates the mean sharing level falls below each
threshold, and the product lr x weight x updates there: the constant
``aps_zoo.aps.sharing.TRANSITION_LR_WEIGHT_UPDATES`` that derives a projection lr from
``search.sharing_transition`` is this product at sharing 0.05 for the ResNet-20 CIFAR layer.

    python benchmarks/sharing_transition.py [--lrs 1e-3 1e-2 4e-2] [--weight 5e-3] [--model layer|cifar|digits]
    python benchmarks/sharing_transition.py --model digits --lrs 0.05714 --horizon 2 --points 20 --curve
    python benchmarks/sharing_transition.py --candidates 8 12 16 24 32 48 64 --lrs 4e-2 --horizon 2

"trained share" is where the transition leaves the candidates: the mean share of a projection's squared norm on
the first max(candidates) meta channels, the only ones ordinal sharing (the warm-up's) trains.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch

from aps_zoo.aps import (APSConv2d, add_orthogonality_grad_, mean_sharing_level, renormalize_projections,
                         sharing_levels)
from aps_zoo.aps.sharing import PROJECTION_MOMENTUM, TRANSITION_LR_WEIGHT_UPDATES
from aps_zoo.spaces import APSSupernet, build_space

THRESHOLDS = (0.54, 0.3, 0.05)
RESNET20_CIFAR = (4, 8, 16, 32, 64)  # the paper's ResNet-20 candidates (meta 124)


def make_model(kind: str, layer_candidates: Sequence[int] = RESNET20_CIFAR) -> torch.nn.Module:
    """One ResNet-20 CIFAR conv (``layer_candidates``, meta width their sum), or a supernet of the CIFAR or
    digits space."""
    torch.manual_seed(0)
    if kind == 'layer':
        meta = sum(layer_candidates)
        return APSConv2d(layer_candidates, layer_candidates, meta, meta, 3, overlap=1.0)
    candidates, size = (list(RESNET20_CIFAR), 32) if kind == 'cifar' else ([8, 16, 32, 64], 8)
    return APSSupernet(build_space('resnet_cifar', 20, candidates, num_classes=10, input_size=(3, size, size)))


def sharing_mean(model) -> float:
    return mean_sharing_level(sharing_levels(model))


def projection_parameters(model):
    """The projection banks of ``model``."""
    return [p for n, p in model.named_parameters() if '_proj.' in n]


@torch.no_grad()
def trained_share(model, trained: int) -> float:
    """Mean share of a projection column's squared norm on the first ``trained`` meta channels (a bank stores
    one projection column per row, meta channels along its columns)."""
    banks = projection_parameters(model)
    return float(sum((p[:, :trained] ** 2).sum() for p in banks) / sum((p ** 2).sum() for p in banks))


def simulate(model, lr: float, weight: float, updates: int, every: int):
    """(update, mean sharing level) every ``every`` updates of penalty-only projection SGD."""
    projections = projection_parameters(model)
    opt = torch.optim.SGD(projections, lr=lr, momentum=PROJECTION_MOMENTUM)
    curve = [(0, sharing_mean(model))]
    for t in range(1, updates + 1):
        opt.zero_grad()
        add_orthogonality_grad_(model, weight)  # as the search step does it
        opt.step()
        renormalize_projections(model)
        if t % every == 0:
            curve.append((t, sharing_mean(model)))
    return curve


def first_below(curve, threshold: float):
    return next((t for t, s in curve if s <= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lrs', type=float, nargs='+', default=[1e-3, 1e-2, 4e-2])
    parser.add_argument('--weight', type=float, default=5e-3)
    parser.add_argument('--model', choices=['layer', 'cifar', 'digits'], default='layer')
    parser.add_argument('--candidates', type=int, nargs='+', default=list(RESNET20_CIFAR),
                        help="the layer's candidates (--model layer)")
    parser.add_argument('--horizon', type=float, default=2.5,
                        help='run each lr for horizon x the constant / (lr x weight) updates')
    parser.add_argument('--points', type=int, default=100, help='sharing measurements per run')
    parser.add_argument('--curve', action='store_true', help='also print every measured (update, sharing)')
    args = parser.parse_args()
    print(f"model {args.model}{f' {args.candidates}' if args.model == 'layer' else ''}, weight {args.weight}, momentum {PROJECTION_MOMENTUM}, column renormalisation; "
          f"constant in use {TRANSITION_LR_WEIGHT_UPDATES}")
    print(f"{'lr':>8} | " + ' | '.join(f"{f'updates to {t}':>16} | {'lr*w*updates':>12}" for t in THRESHOLDS)
          + f" | {'end sharing':>11} | {'trained share':>13} | {'s':>5}")
    for lr in args.lrs:
        updates = int(args.horizon * TRANSITION_LR_WEIGHT_UPDATES / (lr * args.weight))
        start = time.perf_counter()
        model = make_model(args.model, args.candidates)
        curve = simulate(model, lr, args.weight, updates, max(1, updates // args.points))
        cells = []
        for t in THRESHOLDS:
            n = first_below(curve, t)
            cells.append(f"{'-' if n is None else n:>16} | {'-' if n is None else f'{lr * args.weight * n:.4f}':>12}")
        print(f"{lr:>8.0e} | " + ' | '.join(cells) + f" | {curve[-1][1]:>11.4f} | {trained_share(model, max(args.candidates)):>13.2f}"
              f" | {time.perf_counter() - start:>5.0f}",
              flush=True)
        if args.curve:
            print('  ' + ', '.join(f'{t}: {v:.4f}' for t, v in curve))


if __name__ == '__main__':
    main()
