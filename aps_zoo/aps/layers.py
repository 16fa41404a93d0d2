"""APS layers: one meta weight at the maximum width, candidate weights by affine projection.

A candidate (c_in, c_out) of a conv uses ``W_c = einsum('ijhw,ix,jy->xyhw', W, P, Q)`` with
``P: (meta_out, c_out)`` and ``Q: (meta_in, c_in)``, one (P, Q) pair per candidate pair (as the
reference code keeps them). Convolution is linear in both channel axes, so each projection can be
applied either to the meta weight (building the candidate kernel) or to the activations (a matmul
over channels lifting the input to the meta width, or projecting a meta-width output down): the
four ways give the same output, and each call takes the one with the fewest multiply-adds for its
batch and image size.
Small images and large batches favour the kernel; deep stages at a small batch favour the activations.
Projections enter the forward detached unless ``projections_attached`` is set (``search.projection_grad:
task_and_penalty`` after warm-up): by default they learn from the grouped orthogonality penalty alone
(:meth:`APSConv2d.projection_groups`, ``aps_zoo.aps.sharing.orthogonality_loss``), as the reference code does.
"""
from __future__ import annotations

import math
from itertools import product
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..channels import conv_out_size
from .projection import ProjectionBank, overlap_offsets

Pair = Tuple[int, int]
# Where each projection is applied: (P side, Q side), each 'weight' or 'activation'; Q side None
# for a fixed input axis or a depthwise conv (no Q).
Plan = Tuple[str, Optional[str]]
# A group of the orthogonality penalty: (axis, the width shared by its candidates; 0: all of them)
GroupKey = Tuple[str, int]
SIDES = ('weight', 'activation')


def pair_key(c_in: int, c_out: int) -> str:
    """Module-dict key of the candidate pair (c_in, c_out)."""
    return f'{c_in}_{c_out}'


def _projection_bank(meta: int, widths: Sequence[int], pairs: Sequence[Pair], axis: int, overlap: float,
                     noise: float, one_group: bool = False) -> ProjectionBank:
    """The projections of one axis (0: in, Q; 1: out, P) of ``pairs``, grouped as the penalty sets them
    against each other (docs/design.md#grouped-orthogonality-penalty): on the out axis the P of every output
    candidate of one input width, on the in axis the Q of every input candidate of one output width;
    ``one_group``: all of them in one."""
    offsets = dict(zip(widths, overlap_offsets(widths, overlap)))
    name = ('in', 'out')[axis]
    return ProjectionBank(meta, [((name, 0 if one_group else pair[1 - axis]), pair_key(*pair), pair[axis],
                                  offsets[pair[axis]]) for pair in pairs], noise)


class APSConv2d(nn.Module):
    """Conv whose every candidate (c_in, c_out) is an affine projection of one meta weight.

    ``in_candidates=None`` marks a fixed input axis (the image): no Q. ``depthwise=True`` ties
    c_in == c_out and uses one projection per width. ``skip_equal`` leaves out the pairs with
    c_in == c_out (a stride-1 shortcut is the identity there and never uses them); ``pairs`` lists the
    candidate pairs instead of all (in, out) combinations (a squeeze-excitation, whose reduced width follows
    its input). ``bias``: a meta bias, projected like the output axis (``P^T b``). Each call applies the
    projections where :meth:`cheapest_plan` says, unless ``plan`` is set to one of :meth:`plans`.
    """

    def __init__(self, in_candidates: Optional[Sequence[int]], out_candidates: Sequence[int], meta_in: int,
                 meta_out: int, kernel_size: int, stride: int = 1, depthwise: bool = False,
                 overlap: float = 1.0, noise: float = 1e-3, skip_equal: bool = False,
                 pairs: Optional[Sequence[Pair]] = None, bias: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.depthwise = kernel_size, stride, depthwise
        self.padding = kernel_size // 2
        self.meta_in, self.meta_out = meta_in, meta_out
        self.fixed_in = in_candidates is None
        out_candidates = list(dict.fromkeys(out_candidates))  # a squeeze-excitation's reduced widths can repeat
        in_candidates = None if self.fixed_in else list(dict.fromkeys(in_candidates))
        if pairs is not None:
            pairs = list(dict.fromkeys(pairs))
        elif depthwise:
            pairs = [(c, c) for c in out_candidates]
        elif self.fixed_in:
            pairs = [(meta_in, c) for c in out_candidates]
        else:
            pairs = [(i, o) for i, o in product(in_candidates, out_candidates) if not (skip_equal and i == o)]
        self.pairs = pairs
        self.weight = nn.Parameter(torch.empty(meta_out, 1 if depthwise else meta_in, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode='fan_out', nonlinearity='relu')
        self.bias = nn.Parameter(torch.zeros(meta_out)) if bias else None
        self.out_proj = _projection_bank(meta_out, list(out_candidates), pairs, 1, overlap, noise, one_group=depthwise)
        self.in_proj = None if (self.fixed_in or depthwise) else \
            _projection_bank(meta_in, list(in_candidates), pairs, 0, overlap, noise)
        self.projections_attached = False
        self.plan: Optional[Plan] = None  # where the projections go; None: the cheapest for each call

    def banks(self) -> List[ProjectionBank]:
        """The projection banks of this layer: the out axis (P), then the in axis (Q) if searched."""
        return [self.out_proj] + ([] if self.in_proj is None else [self.in_proj])

    def projections(self) -> Iterator[Tuple[str, str, torch.Tensor]]:
        """(axis, pair key, matrix) of every projection of this layer (views into its banks)."""
        return _projections(self.banks())

    def projection_groups(self) -> Dict[GroupKey, List[torch.Tensor]]:
        """The candidates the orthogonality penalty sets against each other
        (docs/design.md#grouped-orthogonality-penalty): on the out axis, for each input width the P of
        every output candidate; on the in axis, for each output width the Q of every input candidate; a
        depthwise conv (one projection per width) and the stem (one input width) form one group of all
        their candidates."""
        return _groups(self.banks())

    def _proj(self, table: ProjectionBank, key: str) -> torch.Tensor:
        p = table[key]
        return p if self.projections_attached else p.detach()

    def _check_pair(self, c_in: int, c_out: int) -> str:
        key = pair_key(self.meta_in if self.fixed_in else c_in, c_out)
        if key not in self.out_proj:
            raise KeyError(f"width pair (in={c_in}, out={c_out}) is not a candidate of this layer; "
                           f"candidates: {self.pairs}")
        return key

    def plans(self) -> Tuple[Plan, ...]:
        """Every way this layer can apply its projections; the first puts them all on the kernel."""
        if self.depthwise:
            return (('weight', None),)
        return tuple(product(SIDES, (None,) if self.fixed_in else SIDES))

    def plan_macs(self, plan: Plan, c_in: int, c_out: int, in_pixels: int, out_pixels: int) -> int:
        """Multiply-adds of one forward under ``plan``; ``*_pixels`` = batch x height x width."""
        k2, meta_in, meta_out = self.kernel_size ** 2, self.meta_in, self.meta_out
        if self.depthwise:
            return c_out * meta_out * k2 + out_pixels * c_out * k2
        p_side, q_side = plan
        kernel = {('weight', 'weight'): min(self._kernel_orders(c_in, c_out)),
                  ('weight', None): c_out * meta_out * c_in * k2,
                  ('weight', 'activation'): c_out * meta_out * meta_in * k2,
                  ('activation', 'weight'): meta_out * meta_in * k2 * c_in}.get(plan, 0)
        conv_in = meta_in if q_side == 'activation' else c_in
        conv_out = meta_out if p_side == 'activation' else c_out
        lift = in_pixels * meta_in * c_in if q_side == 'activation' else 0
        project = out_pixels * meta_out * c_out if p_side == 'activation' else 0
        return kernel + lift + out_pixels * conv_out * conv_in * k2 + project

    def _kernel_orders(self, c_in: int, c_out: int) -> Tuple[int, int]:
        """MACs of ``P^T W Q`` projecting the output axis first, and the input axis first."""
        k2, meta_in, meta_out = self.kernel_size ** 2, self.meta_in, self.meta_out
        return k2 * c_out * meta_in * (meta_out + c_in), k2 * c_in * meta_out * (meta_in + c_out)

    def cheapest_plan(self, c_in: int, c_out: int, in_pixels: int, out_pixels: int) -> Plan:
        """The plan with the fewest multiply-adds (ties: the kernel side first)."""
        return min(self.plans(), key=lambda plan: self.plan_macs(plan, c_in, c_out, in_pixels, out_pixels))

    def candidate_weight(self, c_in: int, c_out: int) -> torch.Tensor:
        """The (c_out, c_in/groups, k, k) kernel of candidate (c_in, c_out)."""
        return self._kernel(self.plans()[0], self._check_pair(c_in, c_out), c_in, c_out)[0]

    def candidate_bias(self, c_in: int, c_out: int) -> Optional[torch.Tensor]:
        """The bias ``P^T b`` of candidate (c_in, c_out) (None without a bias)."""
        if self.bias is None:
            return None
        return self._proj(self.out_proj, self._check_pair(c_in, c_out)).t() @ self.bias

    def _kernel(self, plan: Plan, key: str, c_in: int, c_out: int):
        """(kernel, P or None, Q or None): the kernel with the weight-side projections applied, and
        the projections left for the activations."""
        k, k2, meta_out, meta_in = self.kernel_size, self.kernel_size ** 2, self.meta_out, self.meta_in
        p = self._proj(self.out_proj, key)
        q = None if plan[1] is None else self._proj(self.in_proj, key)
        w = self.weight
        if plan[0] == 'activation' and plan[1] != 'weight':  # the meta kernel itself
            return w, p, q
        if plan == ('activation', 'weight'):
            w = (w.reshape(meta_out, meta_in, k2).transpose(1, 2) @ q).transpose(1, 2)
            return w.reshape(meta_out, c_in, k, k), p, None
        if plan[1] != 'weight':  # P on the kernel; Q on the activations or absent
            return (p.t() @ w.reshape(meta_out, -1)).reshape(c_out, -1, k, k), None, q
        # both on the kernel, in the cheaper order
        out_first, in_first = self._kernel_orders(c_in, c_out)
        if out_first <= in_first:
            w = (p.t() @ w.reshape(meta_out, -1)).reshape(c_out, meta_in, k2)
            return (w.transpose(1, 2) @ q).transpose(1, 2).reshape(c_out, c_in, k, k), None, None
        w = w.reshape(meta_out, meta_in, k2).transpose(1, 2) @ q  # (O, k2, c_in)
        w = (p.t() @ w.reshape(meta_out, -1)).reshape(c_out, k2, c_in).transpose(1, 2)
        return w.reshape(c_out, c_in, k, k), None, None

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        """Output of candidate (x.shape[1], c_out), projections applied where the plan says."""
        c_in = x.shape[1]
        key = self._check_pair(c_in, c_out)
        plan = self.plan
        if plan is None:
            batch, _, h, w = x.shape
            h_out, w_out = (conv_out_size(s, self.kernel_size, self.stride) for s in (h, w))
            plan = self.cheapest_plan(c_in, c_out, batch * h * w, batch * h_out * w_out)
        elif plan not in self.plans():
            raise ValueError(f"plan {plan} is not one of this layer's plans {self.plans()}")
        w, p, q = self._kernel(plan, key, c_in, c_out)
        if q is not None:  # lift the input to the meta width: z = Q x
            x = mix_channels(x, q.t())
        y = F.conv2d(x, w, None, self.stride, self.padding, 1, c_in if self.depthwise else 1)
        y = y if p is None else mix_channels(y, p)  # project down: P^T y
        return y if self.bias is None else y + self.candidate_bias(c_in, c_out)[:, None, None]


def _projections(banks: Sequence[ProjectionBank]) -> Iterator[Tuple[str, str, torch.Tensor]]:
    for bank in banks:
        for (axis, _), keys in bank.members.items():
            for key in keys:
                yield axis, key, bank[key]


def _groups(banks: Sequence[ProjectionBank]) -> Dict[GroupKey, List[torch.Tensor]]:
    return {group: ps for bank in banks for group, ps in bank.groups().items()}


def mix_channels(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` activations times ``m: (C, D)`` along channels, as one matmul over the
    channels-last view (no copy when ``x`` is channels_last; the result is channels_last)."""
    return (x.permute(0, 2, 3, 1) @ m).permute(0, 3, 1, 2)


class APSLinear(nn.Module):
    """Classifier whose input width is searched: ``W_c = W @ Q`` for each input candidate, applied
    as ``W_c x`` or ``W (Q x)``, whichever takes fewer multiply-adds."""

    def __init__(self, in_candidates: Sequence[int], meta_in: int, out_features: int, overlap: float = 1.0,
                 noise: float = 1e-3):
        super().__init__()
        self.meta_in = meta_in
        self.weight = nn.Parameter(torch.empty(out_features, meta_in))
        self.bias = nn.Parameter(torch.zeros(out_features))
        bound = 1 / math.sqrt(max(in_candidates))
        nn.init.uniform_(self.weight, -bound, bound)
        self.pairs = [(c, out_features) for c in in_candidates]
        self.in_proj = _projection_bank(meta_in, list(in_candidates), self.pairs, 0, overlap, noise)
        self.projections_attached = False

    def banks(self) -> List[ProjectionBank]:
        """The projection bank of this layer (its in axis, Q)."""
        return [self.in_proj]

    def projections(self) -> Iterator[Tuple[str, str, torch.Tensor]]:
        """(axis, pair key, matrix) of every projection of this layer (views into its bank)."""
        return _projections(self.banks())

    def projection_groups(self) -> Dict[GroupKey, List[torch.Tensor]]:
        """One group: the Q of every input candidate (one output width)."""
        return _groups(self.banks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the classifier for the input width x.shape[1]."""
        q = self.in_proj[pair_key(x.shape[1], self.weight.shape[0])]
        q = q if self.projections_attached else q.detach()
        (batch, c_in), (classes, meta_in) = x.shape, self.weight.shape
        if batch * meta_in * (c_in + classes) < classes * c_in * (meta_in + batch):  # fewer MACs as W (Q x)
            return F.linear(x @ q.t(), self.weight, self.bias)
        return F.linear(x, self.weight @ q, self.bias)


class APSBatchNorm2d(nn.Module):
    """BatchNorm with statistics kept per candidate pair (affine=False, as in the supernet).

    Subnets are normalised with batch statistics, in evaluation too, unless
    ``use_running_stats`` is set: the per-pair running averages lag behind meta weights that
    change under every sampled architecture. Evaluation never updates the running statistics.
    """

    def __init__(self, pairs: Sequence[Pair], momentum: float = 0.1):
        super().__init__()
        self.norms = nn.ModuleDict({pair_key(*p): nn.BatchNorm2d(p[1], affine=False, momentum=momentum)
                                    for p in pairs})
        self.momentum = momentum
        self.use_running_stats = False

    def forward(self, x: torch.Tensor, c_in: int) -> torch.Tensor:
        """Normalise with the statistics of pair (c_in, x.shape[1])."""
        bn = self.norms[pair_key(c_in, x.shape[1])]
        batch_stats = self.training or not self.use_running_stats
        return F.batch_norm(x, bn.running_mean, bn.running_var, None, None, batch_stats,
                            self.momentum if self.training else 0.0, bn.eps)


def aps_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """Every APS conv/linear of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (APSConv2d, APSLinear))}


def attach_projections(model: nn.Module, attached: bool) -> None:
    """Let the task loss's gradient reach the projections (``projection_grad: task_and_penalty`` after
    warm-up) or detach them from the forward (the default: they learn from the penalty alone)."""
    for m in aps_modules(model).values():
        m.projections_attached = attached
