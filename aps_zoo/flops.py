"""Analytic MACs and parameter counts of a ChannelConfig (conv + linear MACs, the timm/fvcore rule)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .channels import (ChannelConfig, ConvSpec, conv_out_size, network_layout, shortcut_kind, tied_entries,
                       uniform_widths)


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
        """Multiply-accumulates at ``out_hw``."""
        return self.c_in // self.groups * self.c_out * self.kernel ** 2 * self.out_hw[0] * self.out_hw[1]

    @property
    def params(self) -> int:
        """Weights, plus BN affine where present, plus bias for the classifier."""
        if self.kernel == 0:  # linear layer with bias
            return self.c_in * self.c_out + self.c_out
        return self.c_in // self.groups * self.c_out * self.kernel ** 2 + (2 * self.c_out if self.batchnorm else 0)


def layer_table(config: ChannelConfig) -> List[LayerCost]:
    """Every conv and the classifier of the network ``config`` describes, in forward order (read from its
    layout, with the module names of the timm models)."""
    layout, w = config.layout, config.widths
    _, h, wd = config.input_size
    table: List[LayerCost] = []

    def conv(name: str, spec: ConvSpec) -> None:
        nonlocal h, wd
        c_in = config.in_chans if spec.in_entry is None else w[spec.in_entry]
        h, wd = conv_out_size(h, spec.kernel, spec.stride), conv_out_size(wd, spec.kernel, spec.stride)
        table.append(LayerCost(name, c_in, w[spec.out_entry], spec.kernel, spec.stride, spec.groups(c_in), (h, wd),
                               True))

    conv(layout.stem.conv.name, layout.stem.conv)
    if layout.stem.pool:
        h, wd = (conv_out_size(v, *layout.stem.pool) for v in (h, wd))
    for i, b in enumerate(layout.blocks):
        for spec in b.convs:
            conv(f'blocks.{i}.{spec.name}', spec)
        c_in, c_out = w[b.in_entry], w[b.out_entry]
        kind = shortcut_kind(b, c_in, c_out)
        if kind in ('conv_bn', 'pool_conv'):
            table.append(LayerCost(f'blocks.{i}.shortcut', c_in, c_out, 1, 1, 1, (h, wd), kind == 'conv_bn'))
    if layout.head is not None:
        conv(layout.head.name, layout.head)
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
