"""ChannelConfig: the per-layer output widths of a network, plus the block layout of each family.

A config lists the output width of every searchable conv in forward order
(docs/design.md#published-channel-configs):

* ``resnet_cifar`` (depth 6n+2): stem, then (mid, out) per basic block; 3 stages.
* ``resnet`` (depth 18/34: basic, 50/101/152: bottleneck): ImageNet stem, then
  (mid, out) or (mid, mid, out) per block; 4 stages.
* ``mobilenetv2``: stem; block 1 (dw, out); 16 blocks (expand, dw, out) with
  expand == dw; the last 1x1 conv.

The layout (which entry feeds which conv, strides, residuals) lives here so that the
analytic counter, the supernet and the timm model classes all read the same structure.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._io import atomic_write_text

FAMILIES = ('resnet_cifar', 'resnet', 'mobilenetv2')
RESNET_LAYERS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
# MobileNetV2 stages (expansion t, repeats n, stride s), as in the paper and timm's mobilenetv2_100.
MOBILENETV2_STAGES = ((1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1))
MAX_WIDTH = 8192       # 4x the widest layer of a ResNet-50; one 3x3 conv at this width is 2.4 GB of fp32
MAX_CLASSES = 100_000  # ImageNet-21k has 21,843
CONFIG_FORMAT_VERSION = 1


class ChannelConfigError(ValueError):
    """A channel config that does not describe a valid network of its family."""


@dataclass(frozen=True)
class ConvSpec:
    """One conv (+ BN) of a network: its module name, the width entries it reads and writes, its kernel,
    stride and grouping, and whether an activation follows its BN.

    ``name`` is relative to its block (``conv1``, ``conv_dw``, ...) or absolute for the stem and head
    (``stem.conv``, ``head.conv``). ``in_entry`` None reads the input image.
    """
    name: str
    in_entry: Optional[int]
    out_entry: int
    kernel: int
    stride: int = 1
    depthwise: bool = False  # groups = its input width (a depthwise conv keeps that width)
    act: bool = True

    @property
    def entries(self) -> Tuple[Optional[int], int]:
        """(input entry, output entry)."""
        return self.in_entry, self.out_entry

    def groups(self, c_in: int) -> int:
        """The conv's ``groups`` at input width ``c_in``."""
        return c_in if self.depthwise else 1


@dataclass(frozen=True)
class StemSpec:
    """The stem: its conv and, for the ImageNet ResNet stem, a max-pool ``(kernel, stride)`` after it."""
    kind: str  # 'cifar' (3x3 s1) | 'imagenet' (7x7 s2 + 3x3 s2 max-pool) | 'mobilenet' (3x3 s2)
    conv: ConvSpec
    pool: Optional[Tuple[int, int]] = None

    @property
    def reduction(self) -> int:
        """Downsampling of the whole stem."""
        return self.conv.stride * (self.pool[1] if self.pool else 1)


STEMS = {'cifar': StemSpec('cifar', ConvSpec('stem.conv', None, 0, 3, 1)),
         'imagenet': StemSpec('imagenet', ConvSpec('stem.conv', None, 0, 7, 2), pool=(3, 2)),
         'mobilenet': StemSpec('mobilenet', ConvSpec('stem.conv', None, 0, 3, 2))}


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: which width entries it reads and writes, and its convs in forward order.

    ``entries`` are indices into ``ChannelConfig.widths`` in forward order; the last is the
    block output. ``in_entry`` is the entry that feeds the block.
    """
    kind: str  # 'basic' | 'bottleneck' | 'inverted_residual'
    stage: int
    stride: int
    in_entry: int
    entries: Tuple[int, ...]
    residual: bool
    convs: Tuple[ConvSpec, ...] = ()

    @property
    def out_entry(self) -> int:
        """The entry the block writes (its output width)."""
        return self.entries[-1]


@dataclass(frozen=True)
class NetworkLayout:
    """Stem, blocks and head of a family at a given depth: the one description of its structure."""
    family: str
    depth: int
    stem: StemSpec
    blocks: Tuple[BlockSpec, ...]
    head: Optional[ConvSpec]  # a final 1x1 conv before pooling (MobileNetV2), else None
    num_entries: int

    @property
    def head_entry(self) -> Optional[int]:
        """Entry of the head conv, or None."""
        return None if self.head is None else self.head.out_entry

    @property
    def feature_entry(self) -> int:
        """Entry whose width feeds the classifier."""
        return self.num_entries - 1

    def named_convs(self) -> List[Tuple[str, int, ConvSpec]]:
        """(module name, stage or -1 outside the blocks, spec) of every conv in forward order; conv ``i``
        writes width entry ``i``."""
        rows = [(self.stem.conv.name, -1, self.stem.conv)]
        rows += [(f'blocks.{i}.{c.name}', b.stage, c) for i, b in enumerate(self.blocks) for c in b.convs]
        if self.head is not None:
            rows.append((self.head.name, -1, self.head))
        return rows


def _block_convs(kind: str, in_entry: int, entries: Tuple[int, ...], stride: int) -> Tuple[ConvSpec, ...]:
    """The convs of a block: basic (3x3 s, 3x3), bottleneck (1x1, 3x3 s, 1x1), inverted residual
    ((1x1 expand,) 3x3 depthwise s, 1x1 linear); the last conv has no activation (it joins the residual)."""
    e = entries
    if kind == 'basic':
        return (ConvSpec('conv1', in_entry, e[0], 3, stride), ConvSpec('conv2', e[0], e[1], 3, act=False))
    if kind == 'bottleneck':
        return (ConvSpec('conv1', in_entry, e[0], 1), ConvSpec('conv2', e[0], e[1], 3, stride),
                ConvSpec('conv3', e[1], e[2], 1, act=False))
    expand = (ConvSpec('conv_pw', in_entry, e[0], 1),) if len(e) == 3 else ()
    dw_in = e[0] if expand else in_entry
    return expand + (ConvSpec('conv_dw', dw_in, e[-2], 3, stride, depthwise=True),
                     ConvSpec('conv_pwl', e[-2], e[-1], 1, act=False))


def _block(kind: str, stage: int, stride: int, in_entry: int, entries: Tuple[int, ...], residual: bool) -> BlockSpec:
    return BlockSpec(kind, stage, stride, in_entry, entries, residual, _block_convs(kind, in_entry, entries, stride))


def _resnet_block_specs(kind: str, layers: Sequence[int]) -> Tuple[List[BlockSpec], int]:
    convs = 2 if kind == 'basic' else 3
    blocks, entry, prev = [], 1, 0
    for stage, n in enumerate(layers):
        for i in range(n):
            stride = 2 if i == 0 and stage > 0 else 1
            entries = tuple(range(entry, entry + convs))
            blocks.append(_block(kind, stage, stride, prev, entries, residual=True))
            entry += convs
            prev = entries[-1]
    return blocks, entry


def _mobilenetv2_block_specs() -> Tuple[List[BlockSpec], int]:
    blocks, entry, prev = [], 1, 0
    for stage, (t, n, s) in enumerate(MOBILENETV2_STAGES):
        for i in range(n):
            convs = 2 if t == 1 else 3
            stride = s if i == 0 else 1
            entries = tuple(range(entry, entry + convs))
            blocks.append(_block('inverted_residual', stage, stride, prev, entries, residual=(stride == 1 and i > 0)))
            entry += convs
            prev = entries[-1]
    return blocks, entry


def cifar_depth_blocks(depth: int) -> int:
    """Blocks per stage of a CIFAR ResNet of ``depth`` = 6n+2."""
    if depth < 8 or (depth - 2) % 6:
        raise ChannelConfigError(f"resnet_cifar depth must be 6n+2 with n >= 1 (8, 14, 20, 56, ...), got {depth}")
    return (depth - 2) // 6


@lru_cache(maxsize=None)
def network_layout(family: str, depth: int = 0) -> NetworkLayout:
    """The layout of ``family`` at ``depth`` (depth is ignored for mobilenetv2); built once per family and
    depth (layouts are immutable)."""
    if family == 'resnet_cifar':
        n = cifar_depth_blocks(depth)
        blocks, num = _resnet_block_specs('basic', (n, n, n))
        return NetworkLayout(family, depth, STEMS['cifar'], tuple(blocks), None, num)
    if family == 'resnet':
        if depth not in RESNET_LAYERS:
            raise ChannelConfigError(f"resnet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        kind, layers = RESNET_LAYERS[depth]
        blocks, num = _resnet_block_specs(kind, layers)
        return NetworkLayout(family, depth, STEMS['imagenet'], tuple(blocks), None, num)
    if family == 'mobilenetv2':
        blocks, num = _mobilenetv2_block_specs()
        return NetworkLayout(family, 0, STEMS['mobilenet'], tuple(blocks), ConvSpec('head.conv', num - 1, num, 1),
                             num + 1)
    raise ChannelConfigError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")


def tied_entries(layout: NetworkLayout) -> List[Tuple[int, int]]:
    """Pairs of entries that must hold the same width (depthwise convs keep their input width)."""
    pairs = []
    for b in layout.blocks:
        if b.kind == 'inverted_residual':
            dw = b.entries[-2]
            pairs.append((b.in_entry if len(b.entries) == 2 else b.entries[0], dw))
    return pairs


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
    """Widths of the standard network of a family (ResNet: 16/32/64 CIFAR or 64..512 with x4 bottleneck
    expansion; MobileNetV2: timm's mobilenetv2_100), scaled by ``multiplier``."""
    layout = network_layout(family, depth)
    if family == 'mobilenetv2':
        base = [32, 32, 16]
        chans = (16, 24, 32, 64, 96, 160, 320)
        for b in layout.blocks[1:]:
            cin = base[b.in_entry]
            base += [cin * 6, cin * 6, chans[b.stage]]
        base.append(1280)
    else:
        stage_width = (16, 32, 64) if family == 'resnet_cifar' else (64, 128, 256, 512)
        base = [stage_width[0]]
        for b in layout.blocks:
            w = stage_width[b.stage]
            base += [w, w] if b.kind == 'basic' else [w, w, w * 4]
    widths = [max(1, int(math.floor(w * multiplier + 0.5))) for w in base]
    for a, b in tied_entries(layout):
        widths[b] = widths[a]
    return widths


def shortcut_kind(block: BlockSpec, in_width: int, out_width: int) -> Optional[str]:
    """The shortcut rule shared by supernet and models (docs/design.md#shortcuts).

    ``None``: no residual; ``'identity'``; ``'conv_bn'``: 1x1 conv + BN where widths differ at
    stride 1; ``'pool_conv'``: 2x2 avg-pool + 1x1 conv (no BN) at stride 2.
    """
    if not block.residual:
        return None
    if block.stride != 1:
        return 'pool_conv'
    return 'identity' if in_width == out_width else 'conv_bn'


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output size of a conv or pool with 'same'-style padding kernel // 2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1
