"""The ImageNet backbones of the search spaces, read from timm's own architecture definitions.

``timm_layout`` builds a timm model on the meta device (no weights, no compute) and reads its stem,
the kind, stage, stride, expansion, residual and conv widths of every block, and the head conv.
``check_layout_matches_timm`` compares that with ``aps_zoo.channels.network_layout`` and the
standard widths (``uniform_widths`` at multiplier 1), so a space of family ``resnet`` or
``mobilenetv2`` is the timm network's structure with searched widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..channels import RESNET_LAYERS, network_layout, uniform_widths


class BackboneMismatchError(ValueError):
    """The layout of ``aps_zoo.channels`` differs from the timm model it stands for."""


@dataclass(frozen=True)
class BackboneBlock:
    """One block: kind, stage, stride, expansion (out/mid of a bottleneck, expand/in of an inverted residual),
    residual connection, and the output width and kernel size of each of its convs."""
    kind: str
    stage: int
    stride: int
    expansion: float
    residual: bool
    widths: Tuple[int, ...]
    kernels: Tuple[int, ...]


@dataclass(frozen=True)
class BackboneLayout:
    """Stem conv (out width, kernel, stride) and max-pool, blocks, and the head conv width (None if absent)."""
    stem: Tuple[int, int, int]
    stem_pool: bool
    blocks: Tuple[BackboneBlock, ...]
    head: Optional[int]


def timm_name(family: str, depth: int = 0) -> Optional[str]:
    """The timm model whose architecture a space of ``family``/``depth`` uses (None: no timm counterpart)."""
    if family == 'resnet' and depth in RESNET_LAYERS:
        return f'resnet{depth}'
    if family == 'mobilenetv2':
        return 'mobilenetv2_100'
    return None


def _stride(conv: nn.Conv2d) -> int:
    return conv.stride[0]


def _kernels(convs) -> Tuple[int, ...]:
    return tuple(c.kernel_size[0] for c in convs)


def _timm_resnet_blocks(model: nn.Module) -> List[BackboneBlock]:
    blocks = []
    for stage in range(4):
        for block in getattr(model, f'layer{stage + 1}'):
            name = type(block).__name__
            if name == 'BasicBlock':
                convs, stride = (block.conv1, block.conv2), _stride(block.conv1)
            elif name == 'Bottleneck':
                convs, stride = (block.conv1, block.conv2, block.conv3), _stride(block.conv2)
            else:
                raise BackboneMismatchError(f"unexpected timm ResNet block {name}")
            blocks.append(BackboneBlock(name.lower().replace('block', ''), stage, stride, float(block.expansion),
                                        True, tuple(c.out_channels for c in convs), _kernels(convs)))
    return blocks


def _timm_mobilenet_blocks(model: nn.Module) -> List[BackboneBlock]:
    blocks = []
    for stage, seq in enumerate(model.blocks):
        for block in seq:
            name = type(block).__name__
            if name == 'DepthwiseSeparableConv':
                convs, expansion = (block.conv_dw, block.conv_pw), 1.0
            elif name == 'InvertedResidual':
                convs = (block.conv_pw, block.conv_dw, block.conv_pwl)
                expansion = block.conv_pw.out_channels / block.conv_pw.in_channels
            else:
                raise BackboneMismatchError(f"unexpected timm MobileNetV2 block {name}")
            blocks.append(BackboneBlock('inverted_residual', stage, _stride(block.conv_dw), expansion,
                                        bool(block.has_skip), tuple(c.out_channels for c in convs), _kernels(convs)))
    return blocks


@lru_cache(maxsize=None)
def timm_layout(name: str) -> BackboneLayout:
    """Stem, blocks and head of timm's ``name`` (``resnet*`` or ``mobilenetv2_*``), built on the meta device."""
    with torch.device('meta'):
        model = timm.create_model(name)
    if name.startswith('resnet'):
        stem = model.conv1
        pool = isinstance(model.maxpool, nn.MaxPool2d) and model.maxpool.kernel_size == 3 and model.maxpool.stride == 2
        return BackboneLayout((stem.out_channels, stem.kernel_size[0], _stride(stem)), pool,
                              tuple(_timm_resnet_blocks(model)), None)
    if name.startswith('mobilenetv2'):
        stem = model.conv_stem
        return BackboneLayout((stem.out_channels, stem.kernel_size[0], _stride(stem)), False,
                              tuple(_timm_mobilenet_blocks(model)), model.conv_head.out_channels)
    raise BackboneMismatchError(f"no backbone reader for timm model {name!r}; known: resnet*, mobilenetv2_*")


def zoo_layout(family: str, depth: int = 0) -> BackboneLayout:
    """The same description read from ``channels.network_layout`` (stem and block conv specs) with the
    standard widths."""
    layout, w = network_layout(family, depth), uniform_widths(family, depth)
    blocks = []
    for b in layout.blocks:
        widths = tuple(w[j] for j in b.entries)
        if b.kind == 'bottleneck':
            expansion = widths[2] / widths[1]
        elif b.kind == 'inverted_residual' and len(widths) == 3:
            expansion = widths[0] / w[b.in_entry]
        else:
            expansion = 1.0
        blocks.append(BackboneBlock(b.kind, b.stage, b.stride, expansion, b.residual, widths,
                                    tuple(c.kernel for c in b.convs)))
    head = None if layout.head_entry is None else w[layout.head_entry]
    stem = layout.stem
    return BackboneLayout((w[0], stem.conv.kernel, stem.conv.stride), stem.pool == (3, 2), tuple(blocks), head)


def layout_differences(ours: BackboneLayout, theirs: BackboneLayout) -> List[str]:
    """Human-readable differences between two layouts (empty if they agree)."""
    diffs = []
    for field in ('stem', 'stem_pool', 'head'):
        a, b = getattr(ours, field), getattr(theirs, field)
        if a != b:
            diffs.append(f"{field}: aps_zoo {a}, timm {b}")
    if len(ours.blocks) != len(theirs.blocks):
        diffs.append(f"number of blocks: aps_zoo {len(ours.blocks)}, timm {len(theirs.blocks)}")
    for i, (a, b) in enumerate(zip(ours.blocks, theirs.blocks)):
        for field in BackboneBlock.__dataclass_fields__:
            if getattr(a, field) != getattr(b, field):
                diffs.append(f"block {i} {field}: aps_zoo {getattr(a, field)}, timm {getattr(b, field)}")
    return diffs


@lru_cache(maxsize=None)
def check_layout_matches_timm(family: str, depth: int = 0) -> Optional[str]:
    """Raise BackboneMismatchError if the layout of ``family``/``depth`` is not timm's; returns the timm name
    (None for families without a timm counterpart, e.g. ``resnet_cifar``)."""
    name = timm_name(family, depth)
    if name is None:
        return None
    diffs = layout_differences(zoo_layout(family, depth), timm_layout(name))
    if diffs:
        raise BackboneMismatchError(
            f"aps_zoo.channels layout of {family}{depth or ''} disagrees with timm {timm.__version__} {name}: "
            + '; '.join(diffs))
    return name


def timm_reference_macs(name: str, input_size: Tuple[int, int, int] = (3, 224, 224)) -> int:
    """MACs of timm's ``name`` at ``input_size``: torch's FlopCounterMode / 2 over one forward on the meta
    device (shapes only, the same count as a CPU forward)."""
    with torch.device('meta'):
        model = timm.create_model(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *input_size, device='meta'))
    return counter.get_total_flops() // 2
