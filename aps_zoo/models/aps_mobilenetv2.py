"""MobileNetV2 with searched per-layer widths (APS, NeurIPS 2020), as timm models.

The stages of timm's ``mobilenetv2_100`` (expansion, repeats, stride): (1,1,1) (6,2,2) (6,3,2) (6,4,2) (6,3,1)
(6,3,2) (6,1,1) after a 3x3 stride-2 stem, then a 1x1 head conv. Each inverted residual is an optional 1x1
expansion, a 3x3 depthwise conv and a linear 1x1 projection, with ReLU6 after the first two. A residual joins
stride-1 blocks that are not first in their stage: identity where the widths match, else a 1x1 conv + BN.
``aps_mobilenetv2`` builds any widths (``widths=``); the other names are fixed networks from
``configs/<name>.json``.
"""
from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import SqueezeExcite

from ..channels import BlockSpec, network_layout, shortcut_kind
from ..layout import se_width
from ._base import (ApsFamilyNet, block_convs, create_aps_model, generic_args, generic_cfg, make_shortcut, zoo_args,
                    zoo_cfg)

__all__ = ['ApsMobileNetV2', 'InvertedResidual']


class InvertedResidual(nn.Module):
    """(1x1 expand,) kxk depthwise, (squeeze-excitation,) 1x1 linear projection; widths are (expand, dw, out)
    or (dw, out). The squeeze-excitation is timm's (ReLU, hard-sigmoid gate), reduced to ``se_width`` of the
    depthwise width, as timm's MobileNetV3 computes it."""

    def __init__(
            self,
            spec: BlockSpec,
            in_chs: int,
            widths: Sequence[int],
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        out_chs = widths[-1]
        convs = block_convs(spec, in_chs, widths, **dd)
        self.conv_pw, self.conv_dw, self.conv_pwl = convs.get('conv_pw'), convs['conv_dw'], convs['conv_pwl']
        mid = widths[-2]
        self.se = SqueezeExcite(mid, rd_channels=se_width(mid), act_layer=nn.ReLU, gate_layer='hard_sigmoid', **dd) \
            if spec.se else nn.Identity()
        self.shortcut = make_shortcut(shortcut_kind(spec, in_chs, out_chs), in_chs, out_chs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. and self.shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expansion, depthwise and linear projection, plus the shortcut where the block has one."""
        shortcut = x
        if self.conv_pw is not None:
            x = self.conv_pw(x)
        x = self.conv_pwl(self.se(self.conv_dw(x)))
        if self.shortcut is not None:
            x = self.drop_path(x) + self.shortcut(shortcut)
        return x


class ApsMobileNetV2(ApsFamilyNet):
    """MobileNetV2 whose every conv width comes from a ChannelConfig of family ``mobilenetv2``: ``widths`` are
    the 52 conv widths (stem; block 1 (dw, out); 16 x (expand, dw, out); head conv)."""
    family = 'mobilenetv2'
    block_cls = InvertedResidual


def _create_aps_mobilenetv2(variant: str, pretrained: bool = False, **kwargs) -> ApsMobileNetV2:
    return create_aps_model(ApsMobileNetV2, variant, network_layout('mobilenetv2'), pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'aps_mobilenetv2': generic_cfg('mobilenetv2'),
    'aps_mobilenetv2_300m': zoo_cfg('aps_mobilenetv2_300m'),
    'aps_mobilenetv2_150m': zoo_cfg('aps_mobilenetv2_150m'),
})


@register_model
def aps_mobilenetv2(pretrained: bool = False, **kwargs) -> ApsMobileNetV2:
    """MobileNetV2 with any widths (default: timm's mobilenetv2_100)."""
    return _create_aps_mobilenetv2('aps_mobilenetv2', pretrained, **generic_args('mobilenetv2', kwargs))


@register_model
def aps_mobilenetv2_300m(pretrained: bool = False, **kwargs) -> ApsMobileNetV2:
    """ImageNet MobileNetV2 searched by APS at 300M MACs (paper config)."""
    return _create_aps_mobilenetv2('aps_mobilenetv2_300m', pretrained, **zoo_args('aps_mobilenetv2_300m', kwargs))


@register_model
def aps_mobilenetv2_150m(pretrained: bool = False, **kwargs) -> ApsMobileNetV2:
    """ImageNet MobileNetV2 searched by APS at 150M MACs (paper config)."""
    return _create_aps_mobilenetv2('aps_mobilenetv2_150m', pretrained, **zoo_args('aps_mobilenetv2_150m', kwargs))
