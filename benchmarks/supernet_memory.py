"""Peak memory and step time of the ImageNet APS supernets at 224x224 on CPU, and their per-device memory.

Each space is the one of a search recipe (``recipes/search_*_imagenet*.yaml``) with ``space.meta_width``
set to each ``--meta-widths`` value. A fresh child process per setting builds the supernet with
projections detached from the forward (``search.projection_grad: penalty``), gives every parameter
an SGD momentum buffer (the steady state of a search that has sampled every candidate pair), and
runs training steps the way the search loop does on a penalised step (forward, backward, the grouped
orthogonality penalty's gradient added, SGD step with the search's groups, column renormalisation): first
on the space's largest architecture (the memory worst case), then on ``--steps`` random ones. Peak
RSS is the child's ``ru_maxrss``. A setting whose parameters and momentum alone exceed
``--limit-gib`` or the memory available is reported, not run.

``--per-device`` instead counts, on the meta device (nothing is computed), what one process of each
recipe holds at the recipe's own ``data.batch_size`` and meta width, in float32: parameters, their
gradients, SGD momentum, DistributedDataParallel's gradient buckets (one more copy of the
gradients), the tensors autograd saves for backward on the largest architecture, and the penalty's
largest transient (the Gram matrices of one run of groups of one bank, computed outside autograd
after the backward; the gradient is accumulated in place). Not counted: the allocator's cache and the backward's transient
gradients of activations.

    python benchmarks/supernet_memory.py [--spaces resnet50 resnet18 mobilenetv2] [--meta-widths sum max]
                                         [--batch 8] [--steps 2] [--threads 1] [--limit-gib 24]
    python benchmarks/supernet_memory.py --per-device
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from aps_zoo.aps import add_orthogonality_grad_, aps_modules, renormalize_projections
from aps_zoo.aps.sharing import PROJECTION_MOMENTUM
from aps_zoo.recipe import load_recipe
from aps_zoo.spaces import APSSupernet, space_from_recipe
from search_step import nbytes, saved_activation_bytes

RECIPES = Path(__file__).resolve().parent.parent / 'recipes'
SPACES = {'resnet50': 'search_resnet50_imagenet_2g.yaml', 'resnet18': 'search_resnet18_imagenet.yaml',
          'mobilenetv2': 'search_mobilenetv2_imagenet.yaml'}
GIB = 2 ** 30


def recipe_and_space(name: str, meta_width: str = None):
    recipe = load_recipe(RECIPES / SPACES[name], overrides=[f'space.meta_width={meta_width}'] if meta_width else [])
    return recipe, space_from_recipe(recipe, 1000, (3, 224, 224))


def per_device_gib(name: str) -> dict:
    """GiB one process of the recipe holds (see the module docstring), at its own batch and meta width."""
    recipe, space = recipe_and_space(name)
    with torch.device('meta'):
        net = APSSupernet(space)
        x = torch.empty(recipe.data.batch_size, 3, 224, 224)
    params = nbytes(net.parameters())
    widths = space.widths(space.largest())
    parts = {'parameters': params, 'grads + momentum + DDP buckets': 3 * params, 'BN buffers': nbytes(net.buffers()),
             'saved for backward': saved_activation_bytes(lambda: net(x, widths), net.parameters()),
             'penalty transient': penalty_transient_bytes(net)}
    return {'batch': recipe.data.batch_size, 'meta_width': recipe.space.meta_width,
            **{k: v / GIB for k, v in parts.items()}, 'total': sum(parts.values()) / GIB}


def penalty_transient_bytes(net) -> int:
    """The largest temporary of ``add_orthogonality_grad_``: the Gram matrices of one run of equal-width
    groups of one bank (float32; the gradient goes into the bank's ``.grad``, counted with the gradients)."""
    return 4 * max(slab.shape[0] * slab.shape[1] ** 2 for m in aps_modules(net).values() for bank in m.banks()
                   for slab in bank.group_slabs())


def counts(supernet) -> dict:
    """Elements of meta weights (and classifier bias), projections and BN buffers."""
    return {'meta': sum(p.numel() for p in supernet.meta_parameters()),
            'proj': sum(p.numel() for p in supernet.projection_parameters()),
            'bn': sum(b.numel() for b in supernet.buffers())}


def available_gib() -> float:
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemAvailable:'):
            return int(line.split()[1]) / 2 ** 20
    return float('inf')


def run_child(args) -> None:
    recipe, space = recipe_and_space(args.only, args.meta_width)
    s = recipe.search
    torch.manual_seed(0)
    net = APSSupernet(space)
    opt = torch.optim.SGD([{'params': net.meta_parameters(), 'weight_decay': s.weight_decay},
                           {'params': net.projection_parameters(), 'lr': s.projection_lr or 1e-3, 'weight_decay': 0.0,
                            'momentum': PROJECTION_MOMENTUM, 'nesterov': False}],
                          lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)
    for group in opt.param_groups:
        for p in group['params']:
            opt.state[p]['momentum_buffer'] = torch.zeros_like(p)
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(space.num_classes, (args.batch,))

    def step(choices) -> float:
        start = time.perf_counter()
        F.cross_entropy(net(x, space.widths(choices)), y).backward()
        add_orthogonality_grad_(net, s.orthogonal_weight)
        opt.step()
        opt.zero_grad()
        renormalize_projections(net)
        return (time.perf_counter() - start) * 1e3

    ms_largest = step(space.largest())
    rng = random.Random(0)
    archs = [space.random_choices(rng) for _ in range(args.steps)]
    ms_random = [step(c) for c in archs]
    print(json.dumps({'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                      'ms_largest': ms_largest, 'macs_largest': space.macs(space.largest()),
                      'ms_random': sum(ms_random) / len(ms_random),
                      'macs_random': sum(space.macs(c) for c in archs) / len(archs)}))


def print_per_device(spaces) -> None:
    print("per-process memory of each search recipe at its own batch, float32, counted on the meta device (GiB)")
    rows = {name: per_device_gib(name) for name in spaces}
    keys = list(next(iter(rows.values())))
    print(' | '.join(['recipe'.ljust(36)] + [k for k in keys]))
    for name, r in rows.items():
        print(' | '.join([SPACES[name].ljust(36)] + [f'{v:.2f}' if isinstance(v, float) else str(v) for v in r.values()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--spaces', nargs='+', choices=list(SPACES), default=list(SPACES))
    parser.add_argument('--meta-widths', nargs='+', default=['sum', 'max'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--steps', type=int, default=2, help='timed steps on random architectures')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--limit-gib', type=float, default=24.0)
    parser.add_argument('--per-device', action='store_true', help="each recipe's per-process memory (meta device)")
    parser.add_argument('--only', choices=list(SPACES), help=argparse.SUPPRESS)
    parser.add_argument('--meta-width', help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        return run_child(args)
    if args.per_device:
        return print_per_device(args.spaces)

    print(f"APS supernets at 224x224, batch {args.batch}, CPU, {args.threads} thread(s), torch {torch.__version__}; "
          f"projections trainable, momentum for every parameter")
    print(f"{'space':<24} | {'meta_width':<10} | {'meta weights':>12} | {'projections':>12} | {'BN buffers':>10} | "
          f"{'peak RSS':>9} | {'ms/step largest':>22} | {'ms/step random':>22}")
    for name in args.spaces:
        for meta_width in args.meta_widths:
            recipe, space = recipe_and_space(name, meta_width)
            with torch.device('meta'):
                n = counts(APSSupernet(space))
            label = f"{name} ({'blockwise' if recipe.space.blockwise else 'per layer'})"
            row = f"{label:<24} | {meta_width:<10} | {n['meta'] / 1e6:>11.1f}M | {n['proj'] / 1e6:>11.1f}M | " \
                  f"{n['bn'] / 1e6:>9.2f}M"
            floor = 4 * (2 * (n['meta'] + n['proj']) + n['bn']) / GIB
            room = min(args.limit_gib, available_gib())
            if floor > room:
                print(f"{row} | not run: parameters + momentum alone are {floor:.1f} GiB > {room:.1f} GiB", flush=True)
                continue
            out = subprocess.run([sys.executable, __file__, '--only', name, '--meta-width', meta_width,
                                  '--batch', str(args.batch), '--steps', str(args.steps),
                                  '--threads', str(args.threads)], capture_output=True, text=True)
            if out.returncode:
                print(f"{row} | failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{row} | {r['peak_rss_gib']:>5.2f} GiB | {r['ms_largest']:>7.0f} @ {r['macs_largest'] / 1e9:.2f}G MACs | "
                  f"{r['ms_random']:>7.0f} @ {r['macs_random'] / 1e9:.2f}G MACs", flush=True)


if __name__ == '__main__':
    main()
