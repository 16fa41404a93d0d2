"""The ImageNet backbones of the search spaces, read from timm's own architecture definitions.

``timm_layout`` builds a timm model on the meta device (no weights, no compute) and reads its stem,
the kind, stage, stride, expansion, residual and conv widths of every block, and the head conv.
``check_layout_matches_timm`` compares that with ``aps_zoo.channels.network_layout`` and the
standard widths (``uniform_widths`` at multiplier 1), so a space of a family with a timm counterpart (its
registry entry's ``timm_model``) is the timm network's structure with searched widths. Two readers cover
timm's ResNets and its EfficientNet-builder models (MobileNetV2, MobileNetV3).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from timm.layers import get_act_layer
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet

from ..channels import network_layout, uniform_widths
from ..families import get_family


class BackboneMismatchError(ValueError):
    """The layout of ``aps_zoo.channels`` differs from the timm model it stands for."""


@dataclass(frozen=True)
class BackboneBlock:
    """One block: kind, stage, stride, expansion (out/mid of a bottleneck, expand/in of an inverted residual),
    residual connection, the output width and kernel size of each of its convs, its activation (class name)
    and whether it has a squeeze-excitation."""
    kind: str
    stage: int
    stride: int
    expansion: float
    residual: bool
    widths: Tuple[int, ...]
    kernels: Tuple[int, ...]
    act: str = 'ReLU'
    se: bool = False


@dataclass(frozen=True)
class BackboneLayout:
    """Stem conv (out width, kernel, stride), max-pool and activation, blocks, the head conv width (None if
    absent) and whether it runs on pooled features (timm's efficient head)."""
    stem: Tuple[int, int, int]
    stem_pool: bool
    blocks: Tuple[BackboneBlock, ...]
    head: Optional[int]
    stem_act: str = 'ReLU'
    head_pooled: bool = False


def timm_name(family: str, depth: int = 0) -> Optional[str]:
    """The timm model whose architecture a space of ``family``/``depth`` uses (None: no timm counterpart)."""
    return get_family(family).timm_model(depth)


def _act_name(name: Optional[str]) -> str:
    """Class name of a timm activation name ('hard_swish' -> 'Hardswish')."""
    return get_act_layer(name).__name__ if name else 'Identity'


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
                                        True, tuple(c.out_channels for c in convs), _kernels(convs),
                                        type(block.act1).__name__))
    return blocks


def _timm_efficientnet_blocks(model: nn.Module) -> List[BackboneBlock]:
    blocks = []
    for stage, seq in enumerate(model.blocks):
        for block in seq:
            name = type(block).__name__
            if name == 'DepthwiseSeparableConv':
                convs, expansion, kind, first = (block.conv_dw, block.conv_pw), 1.0, 'inverted_residual', block.bn1
            elif name == 'InvertedResidual':
                convs, kind, first = (block.conv_pw, block.conv_dw, block.conv_pwl), 'inverted_residual', block.bn1
                expansion = block.conv_pw.out_channels / block.conv_pw.in_channels
            elif name == 'ConvBnAct':
                convs, expansion, kind, first = (block.conv,), 1.0, 'conv', block.bn1
            else:
                raise BackboneMismatchError(f"unexpected timm EfficientNet-builder block {name}")
            stride = max(c.stride[0] for c in convs)
            blocks.append(BackboneBlock(kind, stage, stride, expansion, bool(block.has_skip),
                                        tuple(c.out_channels for c in convs), _kernels(convs),
                                        type(first.act).__name__, not isinstance(getattr(block, 'se', None),
                                                                                 (nn.Identity, type(None)))))
    return blocks


@lru_cache(maxsize=None)
def timm_layout(name: str) -> BackboneLayout:
    """Stem, blocks and head of timm's ``name`` (a ResNet or an EfficientNet-builder model such as
    ``mobilenetv2_100`` or ``mobilenetv3_large_100``), built on the meta device."""
    with torch.device('meta'):
        model = timm.create_model(name)
    if isinstance(model, ResNet):
        stem = model.conv1
        pool = isinstance(model.maxpool, nn.MaxPool2d) and model.maxpool.kernel_size == 3 and model.maxpool.stride == 2
        return BackboneLayout((stem.out_channels, stem.kernel_size[0], _stride(stem)), pool,
                              tuple(_timm_resnet_blocks(model)), None, type(model.act1).__name__)
    if hasattr(model, 'conv_stem') and hasattr(model, 'blocks'):
        stem = model.conv_stem
        return BackboneLayout((stem.out_channels, stem.kernel_size[0], _stride(stem)), False,
                              tuple(_timm_efficientnet_blocks(model)), model.conv_head.out_channels,
                              type(model.bn1.act).__name__, isinstance(model, MobileNetV3))
    raise BackboneMismatchError(f"no backbone reader for timm model {name!r}: a ResNet or an EfficientNet-builder "
                                f"model is needed")


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
                                    tuple(c.kernel for c in b.convs), _act_name(b.convs[0].act), b.se))
    head = None if layout.head_entry is None else w[layout.head_entry]
    stem = layout.stem
    return BackboneLayout((w[0], stem.conv.kernel, stem.conv.stride), stem.pool == (3, 2), tuple(blocks), head,
                          _act_name(stem.conv.act), layout.head is not None and layout.head.pooled)


def layout_differences(ours: BackboneLayout, theirs: BackboneLayout) -> List[str]:
    """Human-readable differences between two layouts (empty if they agree)."""
    diffs = []
    for field in ('stem', 'stem_pool', 'head', 'stem_act', 'head_pooled'):
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
