"""Supernet training step vs. the standalone subnet of the same widths, in one process.

For each sampled architecture of the ResNet-20 CIFAR space (candidates 4,8,16,32,64, meta width
124) it times a full SGD step (forward, backward, optimizer) of the APS supernet and of the timm
model built from the same ChannelConfig, trained the same way, and prints ms/step and their ratio.
Peak memory: the peak RSS of a fresh child process that builds one kind of network and runs its
steps (same imports and data in both), so one kind does not hide the other.

    python benchmarks/search_step.py [--batch 64] [--archs 5] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from aps_zoo.aps import set_projections_trainable
from aps_zoo.models import create_model_from_config
from aps_zoo.spaces import APSSupernet, build_space

CANDIDATES = [4, 8, 16, 32, 64]


def make_space(family: str, depth: int, size: int):
    if family == 'resnet_cifar':
        return build_space(family, depth, CANDIDATES, num_classes=10, input_size=(3, size, size))
    return build_space(family, depth, [32, 48, 64, 80], num_classes=1000, input_size=(3, size, size),
                       stage_multipliers=[1, 2, 4, 8], blockwise=True, meta_width='max')


def step_timer(step, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps * 1e3


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def supernet_step(supernet, opt, x, y, widths):
    def step():
        logits, penalty = supernet(x, widths, return_penalty=True)
        loss = F.cross_entropy(logits, y) + 5e-3 * penalty
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def standalone_step(model, opt, x, y):
    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def measure_memory(args, kind: str) -> float:
    """Peak RSS (MiB) of ``--only kind`` run in a fresh process."""
    out = subprocess.run([sys.executable, __file__, '--only', kind, '--batch', str(args.batch), '--family',
                          args.family, '--depth', str(args.depth), '--size', str(args.size), '--steps', '3',
                          '--archs', '1'], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])['peak_rss_mib']


def run_only(args) -> None:
    space = make_space(args.family, args.depth, args.size)
    torch.manual_seed(0)
    choices = space.random_choices(random.Random(0))
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(space.num_classes, (args.batch,))
    if args.only == 'supernet':
        net = APSSupernet(space)
        set_projections_trainable(net, True)
        step = supernet_step(net, sgd(net.parameters()), x, y, space.widths(choices))
    else:
        model = create_model_from_config(space.config(choices))
        step = standalone_step(model, sgd(model.parameters()), x, y)
    step_timer(step, args.steps, warmup=1)
    print(json.dumps({'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--archs', type=int, default=5)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--family', default='resnet_cifar')
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    parser.add_argument('--only', choices=['supernet', 'standalone'], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        return run_only(args)

    space = make_space(args.family, args.depth, args.size)
    torch.manual_seed(0)
    rng = random.Random(0)
    supernet = APSSupernet(space)
    set_projections_trainable(supernet, True)
    opt = sgd(supernet.parameters())
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(space.num_classes, (args.batch,))
    rows = []
    for _ in range(args.archs):
        choices = space.random_choices(rng)
        config = space.config(choices)
        model = create_model_from_config(config)
        ms_super = step_timer(supernet_step(supernet, opt, x, y, space.widths(choices)), args.steps)
        ms_alone = step_timer(standalone_step(model, sgd(model.parameters()), x, y), args.steps)
        rows.append((space.macs(choices), ms_super, ms_alone))
    print(f"{args.family}{args.depth} space, input {args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'MACs':>12} | {'supernet ms':>11} | {'standalone ms':>13} | {'ratio':>5}")
    for macs, a, b in rows:
        print(f"{macs:>12,} | {a:>11.2f} | {b:>13.2f} | {a / b:>5.2f}")
    ratios = [a / b for _, a, b in rows]
    print(f"median ratio supernet/standalone: {statistics.median(ratios):.2f}")
    mem_super, mem_alone = measure_memory(args, 'supernet'), measure_memory(args, 'standalone')
    print(f"peak RSS: supernet {mem_super:.0f} MiB, standalone {mem_alone:.0f} MiB, "
          f"ratio {mem_super / mem_alone:.2f}")


if __name__ == '__main__':
    main()
