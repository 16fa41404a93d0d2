"""Analytic MACs and parameter counts of a ChannelConfig (conv + linear MACs, the timm/fvcore rule)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .channels import ChannelConfig, conv_out_size, network_layout, shortcut_kind, tied_entries, uniform_widths


@dataclass(frozen=True)
class LayerCost:
    """One conv or linear layer: shape, output resolution, MACs and parameters (BN included)."""
    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    groups: int
    out_hw: Tuple[int, int]
    batchnorm: bool

    @property
    def macs(self) -> int:
        return self.c_in // self.groups * self.c_out * self.kernel ** 2 * self.out_hw[0] * self.out_hw[1]

    @property
    def params(self) -> int:
        if self.kernel == 0:  # linear layer with bias
            return self.c_in * self.c_out + self.c_out
        return self.c_in // self.groups * self.c_out * self.kernel ** 2 + (2 * self.c_out if self.batchnorm else 0)


def layer_table(config: ChannelConfig) -> List[LayerCost]:
    """Every conv and the classifier of the network ``config`` describes, in forward order."""
    layout, w = config.layout, config.widths
    _, h, wd = config.input_size
    table: List[LayerCost] = []

    def conv(name, c_in, c_out, k, s, groups=1, bn=True):
        nonlocal h, wd
        h, wd = conv_out_size(h, k, s), conv_out_size(wd, k, s)
        table.append(LayerCost(name, c_in, c_out, k, s, groups, (h, wd), bn))

    if layout.stem == 'imagenet':
        conv('stem.conv', config.in_chans, w[0], 7, 2)
        h, wd = conv_out_size(h, 3, 2), conv_out_size(wd, 3, 2)  # max-pool
    else:
        conv('stem.conv', config.in_chans, w[0], 3, 1 if layout.stem == 'cifar' else 2)

    for i, b in enumerate(layout.blocks):
        c_in, e = w[b.in_entry], [w[j] for j in b.entries]
        name = f'blocks.{i}'
        if b.kind == 'basic':
            conv(f'{name}.conv1', c_in, e[0], 3, b.stride)
            conv(f'{name}.conv2', e[0], e[1], 3, 1)
        elif b.kind == 'bottleneck':
            conv(f'{name}.conv1', c_in, e[0], 1, 1)
            conv(f'{name}.conv2', e[0], e[1], 3, b.stride)
            conv(f'{name}.conv3', e[1], e[2], 1, 1)
        else:
            if len(e) == 3:
                conv(f'{name}.conv_pw', c_in, e[0], 1, 1)
            conv(f'{name}.conv_dw', e[-2], e[-2], 3, b.stride, groups=e[-2])
            conv(f'{name}.conv_pwl', e[-2], e[-1], 1, 1)
        kind = shortcut_kind(b, c_in, e[-1])
        if kind in ('conv_bn', 'pool_conv'):
            table.append(LayerCost(f'{name}.shortcut', c_in, e[-1], 1, 1, 1, (h, wd), kind == 'conv_bn'))

    if layout.head_entry is not None:
        conv('head.conv', w[layout.head_entry - 1], w[layout.head_entry], 1, 1)
    if config.num_classes:
        table.append(LayerCost('fc', w[layout.feature_entry], config.num_classes, 0, 1, 1, (1, 1), False))
    return table


def count_macs(config: ChannelConfig) -> int:
    """Multiply-accumulates of all convs and the classifier at ``config.input_size``."""
    return sum(layer.macs if layer.kernel else layer.c_in * layer.c_out for layer in layer_table(config))


def count_params(config: ChannelConfig) -> int:
    """Trainable parameters: conv weights, BN affine, classifier weight and bias."""
    return sum(layer.params for layer in layer_table(config))


def uniform_at_budget(family: str, depth: int, budget_macs: float, *, num_classes: int,
                      input_size: Tuple[int, int, int], divisor: int = 1) -> ChannelConfig:
    """The family's standard network with every width scaled by one multiplier, as wide as fits the budget."""
    def build(mult: float) -> ChannelConfig:
        widths = [max(divisor, int(w * mult / divisor + 0.5) * divisor) for w in uniform_widths(family, depth)]
        for a, b in tied_entries(network_layout(family, depth)):
            widths[b] = widths[a]
        return ChannelConfig(family, widths, depth, num_classes, tuple(input_size),
                             {'source': 'uniform', 'multiplier': round(mult, 4)})

    lo, hi = 1e-3, 8.0
    if count_macs(build(lo)) > budget_macs:
        raise ValueError(f"budget {budget_macs:.4g} MACs is below the narrowest uniform {family}{depth or ''}")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count_macs(build(mid)) <= budget_macs else (lo, mid)
    return build(lo)


def uniform_like(config: ChannelConfig) -> ChannelConfig:
    """The family's standard network, every width scaled by one multiplier (rounded to an integer), as wide
    as fits within the MACs of ``config``: the reference every widths plot and card compares against."""
    return uniform_at_budget(config.family, config.depth, count_macs(config), num_classes=config.num_classes,
                             input_size=config.input_size)
