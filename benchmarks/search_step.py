"""Supernet training step vs. the standalone subnet of the same widths, in one process.

For each sampled architecture of a space (default: the ResNet-20 CIFAR space, candidates
4,8,16,32,64, meta width 124) it times a full SGD step (forward, backward, optimizer) of the APS
supernet as the search runs it after warm-up under ``search.projection_grad: penalty`` (projections
detached from the forward; on every step, as ``orthogonal_every: 1``, the gradient of the grouped
orthogonality penalty of every projection added after the backward, then the column
renormalisation), of the same supernet with every projection forced onto the kernel
(``P^T W Q``, the reference formulation), of the supernet without the penalty (warm-up, and the
steps ``search.orthogonal_every`` skips), and of the timm model built from the same
ChannelConfig trained the same way. The steps run interleaved, round after round, and each is
reported as the median over rounds, so load on the machine hits them alike. The supernet runs
channels_last; so does the standalone model by default (``--no-channels-last``: contiguous), the
faster memory format for it on CPU too.

"MAC ratio" is the multiply-adds of the supernet forward (convolutions, the projections under the
plan each layer picks) and of the orthogonality penalty (Gram matrices and their gradient), counted
by FlopCounterMode, over those of the subnet: no implementation of dense projections can beat it. The projections and the penalty cost
the same at any batch, so the ratio falls as the batch grows; a last table gives it, with and
without the penalty, for a few batch sizes without running them. Memory is measured exactly
rather than through the allocator: the tensors autograd saves for backward in one step, and the
training state (parameters, buffers, gradients, SGD momentum).

    python benchmarks/search_step.py [--batch 64] [--archs 5] [--steps 10] [--threads 2]
    python benchmarks/search_step.py --family resnet --depth 50 --size 224 --batch 8 --archs 2 --steps 2
    python benchmarks/search_step.py --archs 1 --steps 2 --profile 15   # where a supernet step spends its time

On CPU, glibc's malloc returns large freed blocks to the system and page-faults them back on the
next step, which adds noise and cost to both sides; the figures in docs/benchmarks.md ran with
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295``
(the header line says which allocator settings a run had).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from aps_zoo.aps import APSConv2d, add_orthogonality_grad_, renormalize_projections
from aps_zoo.aps.sharing import PROJECTION_MOMENTUM
from aps_zoo.models import create_model_from_config
from aps_zoo.spaces import APSSupernet, build_space

MIB = 2 ** 20


def make_space(family: str, depth: int, size: int):
    if family == 'resnet_cifar':
        return build_space(family, depth, [4, 8, 16, 32, 64], num_classes=10, input_size=(3, size, size))
    return build_space(family, depth, [32, 48, 64, 80], num_classes=1000, input_size=(3, size, size),
                       stage_multipliers=[1, 2, 4, 8], blockwise=True, meta_width='max')


def interleaved_ms(steps: dict, rounds: int, device: torch.device, warmup: int = 2) -> dict:
    """Median milliseconds of each ``steps[name]()``, the steps called in turn for every round."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    times = {name: [] for name in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            sync()
            t = time.perf_counter()
            step()
            sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def sgd(params, projections=()):
    """The search's SGD: meta weights nesterov with weight decay, projections their own group."""
    groups = [{'params': list(params)}]
    if projections:
        groups.append({'params': list(projections), 'lr': 1e-3, 'weight_decay': 0.0,
                       'momentum': PROJECTION_MOMENTUM, 'nesterov': False})
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def train_step(forward, opt, y, autocast=nullcontext, penalised=None):
    """One SGD step of ``forward()`` -> logits, the forward inside ``autocast()``; with a ``penalised``
    supernet, the search's penalty step too: its gradient added after the backward, then the column
    renormalisation of the projections."""
    def step():
        with autocast():
            loss = F.cross_entropy(forward(), y)
        loss.backward()
        if penalised is not None:
            add_orthogonality_grad_(penalised, 5e-3)
        opt.step()
        if penalised is not None:
            renormalize_projections(penalised, only_updated=True)
        opt.zero_grad()
    return step


@contextmanager
def kernel_only(supernet):
    """Every APS conv applies its projections to the kernel (``P^T W Q``) while inside."""
    convs = [m for m in supernet.modules() if isinstance(m, APSConv2d)]
    for m in convs:
        m.plan = m.plans()[0]
    try:
        yield
    finally:
        for m in convs:
            m.plan = None


def forward_mac_ratio(supernet, choices, batch: int, plan_kernel_only: bool = False, penalty: bool = True) -> float:
    """Multiply-adds of one forward of ``supernet`` (on the meta device, so nothing is computed):
    convolutions, projections and, with ``penalty``, the orthogonality penalty (its Gram matrices and
    their gradient), counted by torch's FlopCounterMode, over the subnet's analytic MACs at ``batch``:
    the floor for dense projections."""
    space = supernet.space
    x = torch.empty(batch, *space.input_size, device='meta')
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        with kernel_only(supernet) if plan_kernel_only else nullcontext():
            supernet(x, space.widths(choices))
        if penalty:
            add_orthogonality_grad_(supernet, 1.0)
            supernet.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / (batch * space.macs(choices))


def saved_activation_bytes(forward, held=()) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``forward()``, leaving out the
    storages of ``held`` (the parameters: a saved parameter, or a view of one, costs nothing extra)."""
    held = {t.untyped_storage()._cdata for t in held}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()  # views share it; _cdata identifies it on the meta device too
        if storage._cdata not in held:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--archs', type=int, default=5)
    parser.add_argument('--steps', type=int, default=10, help='timed rounds per architecture')
    parser.add_argument('--family', default='resnet_cifar')
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=True,
                        help='standalone model and input in channels_last (the supernet always is)')
    parser.add_argument('--floor-batches', type=int, nargs='*', default=[8, 64, 256],
                        help='batch sizes for the MAC-ratio table (counted, not timed)')
    parser.add_argument('--profile', type=int, default=0, metavar='ROWS',
                        help="print torch.profiler's top ROWS operators of one supernet step (first architecture)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast, as Accelerate mixed_precision=bf16')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    return parser.parse_args()


def print_profile(step: Callable[[], None], device: torch.device, rows: int) -> None:
    """torch.profiler's top ``rows`` operators of one call of ``step``."""
    activities = [torch.profiler.ProfilerActivity.CPU] + \
        ([torch.profiler.ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
    print(prof.key_averages().table(sort_by=f'self_{"device" if device.type == "cuda" else "cpu"}_time_total',
                                    row_limit=rows))


def measure(args: argparse.Namespace) -> Tuple[APSSupernet, List[tuple], List[list]]:
    """The supernet, one row of timings, MAC ratios and saved bytes per sampled architecture, and the MAC
    ratios with and without the penalty at each of ``args.floor_batches``."""
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    device = torch.device(args.device)
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.bf16)
    space = make_space(args.family, args.depth, args.size)
    torch.manual_seed(0)
    rng = random.Random(0)
    supernet = APSSupernet(space).to(device)
    opt = sgd(supernet.meta_parameters(), supernet.projection_parameters())
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(space.num_classes, (args.batch,), device=device)
    with torch.device('meta'):
        counting = APSSupernet(space)  # the same supernet on the meta device, for MAC counts
    rows, floors = [], []
    for _ in range(args.archs):
        choices = space.random_choices(rng)
        widths = space.widths(choices)
        model = create_model_from_config(space.config(choices)).to(device, memory_format=memory_format)
        super_fwd = lambda: supernet(x, widths)  # noqa: E731
        alone_fwd = lambda: model(x)  # noqa: E731
        super_step = train_step(super_fwd, opt, y, autocast, penalised=supernet)

        def kernel_step():
            with kernel_only(supernet):
                super_step()

        ms = interleaved_ms({'supernet': super_step, 'kernel': kernel_step,
                             'no penalty': train_step(super_fwd, opt, y, autocast),
                             'standalone': train_step(alone_fwd, sgd(model.parameters()), y, autocast)},
                            args.steps, device)
        if args.profile and not rows:
            print_profile(super_step, device, args.profile)
        with autocast():
            saved = (saved_activation_bytes(super_fwd, supernet.parameters()),
                     saved_activation_bytes(alone_fwd, model.parameters()))
        rows.append((space.macs(choices), ms, forward_mac_ratio(counting, choices, args.batch),
                     forward_mac_ratio(counting, choices, args.batch, plan_kernel_only=True), *saved))
        floors.append([(forward_mac_ratio(counting, choices, b), forward_mac_ratio(counting, choices, b, penalty=False))
                       for b in args.floor_batches])
    return supernet, rows, floors


def print_report(args: argparse.Namespace, supernet: APSSupernet, rows: List[tuple], floors: List[list]) -> None:
    """The setting, the per-architecture table, the median ratios, the MAC-ratio floors and the state sizes."""
    device = torch.device(args.device)
    print(f"{args.family}{args.depth} space, input {args.size}x{args.size}, batch {args.batch}, standalone "
          f"{'channels_last' if args.channels_last else 'contiguous'}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, malloc {os.environ.get('GLIBC_TUNABLES', 'glibc defaults')}")
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
          f"{', bf16 autocast' if args.bf16 else ''}")
    print("supernet: projection_grad penalty, grouped penalty every step, projections where cheapest; kernel: all "
          "on the kernel (P^T W Q); no penalty: supernet step without the penalty (warm-up, and the steps "
          "search.orthogonal_every skips); ms = median per step")
    print(f"{'MACs':>14} | {'supernet ms':>11} | {'kernel ms':>9} | {'no penalty ms':>13} | {'standalone ms':>13} | "
          f"{'ratio':>5} | {'kernel ratio':>12} | {'MAC ratio':>9} | {'kernel MAC ratio':>16} | saved for backward MiB")
    for macs, ms, mac_ratio, kernel_mac_ratio, sa, sb in rows:
        print(f"{macs:>14,} | {ms['supernet']:>11.1f} | {ms['kernel']:>9.1f} | {ms['no penalty']:>13.1f} | "
              f"{ms['standalone']:>13.1f} | {ms['supernet'] / ms['standalone']:>5.2f} | "
              f"{ms['kernel'] / ms['standalone']:>12.2f} | {mac_ratio:>9.2f} | {kernel_mac_ratio:>16.2f} | "
              f"{sa / MIB:.1f} vs {sb / MIB:.1f}")
    for name in ('supernet', 'kernel', 'no penalty'):
        print(f"median time ratio {name}/standalone: "
              f"{statistics.median(r[1][name] / r[1]['standalone'] for r in rows):.2f}")
    print("MAC ratio (supernet forward / subnet) by batch, same architectures: with the penalty / without")
    print(' | '.join(f"{f'batch {b}':>13}" for b in args.floor_batches))
    for row in floors:
        print(' | '.join(f"{with_penalty:>6.2f} / {without:<4.2f}" for with_penalty, without in row))
    meta, proj = nbytes(supernet.meta_parameters()), nbytes(supernet.projection_parameters())
    print(f"supernet state: meta weights {meta / MIB:.1f} MiB, projections {proj / MIB:.1f} MiB, "
          f"BN buffers {nbytes(supernet.buffers()) / MIB:.1f} MiB; training state (params, buffers, grads and "
          f"momentum of every parameter) {(3 * (meta + proj) + nbytes(supernet.buffers())) / MIB:.1f} MiB")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_report(args, *measure(args))


if __name__ == '__main__':
    main()
