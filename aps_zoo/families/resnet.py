"""ResNet families: ``resnet_cifar`` (3x3 stride-1 stem, 3 stages of basic blocks, depth 6n+2) and ``resnet``
(timm's 7x7 stride-2 stem + max-pool, 4 stages, basic blocks for depth 18/34, bottlenecks for 50+).

A config lists the stem, then (mid, out) per basic block or (mid, mid, out) per bottleneck. Every block has a
residual (docs/design.md#shortcuts).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from ..layout import ChannelConfigError, ConvSpec, Layer, NetworkLayout, StemSpec, block_spec
from . import Family, Preprocessing, TimmNaming, register_family

RESNET_LAYERS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _layout(family: str, depth: int, stem: StemSpec, kind: str, layers: Sequence[int]) -> NetworkLayout:
    blocks, entry, prev = [], 1, 0
    for stage, n in enumerate(layers):
        for i in range(n):
            block = block_spec(kind, stage, 2 if i == 0 and stage > 0 else 1, prev, entry, residual=True)
            blocks.append(block)
            entry, prev = entry + len(block.entries), block.out_entry
    return NetworkLayout(family, depth, stem, tuple(blocks), None, entry)


def cifar_layout(depth: int) -> NetworkLayout:
    """CIFAR ResNet of ``depth`` = 6n+2: n basic blocks per stage."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ChannelConfigError(f"resnet_cifar depth must be 6n+2 with n >= 1 (8, 14, 20, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return _layout('resnet_cifar', depth, StemSpec(ConvSpec('stem.conv', None, 0, 3, 1)), 'basic', (n, n, n))


def imagenet_layout(depth: int) -> NetworkLayout:
    """timm's ResNet-``depth``."""
    if depth not in RESNET_LAYERS:
        raise ChannelConfigError(f"resnet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    kind, layers = RESNET_LAYERS[depth]
    return _layout('resnet', depth, StemSpec(ConvSpec('stem.conv', None, 0, 7, 2), pool=(3, 2)), kind, layers)


def _uniform(stage_width: Tuple[int, ...]):
    def widths(layout: NetworkLayout) -> List[int]:
        base = [stage_width[0]]
        for b in layout.blocks:
            w = stage_width[b.stage]
            base += [w, w] if b.kind == 'basic' else [w, w, w * 4]
        return base
    return widths


def _timm_names(layout: NetworkLayout, layer: Layer) -> Tuple[str, str]:
    if layer.name == 'stem':
        return 'conv1', 'bn1'
    stage, index = layout.stage_index(layer.block)
    prefix, conv = f'layer{stage + 1}.{index}', layer.name.split('.')[-1]
    if conv == 'shortcut':
        return f'{prefix}.downsample.0', f'{prefix}.downsample.1'
    return f'{prefix}.{conv}', f'{prefix}.bn{conv[-1]}'


def _zoo_stem_kernel(kernel: int):
    return lambda state: 'blocks.0.conv1.conv.weight' in state and state['stem.conv.weight'].shape[-1] == kernel


register_family(Family(
    name='resnet_cifar', build=cifar_layout, uniform=_uniform((16, 32, 64)), label=lambda d: f'CIFAR ResNet-{d}',
    architecture='aps_resnet_cifar', train_recipe=lambda d: f'recipes/train_resnet{d}_cifar10.yaml',
    is_zoo_state=_zoo_stem_kernel(3), default_depth=20,
    preprocessing=Preprocessing(img_size=32, crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)))

register_family(Family(
    name='resnet', build=imagenet_layout, uniform=_uniform((64, 128, 256, 512)), label=lambda d: f'ResNet-{d}',
    architecture='aps_resnet', train_recipe=lambda d: f'recipes/train_resnet{d}_imagenet.yaml',
    is_zoo_state=_zoo_stem_kernel(7), default_depth=50, timm_model=lambda d: f'resnet{d}',
    timm_naming=TimmNaming('timm ResNet', 'layer1.0.conv1.weight', _timm_names, 'fc', 'layer', 2, True),
    peers={50: (('Uniform ResNet-50 0.75x', 2.3e9, '74.8'), ('MetaPruning', 2.0e9, '75.4'),
                ('AutoSlim', 2.0e9, '75.6'), ('EagleEye', 2.06e9, '76.4'), ('DMCP', 2.2e9, '76.5')),
           18: (('DMCP', 1.04e9, '69.0'),)}))
