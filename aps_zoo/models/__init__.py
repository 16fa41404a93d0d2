"""timm model classes built from a ChannelConfig; importing this registers the aps_* models."""
import dataclasses
import importlib
import pkgutil

import timm
import torch.nn as nn

from ..channels import ChannelConfig, ChannelConfigError
from ..families import get_family
from ._base import (CONFIG_DIR, ApsNet, PretrainedWeightsNotFoundError, architecture_for, pool_size, train_recipe,
                    zoo_config)
from .aps_mobilenetv2 import ApsMobileNetV2
from .aps_resnet import ApsResNet

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith('aps_')):
    importlib.import_module(f'{__name__}.{_module}')  # every family's model module registers its models

__all__ = [
    'ApsMobileNetV2', 'ApsNet', 'ApsResNet', 'PretrainedWeightsNotFoundError',
    'architecture_for', 'create_model_from_config', 'train_recipe', 'zoo_config', 'zoo_names',
]


def create_model_from_config(config: ChannelConfig, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build the network ``config`` describes as the generic timm model of its family.

    Widths, depth, classes and input size are passed as ``timm.create_model`` kwargs, so ``save_for_hf``
    records them in ``config.json`` and ``local-dir:``/``hf-hub:`` rebuild the same network. Other kwargs go to
    ``timm.create_model`` (``pretrained_cfg_overlay=dict(file=...)`` loads a checkpoint trained on ``config``).
    """
    fixed = sorted({'widths', 'depth', 'family'} & set(kwargs))
    if fixed:
        raise ChannelConfigError(f"{', '.join(fixed)} come(s) from the channel config; do not pass them as kwargs")
    args = dict(widths=list(config.widths), num_classes=config.num_classes, in_chans=config.in_chans,
                img_size=config.input_size[1:])
    if get_family(config.family).has_depth:
        args['depth'] = config.depth
    # the source checkpoint (if any) was trained on ``config``: its classes and input size
    overlay = dict(input_size=config.input_size, num_classes=config.num_classes, pool_size=pool_size(config))
    overlay.update(kwargs.pop('pretrained_cfg_overlay', None) or {})
    model = timm.create_model(
        architecture_for(config), pretrained=pretrained, pretrained_cfg_overlay=overlay, **{**args, **kwargs})
    if isinstance(model, ApsNet):
        model.channel_config = dataclasses.replace(model.channel_config, provenance=dict(config.provenance))
    return model


def zoo_names() -> list:
    """Registered zoo models (those with a ``configs/<name>.json``), sorted."""
    return sorted(name for name in timm.list_models('aps_*') if (CONFIG_DIR / f'{name}.json').exists())
