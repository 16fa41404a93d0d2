"""The APS supernet of a search space: the family's layout built from APS layers.

``supernet(x, widths)`` runs the subnet with per-entry ``widths`` (a ChannelConfig's widths).
The structure and the shortcut rule are the ones the exported timm models use, read from
``aps_zoo.channels`` so a decoded config is a valid network.
"""
from __future__ import annotations

from functools import partial
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from timm.layers import get_act_fn

from ..aps.layers import APSBatchNorm2d, APSConv2d, APSLinear
from ..aps.projection import required_meta_width
from ..channels import BlockSpec, ConvSpec, shortcut_kind
from ..layout import se_width
from .space import SearchSpace


def activation(name: Optional[str]):
    """The in-place functional form of timm activation ``name`` (None: none), as timm's blocks apply it."""
    return None if name is None else partial(get_act_fn(name), inplace=True)


RELU = activation('relu')


class _ConvBN(nn.Module):
    """APS conv + per-candidate BN (+ activation); without BN the conv has a bias."""

    def __init__(self, space: SearchSpace, in_entry, out_entry: int, kernel: int, stride: int = 1,
                 act=RELU, depthwise: bool = False, norm: bool = True, skip_equal: bool = False, bias: bool = False):
        super().__init__()
        cin = None if in_entry is None else space.candidates[in_entry]
        meta_in = space.input_size[0] if in_entry is None else space.meta_widths[in_entry]
        self.conv = APSConv2d(cin, space.candidates[out_entry], meta_in, space.meta_widths[out_entry], kernel,
                              stride, depthwise=depthwise, overlap=space.overlap, skip_equal=skip_equal, bias=bias)
        self.bn = APSBatchNorm2d(self.conv.pairs) if norm else None
        self.act = act
        self.fixed_in = meta_in if in_entry is None else None

    @classmethod
    def of(cls, space: SearchSpace, spec: ConvSpec) -> '_ConvBN':
        """The APS layer of a layout conv (its activation, BN or bias)."""
        return cls(space, spec.in_entry, spec.out_entry, spec.kernel, spec.stride, act=activation(spec.act),
                   depthwise=spec.depthwise, norm=spec.norm, bias=not spec.norm)

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        """Output of this conv (+ BN) or block for the given widths."""
        c_in = x.shape[1] if self.fixed_in is None else self.fixed_in
        x = self.conv(x, c_out)
        if self.bn is not None:
            x = self.bn(x, c_in)
        return self.act(x) if self.act is not None else x


class _SqueezeExcite(nn.Module):
    """timm's squeeze-excitation (ReLU, hard-sigmoid gate) of APS 1x1 convs with bias; its reduced width is
    ``se_width`` of each candidate of ``entry`` (one candidate pair per input width)."""

    def __init__(self, space: SearchSpace, entry: int):
        super().__init__()
        cands, meta = space.candidates[entry], space.meta_widths[entry]
        reduced = [se_width(c) for c in cands]
        meta_rd = max(se_width(meta), required_meta_width(sorted(set(reduced)), space.overlap))
        kw = dict(overlap=space.overlap, bias=True)
        self.reduce = APSConv2d(cands, reduced, meta, meta_rd, 1, pairs=list(zip(cands, reduced)), **kw)
        self.expand = APSConv2d(reduced, cands, meta_rd, meta, 1, pairs=list(zip(reduced, cands)), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` gated per channel by the excitation of its pooled features."""
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True), se_width(x.shape[1])))
        return x * F.hardsigmoid(self.expand(s, x.shape[1]))


class SupernetBlock(nn.Module):
    """A basic, bottleneck, inverted-residual (with optional squeeze-excitation) or conv block of APS layers
    with the searched shortcut."""

    def __init__(self, space: SearchSpace, spec: BlockSpec):
        super().__init__()
        self.spec = spec
        self.convs = nn.ModuleList([_ConvBN.of(space, c) for c in spec.convs])
        self.se = _SqueezeExcite(space, next(c.out_entry for c in spec.convs if c.depthwise)) if spec.se else None
        self.shortcut = None
        if spec.residual:
            # 1x1 conv + BN at stride 1 (used when widths differ); 2x2 avg-pool + 1x1 conv at stride 2
            self.shortcut = _ConvBN(space, spec.in_entry, spec.out_entry, 1, act=None, norm=spec.stride == 1,
                                    skip_equal=spec.stride == 1)
        self.out_act = RELU if spec.kind in ('basic', 'bottleneck') else None

    def forward(self, x: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
        """Output of this conv (+ BN) or block for the given widths."""
        spec = self.spec
        out_widths = [widths[j] for j in spec.entries]
        y = x
        for conv, c, w in zip(self.convs, spec.convs, out_widths):
            y = conv(y, w)
            if self.se is not None and c.depthwise:
                y = self.se(y)
        kind = shortcut_kind(spec, x.shape[1], out_widths[-1])
        if kind == 'identity':
            y = y + x
        elif kind == 'conv_bn':
            y = y + self.shortcut(x, out_widths[-1])
        elif kind == 'pool_conv':
            pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
            y = y + self.shortcut(pooled, out_widths[-1])
        return self.out_act(y) if self.out_act is not None else y


class APSSupernet(nn.Module):
    """Supernet of a SearchSpace; ``forward(x, widths)`` runs one sampled architecture."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        layout = space.layout
        self.stem = _ConvBN.of(space, layout.stem.conv)
        self.stem_pool = layout.stem.pool
        self.blocks = nn.ModuleList([SupernetBlock(space, b) for b in layout.blocks])
        self.head = None if layout.head is None else _ConvBN.of(space, layout.head)
        self.pooled_head = layout.head is not None and layout.head.pooled
        f = layout.feature_entry
        self.fc = APSLinear(space.candidates[f], space.meta_widths[f], space.num_classes, overlap=space.overlap)

    def forward(self, x: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
        """Logits of the subnet with per-entry ``widths`` (the orthogonality penalty depends on the
        projections alone: ``aps_zoo.aps.orthogonality_loss``, its gradient ``add_orthogonality_grad_``).

        Runs channels_last: candidate kernels come out of their matmuls in that layout, and
        projections applied to activations are plain matmuls over the channels-last view."""
        x = self.stem(x.contiguous(memory_format=torch.channels_last), widths[0])
        if self.stem_pool:
            x = F.max_pool2d(x, *self.stem_pool, self.stem_pool[0] // 2)
        for block in self.blocks:
            x = block(x, widths)
        if self.pooled_head:  # timm's efficient head: the head conv runs on the pooled features
            x = x.mean((2, 3), keepdim=True)
        if self.head is not None:
            x = self.head(x, widths[self.space.layout.head_entry])
        logits = self.fc(x.mean((2, 3)))
        return logits

    def meta_parameters(self) -> List[nn.Parameter]:
        """Meta weights and classifier bias (the SGD group)."""
        return [p for n, p in self.named_parameters() if '_proj.' not in n]

    def projection_parameters(self) -> List[nn.Parameter]:
        """Projection matrices P and Q (their own SGD group: lr 0 in warm-up, then the projection lr)."""
        return [p for n, p in self.named_parameters() if '_proj.' in n]


def keep_projections_out_of_ddp(supernet: APSSupernet, projection_grad: str, learn_projections: bool) -> List[str]:
    """Name the projections in DDP's parameters to ignore (read when ``accelerator.prepare`` wraps the module)
    unless the task gradient reaches them (``projection_grad: task_and_penalty`` with learned projections);
    returns the names.

    Under ``penalty`` they enter the forward detached: their only gradient is the grouped orthogonality
    penalty's, a function of the projections alone and the same on every rank, so DDP would all-reduce the
    task's zero gradient of every projection each step for nothing. Left out of DDP they are neither
    bucketed nor broadcast from rank 0 at wrap time, so every rank must hold the same projections: built
    under the same seed (the search's :class:`~aps_zoo.runs.Run` seeds every process alike before the
    supernet exists) and updated by the same penalty gradient on every rank."""
    if projection_grad == 'task_and_penalty' and learn_projections:
        return []
    names = [n for n, _ in supernet.named_parameters() if '_proj.' in n]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(supernet, names)
    return names
