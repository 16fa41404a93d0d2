"""MobileNetV3-Large (timm's ``mobilenetv3_large_100``): a 3x3 stride-2 stem with hard-swish; a depthwise-
separable block; 14 inverted residuals with 3x3 or 5x5 depthwise convs, ReLU in the first three stages and
hard-swish after, squeeze-excitation (reduced to ``make_divisible(expanded * 0.25, 8)``, hard-sigmoid gate) in
stages 2, 4 and 5; a 1x1 conv to 960; timm's efficient head (global pool, 1x1 conv with bias to 1280,
hard-swish, classifier).

A config lists 47 widths: the stem; block 0 (dw, out); 14 x (expand, dw, out) with expand == dw; the 960 conv;
the head conv. A residual joins the stride-1 blocks whose input and output widths match in timm's network.
"""
from __future__ import annotations

from typing import List

from ..layout import ConvSpec, NetworkLayout, StemSpec, block_spec
from . import Family, Preprocessing, TimmNaming, register_family
from .mobilenetv2 import timm_names

HS = 'hard_swish'
STEM = 16
# (stage, depthwise kernel, stride, expanded width, output width, squeeze-excitation, activation), timm's
# arch_def of mobilenetv3_large_100 at its widths; the first block has no expansion (its dw keeps the stem's).
BLOCKS = ((0, 3, 1, 16, 16, False, 'relu'),
          (1, 3, 2, 64, 24, False, 'relu'), (1, 3, 1, 72, 24, False, 'relu'),
          (2, 5, 2, 72, 40, True, 'relu'), (2, 5, 1, 120, 40, True, 'relu'), (2, 5, 1, 120, 40, True, 'relu'),
          (3, 3, 2, 240, 80, False, HS), (3, 3, 1, 200, 80, False, HS), (3, 3, 1, 184, 80, False, HS),
          (3, 3, 1, 184, 80, False, HS),
          (4, 3, 1, 480, 112, True, HS), (4, 3, 1, 672, 112, True, HS),
          (5, 5, 2, 672, 160, True, HS), (5, 5, 1, 960, 160, True, HS), (5, 5, 1, 960, 160, True, HS))
LAST_CONV, HEAD = 960, 1280


def build(depth: int = 0) -> NetworkLayout:
    """The MobileNetV3-Large layout (one depth)."""
    blocks, entry, prev, width = [], 1, 0, STEM
    for i, (stage, kernel, stride, _, out, se, act) in enumerate(BLOCKS):
        block = block_spec('inverted_residual', stage, stride, prev, entry, stride == 1 and width == out, act,
                           kernel, expand=i > 0, se=se)
        blocks.append(block)
        entry, prev, width = entry + len(block.entries), block.out_entry, out
    blocks.append(block_spec('conv', BLOCKS[-1][0] + 1, 1, prev, entry, False, HS, kernel=1))
    head = ConvSpec('head.conv', entry, entry + 1, 1, act=HS, norm=False, pooled=True)
    return NetworkLayout('mobilenetv3_large', 0, StemSpec(ConvSpec('stem.conv', None, 0, 3, 2, act=HS)),
                         tuple(blocks), head, entry + 2)


def uniform(layout: NetworkLayout) -> List[int]:
    """timm's mobilenetv3_large_100 widths."""
    widths = [STEM]
    for i, (_, _, _, mid, out, _, _) in enumerate(BLOCKS):
        widths += [mid, out] if i == 0 else [mid, mid, out]
    return widths + [LAST_CONV, HEAD]


register_family(Family(
    name='mobilenetv3_large', build=build, uniform=uniform, label=lambda d: 'MobileNetV3-Large',
    architecture='aps_mobilenetv3_large_100',
    is_zoo_state=lambda state: 'head.conv.bias' in state,
    timm_model=lambda d: 'mobilenetv3_large_100',
    timm_naming=TimmNaming('timm MobileNetV3', 'conv_head.bias', timm_names, 'classifier', 'blocks.', 3),
    preprocessing=Preprocessing(interpolation='bicubic')))
