"""MobileNetV3-Large with searched per-layer widths (APS, NeurIPS 2020), as timm models.

The structure of timm's ``mobilenetv3_large_100`` (family ``mobilenetv3_large``, ``aps_zoo.families``):
inverted residuals with squeeze-excitation and hard-swish, a 1x1 conv, and timm's efficient head.
``aps_mobilenetv3_large_100`` is that network at timm's widths, and builds any other widths (``widths=``).
"""
from typing import Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..channels import BlockSpec, network_layout
from ._base import ApsFamilyNet, block_convs, create_aps_model, generic_args, generic_cfg
from .aps_mobilenetv2 import InvertedResidual

__all__ = ['ApsMobileNetV3', 'ConvBlock']

FAMILY = 'mobilenetv3_large'


class ConvBlock(nn.Module):
    """One conv + BN + activation (timm's ConvBnAct), the block before the head."""

    def __init__(self, spec: BlockSpec, in_chs: int, widths: Sequence[int], drop_path: float = 0., device=None,
                 dtype=None):
        super().__init__()
        self.conv = block_convs(spec, in_chs, widths, device=device, dtype=dtype)['conv']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The conv + BN + activation."""
        return self.conv(x)


def _block(spec: BlockSpec, in_chs: int, widths: Sequence[int], drop_path: float = 0., device=None,
           dtype=None) -> nn.Module:
    cls = ConvBlock if spec.kind == 'conv' else InvertedResidual
    return cls(spec, in_chs, widths, drop_path, device=device, dtype=dtype)


class ApsMobileNetV3(ApsFamilyNet):
    """MobileNetV3-Large whose every conv width comes from a ChannelConfig of family ``mobilenetv3_large``:
    ``widths`` are the 47 conv widths (stem; block 0 (dw, out); 14 x (expand, dw, out); 1x1 conv; head conv)."""
    family = FAMILY
    block_cls = staticmethod(_block)


default_cfgs = generate_default_cfgs({'aps_mobilenetv3_large_100': generic_cfg(FAMILY)})


@register_model
def aps_mobilenetv3_large_100(pretrained: bool = False, **kwargs) -> ApsMobileNetV3:
    """MobileNetV3-Large with any widths (default: timm's mobilenetv3_large_100)."""
    return create_aps_model(ApsMobileNetV3, 'aps_mobilenetv3_large_100', network_layout(FAMILY), pretrained,
                            **generic_args(FAMILY, kwargs))
