"""MobileNetV2 (timm's ``mobilenetv2_100``): a 3x3 stride-2 stem; stages (expansion t, repeats n, stride s)
(1,1,1) (6,2,2) (6,3,2) (6,4,2) (6,3,1) (6,3,2) (6,1,1); a 1x1 head conv; ReLU6.

A config lists the stem; block 1 (dw, out); 16 blocks (expand, dw, out) with expand == dw; the head conv. A
residual joins stride-1 blocks that are not first in their stage.
"""
from __future__ import annotations

from typing import List, Tuple

from ..layout import ConvSpec, Layer, NetworkLayout, StemSpec, block_spec
from . import Family, Preprocessing, TimmNaming, register_family

STAGES = ((1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1))
STAGE_WIDTHS = (16, 24, 32, 64, 96, 160, 320)
ACT = 'relu6'


def build(depth: int = 0) -> NetworkLayout:
    """The MobileNetV2 layout (one depth)."""
    blocks, entry, prev = [], 1, 0
    for stage, (t, n, s) in enumerate(STAGES):
        for i in range(n):
            stride = s if i == 0 else 1
            block = block_spec('inverted_residual', stage, stride, prev, entry, stride == 1 and i > 0, ACT,
                               expand=t != 1)
            blocks.append(block)
            entry, prev = entry + len(block.entries), block.out_entry
    head = ConvSpec('head.conv', entry - 1, entry, 1, act=ACT)
    return NetworkLayout('mobilenetv2', 0, StemSpec(ConvSpec('stem.conv', None, 0, 3, 2, act=ACT)), tuple(blocks),
                         head, entry + 1)


def uniform(layout: NetworkLayout) -> List[int]:
    """timm's mobilenetv2_100 widths."""
    base = [32, 32, 16]
    for b in layout.blocks[1:]:
        cin = base[b.in_entry]
        base += [cin * 6, cin * 6, STAGE_WIDTHS[b.stage]]
    return base + [1280]


# timm has no shortcut convs (identity only): a zoo conv shortcut is never found there
_TIMM_CONVS = {1: {'conv': ('conv', 'bn1')},
               3: {'conv_pw': ('conv_pw', 'bn1'), 'conv_dw': ('conv_dw', 'bn2'), 'conv_pwl': ('conv_pwl', 'bn3')},
               2: {'conv_dw': ('conv_dw', 'bn1'), 'conv_pwl': ('conv_pw', 'bn2')}}


def timm_names(layout: NetworkLayout, layer: Layer) -> Tuple[str, str]:
    """(conv, BN) prefixes of ``layer`` in timm's EfficientNet-builder models (MobileNetV2/V3)."""
    if layer.name in ('stem', 'head'):
        return ('conv_stem', 'bn1') if layer.name == 'stem' else ('conv_head', 'bn2')
    stage, index = layout.stage_index(layer.block)
    conv = layer.name.split('.', 2)[2]
    block = layout.blocks[layer.block]
    conv_name, bn_name = _TIMM_CONVS.get(len(block.entries), {}).get(conv, (conv, conv))
    return f'blocks.{stage}.{index}.{conv_name}', f'blocks.{stage}.{index}.{bn_name}'


register_family(Family(
    name='mobilenetv2', build=build, uniform=uniform, label=lambda d: 'MobileNetV2', architecture='aps_mobilenetv2',
    train_recipe=lambda d: 'recipes/train_mobilenetv2_imagenet.yaml',
    is_zoo_state=lambda state: 'blocks.0.conv_dw.conv.weight' in state and 'head.bn.weight' in state,
    timm_model=lambda d: 'mobilenetv2_100',
    timm_naming=TimmNaming('timm MobileNetV2', 'bn2.weight', timm_names, 'classifier', 'blocks.', 3),
    preprocessing=Preprocessing(interpolation='bicubic'),
    peers={0: (('Uniform MobileNetV2 1.0x', 3.0e8, '72.0-72.7'), ('DMCP', 3.0e8, '73.5'),
               ('AutoSlim', 3.05e8, '74.2'))}))
