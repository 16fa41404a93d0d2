"""ChannelConfig: the per-layer output widths of one network of a family, validated against its layout.

A config lists the output width of every searchable conv in forward order
(docs/design.md#published-channel-configs); which entry feeds which conv, strides and residuals are the
family's layout (``aps_zoo.layout``), built by its entry in the family registry (``aps_zoo.families``), so
the analytic counter, the supernet and the timm model classes all read the same structure.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ._io import atomic_write_text
from .families import family_names, get_family
from .layout import (BlockSpec, ChannelConfigError, ConvSpec, Layer, NetworkLayout, StemSpec,  # noqa: F401
                     conv_out_size, shortcut_kind)

MAX_WIDTH = 8192       # 4x the widest layer of a ResNet-50; one 3x3 conv at this width is 2.4 GB of fp32
MAX_CLASSES = 100_000  # ImageNet-21k has 21,843
CONFIG_FORMAT_VERSION = 1
FAMILIES = family_names()


@lru_cache(maxsize=None)
def network_layout(family: str, depth: int = 0) -> NetworkLayout:
    """The layout of ``family`` at ``depth`` (0 for a family with one depth), from the family registry; built
    once per family and depth (layouts are immutable)."""
    return get_family(family).build(depth)


def tied_entries(layout: NetworkLayout) -> List[Tuple[int, int]]:
    """Pairs of entries that must hold the same width (depthwise convs keep their input width)."""
    return layout.tied_entries()


@dataclass
class ChannelConfig:
    """Per-layer output widths of one network of a family, with what it is for and where it came from."""
    family: str
    widths: Tuple[int, ...]
    depth: int = 0
    num_classes: int = 1000
    input_size: Tuple[int, int, int] = (3, 224, 224)
    provenance: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.widths = tuple(self.widths)
        self.input_size = tuple(self.input_size)
        self.validate()

    @property
    def layout(self) -> NetworkLayout:
        """The family's layout at this depth (cached)."""
        return network_layout(self.family, self.depth)

    @property
    def in_chans(self) -> int:
        """Input image channels."""
        return self.input_size[0]

    def validate(self) -> None:
        """Raise ChannelConfigError naming the first problem found (caps checked before anything is sized)."""
        if isinstance(self.depth, bool) or not isinstance(self.depth, int):
            raise ChannelConfigError(f"depth must be an integer, got {self.depth!r}")
        if not isinstance(self.provenance, dict):
            raise ChannelConfigError(f"provenance must be a mapping (JSON object), got {self.provenance!r}")
        layout = network_layout(self.family, self.depth)
        if len(self.widths) != layout.num_entries:
            raise ChannelConfigError(
                f"{self.family}{self.depth or ''} needs {layout.num_entries} widths, got {len(self.widths)}")
        for i, w in enumerate(self.widths):
            if isinstance(w, bool) or not isinstance(w, int):
                raise ChannelConfigError(f"width {i} must be an integer, got {w!r}")
            if w <= 0:
                raise ChannelConfigError(f"width {i} must be positive, got {w}")
            if w > MAX_WIDTH:
                raise ChannelConfigError(f"width {i} = {w} exceeds the maximum width {MAX_WIDTH}")
        for a, b in tied_entries(layout):
            if self.widths[a] != self.widths[b]:
                raise ChannelConfigError(
                    f"depthwise conv at entry {b} must keep its input width {self.widths[a]} (entry {a}), "
                    f"got {self.widths[b]}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ChannelConfigError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")
        if self.num_classes > MAX_CLASSES:
            raise ChannelConfigError(f"num_classes = {self.num_classes} exceeds the maximum {MAX_CLASSES}")
        if len(self.input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in self.input_size):
            raise ChannelConfigError(f"input_size must be (channels, height, width), got {self.input_size!r}")

    @property
    def name(self) -> str:
        """Family and depth, e.g. ``resnet_cifar20``."""
        return f"{self.family}{self.depth or ''}"

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (with ``format_version``)."""
        d = asdict(self)
        d['widths'] = list(self.widths)
        d['input_size'] = list(self.input_size)
        d['format_version'] = CONFIG_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'ChannelConfig':
        """A validated config from its JSON form; errors name the bad key."""
        if not isinstance(d, dict):
            raise ChannelConfigError(f"a channel config must be a JSON object, got {type(d).__name__}")
        known = {'family', 'widths', 'depth', 'num_classes', 'input_size', 'provenance', 'format_version'}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ChannelConfigError(f"unknown channel config key(s) {unknown}; allowed: {sorted(known)}")
        for key in ('family', 'widths'):
            if key not in d:
                raise ChannelConfigError(f"channel config is missing {key!r}")
        if not isinstance(d['widths'], (list, tuple)):
            raise ChannelConfigError(f"widths must be a list of integers, got {type(d['widths']).__name__}")
        kwargs = {k: v for k, v in d.items() if k != 'format_version'}
        return cls(**kwargs)

    def to_json(self) -> str:
        """The JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path) -> Path:
        """Write the config as JSON atomically (temp file + rename)."""
        return atomic_write_text(path, self.to_json() + '\n')

    @classmethod
    def load(cls, path) -> 'ChannelConfig':
        """Read a config JSON file; errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ChannelConfigError(f"channel config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ChannelConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ChannelConfigError as e:
            raise ChannelConfigError(f"{path}: {e}") from None


def uniform_widths(family: str, depth: int = 0, multiplier: float = 1.0) -> List[int]:
    """Widths of the standard network of a family (its registry entry's: timm's own where it has a timm
    counterpart), scaled by ``multiplier``."""
    layout = network_layout(family, depth)
    widths = [max(1, int(math.floor(w * multiplier + 0.5))) for w in get_family(family).uniform(layout)]
    for a, b in tied_entries(layout):
        widths[b] = widths[a]
    return widths
