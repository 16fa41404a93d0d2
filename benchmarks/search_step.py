"""Supernet training step vs. the standalone subnet of the same widths, in one process.

For each sampled architecture of a space (default: the ResNet-20 CIFAR space, candidates
4,8,16,32,64, meta width 124) it times a full SGD step (forward, backward, optimizer) of the APS
supernet with learning projections, and of the timm model built from the same ChannelConfig
trained the same way, and prints ms/step and their ratio. Memory is measured exactly rather than
through the allocator: the tensors autograd saves for backward in one step (activations, candidate
kernels), and the training state (parameters, buffers, gradients, SGD momentum).

    python benchmarks/search_step.py [--batch 64] [--archs 5] [--steps 10] [--threads 2]
    python benchmarks/search_step.py --family resnet --depth 50 --size 224 --batch 8 --archs 2 --steps 2
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from aps_zoo.aps import set_projections_trainable
from aps_zoo.models import create_model_from_config
from aps_zoo.spaces import APSSupernet, build_space

MIB = 2 ** 20


def make_space(family: str, depth: int, size: int):
    if family == 'resnet_cifar':
        return build_space(family, depth, [4, 8, 16, 32, 64], num_classes=10, input_size=(3, size, size))
    return build_space(family, depth, [32, 48, 64, 80], num_classes=1000, input_size=(3, size, size),
                       stage_multipliers=[1, 2, 4, 8], blockwise=True, meta_width='max')


def step_timer(step, steps: int, warmup: int = 2) -> float:
    """Mean milliseconds of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps * 1e3


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def train_step(forward, opt, y):
    """One SGD step of ``forward()`` -> (logits, penalty)."""
    def step():
        logits, penalty = forward()
        loss = F.cross_entropy(logits, y) + 5e-3 * penalty
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def saved_activation_bytes(forward) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``forward()``."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--archs', type=int, default=5)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--family', default='resnet_cifar')
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    space = make_space(args.family, args.depth, args.size)
    torch.manual_seed(0)
    rng = random.Random(0)
    supernet = APSSupernet(space)
    set_projections_trainable(supernet, True)
    opt = sgd(supernet.parameters())
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(space.num_classes, (args.batch,))
    zero = torch.zeros(())
    rows = []
    for _ in range(args.archs):
        choices = space.random_choices(rng)
        widths = space.widths(choices)
        model = create_model_from_config(space.config(choices))
        super_fwd = lambda: supernet(x, widths, return_penalty=True)  # noqa: E731
        alone_fwd = lambda: (model(x), zero)  # noqa: E731
        rows.append((space.macs(choices),
                     step_timer(train_step(super_fwd, opt, y), args.steps),
                     step_timer(train_step(alone_fwd, sgd(model.parameters()), y), args.steps),
                     saved_activation_bytes(super_fwd), saved_activation_bytes(alone_fwd)))

    print(f"{args.family}{args.depth} space, input {args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'MACs':>14} | {'supernet ms':>11} | {'standalone ms':>13} | {'ratio':>5} | saved for backward MiB")
    for macs, a, b, sa, sb in rows:
        print(f"{macs:>14,} | {a:>11.1f} | {b:>13.1f} | {a / b:>5.2f} | {sa / MIB:.1f} vs {sb / MIB:.1f}")
    print(f"median time ratio supernet/standalone: {statistics.median(r[1] / r[2] for r in rows):.2f}")
    meta, proj = nbytes(supernet.meta_parameters()), nbytes(supernet.projection_parameters())
    print(f"supernet state: meta weights {meta / MIB:.1f} MiB, projections {proj / MIB:.1f} MiB, "
          f"BN buffers {nbytes(supernet.buffers()) / MIB:.1f} MiB; training state (params, buffers, grads and "
          f"momentum of the meta weights) {(meta + proj + nbytes(supernet.buffers()) + 2 * meta) / MIB:.1f} MiB")


if __name__ == '__main__':
    main()
