"""The family registry: one :class:`Family` entry per network family holds everything the code looks up by
family name (layout and standard widths, activation, timm counterpart and its layer naming, preprocessing,
label, train recipe, published peers). ``get_family(name)`` is the one lookup.

A family is added by a module in this package that calls :func:`register_family`; every module here is
imported with the package.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..layout import ChannelConfigError, Layer, NetworkLayout

Tensors = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class TimmNaming:
    """How timm's checkpoints of a family name its layers: a tensor that identifies them, the (conv, BN)
    prefixes of a layer, the classifier, how block tensors start and how many dot-separated parts name a
    block, and whether the stage-start shortcut is a strided 1x1 conv + BN (timm's plain ResNet)."""
    label: str
    marker: str
    names: Callable[[NetworkLayout, Layer], Tuple[str, str]]
    classifier: str
    block_prefix: str
    block_parts: int
    strided_downsample: bool = False


@dataclass(frozen=True)
class Preprocessing:
    """The default input of a family's models (timm ``pretrained_cfg`` fields)."""
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = 'bilinear'
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_classes: int = 1000


@dataclass(frozen=True)
class Family:
    """One network family.

    ``build(depth)`` gives its NetworkLayout (raising ChannelConfigError for a depth it lacks; depth 0 for a
    family with one depth), which carries the activation of every conv and the squeeze-excitation of every
    block, and ``uniform(layout)`` the standard widths. ``timm_model(depth)``: timm's counterpart (None:
    none) and ``timm_naming`` its checkpoint names; ``is_zoo_state`` recognises an aps-zoo checkpoint of the
    family.
    ``architecture``: the registered timm model that builds any widths; ``train_recipe(depth)``: the recipe
    that trains its zoo models (None: it has none); ``peers``: published ImageNet results of other methods
    by depth (for model cards).
    """
    name: str
    build: Callable[[int], NetworkLayout]
    uniform: Callable[[NetworkLayout], List[int]]
    label: Callable[[int], str]
    architecture: str
    is_zoo_state: Callable[[Tensors], bool]
    train_recipe: Optional[Callable[[int], str]] = None
    default_depth: int = 0
    timm_model: Callable[[int], Optional[str]] = lambda depth: None
    timm_naming: Optional[TimmNaming] = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    peers: Dict[int, Tuple[Tuple[str, float, str], ...]] = field(default_factory=dict)

    @property
    def has_depth(self) -> bool:
        """Whether the family comes in several depths (its models take a ``depth`` argument)."""
        return self.default_depth != 0


FAMILIES: Dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (a name registers once)."""
    if family.name in FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The registry entry of ``name``; a ChannelConfigError naming the allowed families otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ChannelConfigError(f"unknown family {name!r}; allowed: {', '.join(FAMILIES)}") from None


def family_names() -> Tuple[str, ...]:
    """Registered family names, in registration order."""
    return tuple(FAMILIES)


def interpolation(name: str) -> str:
    """The resize interpolation of family ``name``'s preprocessing (what its pretrained_cfg says)."""
    return get_family(name).preprocessing.interpolation


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f'{__name__}.{_module}')
