"""Analytic MACs and parameter counts of a ChannelConfig (conv + linear MACs, the timm/fvcore rule)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from .channels import (MAX_WIDTH, ChannelConfig, conv_out_size, network_layout, shortcut_kind, tied_entries,
                       uniform_widths)
from .layout import Layer


@dataclass(frozen=True)
class LayerCost:
    """One conv, squeeze-excitation conv or classifier (a 1x1 conv at 1x1): shape, output resolution, MACs and
    parameters (BN or bias included), and the layout layer it is."""
    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    groups: int
    out_hw: Tuple[int, int]
    batchnorm: bool
    bias: bool = False
    layer: Optional[Layer] = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates at ``out_hw``."""
        return self.c_in // self.groups * self.c_out * self.kernel ** 2 * self.out_hw[0] * self.out_hw[1]

    @property
    def params(self) -> int:
        """Weights, plus BN affine or bias where present."""
        extra = 2 * self.c_out if self.batchnorm else self.c_out if self.bias else 0
        return self.c_in // self.groups * self.c_out * self.kernel ** 2 + extra


def layer_table(config: ChannelConfig) -> List[LayerCost]:
    """Every conv, shortcut conv, squeeze-excitation conv and the classifier of the network ``config``
    describes, in forward order (``NetworkLayout.layers``, named as in the timm models: the conv's module)."""
    layout, w = config.layout, config.widths
    _, h, wd = config.input_size
    table: List[LayerCost] = []
    for layer in layout.layers():
        spec = layer.spec
        if layer.role == 'classifier' and not config.num_classes:
            continue
        c_in, c_out = layer.channels(config.in_chans if spec.in_entry is None else w[spec.in_entry],
                                     config.num_classes if layer.role == 'classifier' else w[spec.out_entry])
        norm = spec.norm
        if layer.role == 'shortcut':
            kind = shortcut_kind(layout.blocks[layer.block], c_in, c_out)
            if kind not in ('conv_bn', 'pool_conv'):
                continue
            norm = kind == 'conv_bn'
        if spec.pooled:
            out_hw = (1, 1)
        else:
            h, wd = conv_out_size(h, spec.kernel, spec.stride), conv_out_size(wd, spec.kernel, spec.stride)
            out_hw = (h, wd)
        table.append(LayerCost(layer.conv_key, c_in, c_out, spec.kernel, spec.stride, spec.groups(c_in), out_hw,
                               norm, not spec.norm, layer))
        if layer.name == 'stem' and layout.stem.pool:
            h, wd = (conv_out_size(v, *layout.stem.pool) for v in (h, wd))
    return table


def count_macs(config: ChannelConfig) -> int:
    """Multiply-accumulates of all convs and the classifier at ``config.input_size``."""
    return sum(layer.macs for layer in layer_table(config))


def count_params(config: ChannelConfig) -> int:
    """Trainable parameters: conv weights, BN affine, biases, classifier weight and bias."""
    return sum(layer.params for layer in layer_table(config))


def feature_size(config: ChannelConfig) -> Tuple[int, int]:
    """Spatial size of the unpooled features (before global pooling) at ``config.input_size``."""
    return [c for c in layer_table(config) if c.layer.role == 'conv' and not c.layer.spec.pooled][-1].out_hw


def uniform_at_budget(family: str, depth: int, budget_macs: float, *, num_classes: int,
                      input_size: Tuple[int, int, int], divisor: int = 1) -> ChannelConfig:
    """The family's standard network with every width scaled by one multiplier, as wide as fits the budget."""
    def build(mult: float) -> ChannelConfig:
        widths = [max(divisor, int(w * mult / divisor + 0.5) * divisor) for w in uniform_widths(family, depth)]
        for a, b in tied_entries(network_layout(family, depth)):
            widths[b] = widths[a]
        return ChannelConfig(family, widths, depth, num_classes, tuple(input_size),
                             {'source': 'uniform', 'multiplier': round(mult, 4)})

    lo, hi = 1e-3, min(8.0, MAX_WIDTH / max(uniform_widths(family, depth)))  # no width above MAX_WIDTH
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
