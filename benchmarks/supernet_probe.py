"""Can a search's supernet still learn? Train a copy of it from one of its checkpoints, three ways.

From the checkpoint's meta weights and projections (projections frozen, meta weights under the search's SGD
at the lr given), ``--steps`` steps on the recipe's training images, each way from the same copy:

    uniform      one fixed architecture: the middle option of every decision
    fixed band   one fixed architecture drawn from the band (the search's sampler)
    band         a new band architecture every step, as warm-up trains the supernet

and prints the mean training loss of every 20 steps (ln 10 = 2.30 is chance on 10 classes). A supernet whose
single architectures learn while its band does not has lost what makes it a supernet: weights that serve
many architectures at once (docs/results_fashion_mnist.md, the transition inside warm-up).

    python benchmarks/supernet_probe.py recipes/quality_resnet20_fashion_mnist_50_fine_early.yaml \\
        <run>/aps/search/checkpoints/epoch_0008 --lr 0.08
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from aps_zoo.data import build_loaders
from aps_zoo.spaces import APSSupernet, space_from_recipe
from aps_zoo.spaces.band import band_sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import QualityError, load_quality_recipe  # noqa: E402  (sibling benchmark)

WINDOW = 20


def train_losses(supernet, loader, archs, lr: float, weight_decay: float):
    """Training losses of ``supernet`` over ``archs`` (one architecture's widths per step), projections frozen."""
    meta = [p for n, p in supernet.named_parameters() if '_proj.' not in n]
    opt = torch.optim.SGD(meta, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    supernet.train()
    losses, batches = [], iter(loader)
    for widths in archs:
        x, y = next(batches)
        loss = F.cross_entropy(supernet(x, widths), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('recipe', type=Path)
    parser.add_argument('checkpoint', type=Path, help="a search checkpoint folder (holding model.safetensors)")
    parser.add_argument('--steps', type=int, default=80)
    parser.add_argument('--lr', type=float, default=0.08, help="meta-weight lr (the search's at that epoch)")
    args = parser.parse_args()
    try:
        recipe, _ = load_quality_recipe(args.recipe)
    except QualityError as e:
        parser.exit(2, f'supernet_probe: {e}\n')
    s = recipe.search
    data = build_loaders(recipe.data, recipe.seed, holdout=True)
    space = space_from_recipe(recipe, data.num_classes, data.input_size)
    supernet = APSSupernet(space)
    supernet.load_state_dict(load_file(str(args.checkpoint / 'model.safetensors')))
    sampler, generator = band_sampler(space, s.budget_macs, s.min_budget_fraction), torch.Generator().manual_seed(0)
    fixed_band = space.widths(sampler.sample(generator))
    ways = {'uniform': [space.widths([len(recipe.space.candidates) // 2] * space.num_decisions)] * args.steps,
            'fixed band': [fixed_band] * args.steps,
            'band': [space.widths(sampler.sample(generator)) for _ in range(args.steps)]}
    print(f"{args.checkpoint}: mean training loss per {WINDOW} steps, lr {args.lr}; fixed band {fixed_band}")
    print(f"{'way':>10} | " + ' | '.join(f'steps {i + 1}-{i + WINDOW}' for i in range(0, args.steps, WINDOW)))
    for way, archs in ways.items():
        torch.manual_seed(0)  # the same batches for every way
        losses = train_losses(copy.deepcopy(supernet), data.train, archs, args.lr, s.weight_decay)
        cells = [sum(losses[i:i + WINDOW]) / len(losses[i:i + WINDOW]) for i in range(0, args.steps, WINDOW)]
        print(f"{way:>10} | " + ' | '.join(f'{c:>11.3f}' for c in cells), flush=True)


if __name__ == '__main__':
    main()
