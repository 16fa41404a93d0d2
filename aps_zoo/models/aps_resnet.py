"""ResNets with searched per-layer widths (APS, NeurIPS 2020), as timm models.

Two families share this file: ``resnet_cifar`` (3x3 stride-1 stem, 3 stages of basic blocks, depth 6n+2)
and ``resnet`` (7x7 stride-2 stem + max-pool, 4 stages, basic blocks for depth 18/34, bottlenecks for 50+).
Every block has a residual: identity where its input and output widths match, else a 1x1 conv + BN, or at
stride 2 a 2x2 average pool + 1x1 conv (docs/design.md#shortcuts). ``aps_resnet_cifar`` and ``aps_resnet``
build any widths (``widths=``, ``depth=``); the other names are fixed networks from ``configs/<name>.json``.
"""
from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model

from ..channels import BlockSpec, ChannelConfigError, network_layout, shortcut_kind
from ._base import (ApsFamilyNet, block_convs, create_aps_model, generic_args, generic_cfg, make_shortcut, zoo_args,
                    zoo_cfg)

__all__ = ['ApsResNet', 'ResNetBlock']


class ResNetBlock(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) residual block; the 3x3 conv carries the stride."""

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
        convs = block_convs(spec, in_chs, widths, **dd)
        self.conv1, self.conv2, self.conv3 = convs['conv1'], convs['conv2'], convs.get('conv3')
        self.shortcut = make_shortcut(shortcut_kind(spec, in_chs, widths[-1]), in_chs, widths[-1], **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Start the residual branch at zero (the block begins as its shortcut)."""
        last = self.conv2 if self.conv3 is None else self.conv3
        nn.init.zeros_(last.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus shortcut, then ReLU."""
        shortcut = self.shortcut(x)
        x = self.conv2(self.conv1(x))
        if self.conv3 is not None:
            x = self.conv3(x)
        return self.act(self.drop_path(x) + shortcut)


class ApsResNet(ApsFamilyNet):
    """ResNet whose every conv width comes from a ChannelConfig of family ``resnet`` or ``resnet_cifar``."""
    block_cls = ResNetBlock

    def __init__(self, widths: Sequence[int], depth: int = 50, family: str = 'resnet', zero_init_last: bool = True,
                 **kwargs):
        """
        Args:
            widths: output width of every conv in forward order (stem, then each block's convs).
            depth: 6n+2 for ``resnet_cifar``; 18, 34, 50, 101 or 152 for ``resnet``.
            family: ``resnet`` (ImageNet stem) or ``resnet_cifar`` (CIFAR stem).
            zero_init_last: zero the last BN of each residual branch.
            **kwargs: ``ApsFamilyNet``'s (classes, input channels and size, pooling, dropout, device, dtype).
        """
        if family not in ('resnet', 'resnet_cifar'):
            raise ChannelConfigError(f"ApsResNet builds family 'resnet' or 'resnet_cifar', got {family!r}")
        super().__init__(widths, depth=depth, family=family, **kwargs)
        if zero_init_last:
            for block in self.blocks:
                block.zero_init_last()


def _create_aps_resnet(variant: str, family: str, pretrained: bool = False, **kwargs) -> ApsResNet:
    layout = network_layout(family, kwargs['depth'])
    return create_aps_model(ApsResNet, variant, layout, pretrained, family=family, **kwargs)


default_cfgs = generate_default_cfgs({
    'aps_resnet_cifar': generic_cfg('resnet_cifar'),
    'aps_resnet': generic_cfg('resnet'),
    'aps_resnet20_cifar_20m': zoo_cfg('aps_resnet20_cifar_20m'),
    'aps_resnet56_cifar_60m': zoo_cfg('aps_resnet56_cifar_60m'),
    'aps_resnet20_fashion_mnist': zoo_cfg('aps_resnet20_fashion_mnist'),
    'aps_resnet18_1g8': zoo_cfg('aps_resnet18_1g8'),
    'aps_resnet18_1g': zoo_cfg('aps_resnet18_1g'),
    'aps_resnet50_2g': zoo_cfg('aps_resnet50_2g'),
})


@register_model
def aps_resnet_cifar(pretrained: bool = False, **kwargs) -> ApsResNet:
    """CIFAR ResNet of any depth 6n+2 and widths (default: the uniform ResNet-20)."""
    kwargs = generic_args('resnet_cifar', kwargs)
    return _create_aps_resnet('aps_resnet_cifar', 'resnet_cifar', pretrained, **kwargs)


@register_model
def aps_resnet(pretrained: bool = False, **kwargs) -> ApsResNet:
    """ImageNet ResNet of depth 18/34/50/101/152 with any widths (default: the uniform ResNet-50)."""
    kwargs = generic_args('resnet', kwargs)
    return _create_aps_resnet('aps_resnet', 'resnet', pretrained, **kwargs)


@register_model
def aps_resnet20_cifar_20m(pretrained: bool = False, **kwargs) -> ApsResNet:
    """CIFAR-10 ResNet-20 searched by APS under a 20M MACs budget (paper config)."""
    kwargs = zoo_args('aps_resnet20_cifar_20m', kwargs)
    return _create_aps_resnet('aps_resnet20_cifar_20m', 'resnet_cifar', pretrained, **kwargs)


@register_model
def aps_resnet56_cifar_60m(pretrained: bool = False, **kwargs) -> ApsResNet:
    """CIFAR-10 ResNet-56 searched by APS under a 60M MACs budget (paper config)."""
    kwargs = zoo_args('aps_resnet56_cifar_60m', kwargs)
    return _create_aps_resnet('aps_resnet56_cifar_60m', 'resnet_cifar', pretrained, **kwargs)


@register_model
def aps_resnet20_fashion_mnist(pretrained: bool = False, **kwargs) -> ApsResNet:
    """Fashion-MNIST ResNet-20 searched by aps-zoo with APS-T (8.8M MACs at 28x28); weights ship in the package."""
    kwargs = zoo_args('aps_resnet20_fashion_mnist', kwargs)
    return _create_aps_resnet('aps_resnet20_fashion_mnist', 'resnet_cifar', pretrained, **kwargs)


@register_model
def aps_resnet18_1g8(pretrained: bool = False, **kwargs) -> ApsResNet:
    """ImageNet ResNet-18 searched by APS at 1.8G MACs (paper config)."""
    kwargs = zoo_args('aps_resnet18_1g8', kwargs)
    return _create_aps_resnet('aps_resnet18_1g8', 'resnet', pretrained, **kwargs)


@register_model
def aps_resnet18_1g(pretrained: bool = False, **kwargs) -> ApsResNet:
    """ImageNet ResNet-18 searched by APS at 1.0G MACs (paper config)."""
    kwargs = zoo_args('aps_resnet18_1g', kwargs)
    return _create_aps_resnet('aps_resnet18_1g', 'resnet', pretrained, **kwargs)


@register_model
def aps_resnet50_2g(pretrained: bool = False, **kwargs) -> ApsResNet:
    """ImageNet ResNet-50 searched by aps-zoo with APS under a 2.0G MACs budget (on digits upsampled to 224)."""
    kwargs = zoo_args('aps_resnet50_2g', kwargs)
    return _create_aps_resnet('aps_resnet50_2g', 'resnet', pretrained, **kwargs)
