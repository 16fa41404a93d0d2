"""The structure of a network family, independent of widths: stem, blocks, convs and head, and the one
enumeration of its layers (:meth:`NetworkLayout.layers`) that the analytic counter, the supernet, the parent
loader and the timm models all walk.

A layout refers to widths by *entry*: ``ChannelConfig.widths[e]`` is the output width of the conv that writes
entry ``e``. The family registry (``aps_zoo.families``) builds a layout per family and depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from timm.layers import make_divisible

SE_RATIO = 0.25  # squeeze-excitation reduction of the expanded width, as timm's MobileNetV3


class ChannelConfigError(ValueError):
    """A channel config that does not describe a valid network of its family."""


def se_width(width: int, ratio: float = SE_RATIO) -> int:
    """Reduced width of a squeeze-excitation over ``width`` channels: timm's ``make_divisible(width * ratio, 8)``."""
    return make_divisible(width * ratio, 8)


@dataclass(frozen=True)
class ConvSpec:
    """One conv of a network: its name, the width entries it reads and writes, kernel, stride, grouping, the
    activation after it (a timm activation name; None: linear), and whether a BN follows it (else the conv has
    a bias). ``pooled``: it runs on the globally pooled 1x1 features (an efficient head).

    ``name`` is relative to its block (``conv1``, ``conv_dw``, ...) or absolute for the stem and head
    (``stem.conv``, ``head.conv``). ``in_entry`` None reads the input image.
    """
    name: str
    in_entry: Optional[int]
    out_entry: int
    kernel: int
    stride: int = 1
    depthwise: bool = False  # groups = its input width (a depthwise conv keeps that width)
    act: Optional[str] = 'relu'
    norm: bool = True
    pooled: bool = False

    def groups(self, c_in: int) -> int:
        """The conv's ``groups`` at input width ``c_in``."""
        return c_in if self.depthwise else 1


@dataclass(frozen=True)
class StemSpec:
    """The stem: its conv and, for the ImageNet ResNet stem, a max-pool ``(kernel, stride)`` after it."""
    conv: ConvSpec
    pool: Optional[Tuple[int, int]] = None

    @property
    def reduction(self) -> int:
        """Downsampling of the whole stem."""
        return self.conv.stride * (self.pool[1] if self.pool else 1)


@dataclass(frozen=True)
class BlockSpec:
    """One block: which width entries it reads and writes, its convs in forward order, its residual, and
    whether a squeeze-excitation (timm's, hard-sigmoid gate) follows its depthwise conv.

    ``entries`` are indices into ``ChannelConfig.widths`` in forward order; the last is the block output.
    ``in_entry`` is the entry that feeds the block. ``kind``: 'basic', 'bottleneck', 'inverted_residual'
    or 'conv' (one conv + BN + act, timm's ConvBnAct).
    """
    kind: str
    stage: int
    stride: int
    in_entry: int
    entries: Tuple[int, ...]
    residual: bool
    convs: Tuple[ConvSpec, ...] = ()
    se: bool = False

    @property
    def out_entry(self) -> int:
        """The entry the block writes (its output width)."""
        return self.entries[-1]


@dataclass(frozen=True)
class Layer:
    """One conv, shortcut, squeeze-excitation conv or classifier of a network, in forward order.

    ``name``: its owner in the timm model (``stem``, ``blocks.3.conv_pw``, ``blocks.3.shortcut``,
    ``blocks.3.se.conv_reduce``, ``head``, ``fc``); ``module``: its module in the APS supernet; ``role``:
    'conv', 'shortcut' (of block ``block``: present only where ``shortcut_kind`` says), 'se_reduce',
    'se_expand' (widths ``se_width`` of the entry) or 'classifier' (writes the logits: ``out_entry`` None).
    """
    name: str
    module: str
    spec: ConvSpec
    role: str = 'conv'
    stage: int = -1
    block: Optional[int] = None

    @property
    def in_entry(self) -> Optional[int]:
        """The entry it reads (None: the image)."""
        return self.spec.in_entry

    @property
    def out_entry(self) -> Optional[int]:
        """The entry it writes (None: the logits)."""
        return None if self.role == 'classifier' else self.spec.out_entry

    @property
    def conv_key(self) -> str:
        """Prefix of its weight (and bias) in a timm model's state dict."""
        return self.name if self.role in ('se_reduce', 'se_expand', 'classifier') else f'{self.name}.conv'

    def channels(self, in_width: int, out_width: int) -> Tuple[int, int]:
        """(c_in, c_out) given the width of its input entry (or the image channels) and of its output entry
        (or the classes)."""
        if self.role == 'se_reduce':
            return in_width, se_width(out_width)
        if self.role == 'se_expand':
            return se_width(in_width), out_width
        return in_width, out_width


def _block_layers(i: int, b: BlockSpec) -> List[Layer]:
    rows = []
    for j, c in enumerate(b.convs):
        rows.append(Layer(f'blocks.{i}.{c.name}', f'blocks.{i}.convs.{j}', c, 'conv', b.stage, i))
        if b.se and c.depthwise:
            e = c.out_entry
            rows += [Layer(f'blocks.{i}.se.conv_reduce', f'blocks.{i}.se.reduce',
                           ConvSpec('se.conv_reduce', e, e, 1, act='relu', norm=False, pooled=True),
                           'se_reduce', b.stage, i),
                     Layer(f'blocks.{i}.se.conv_expand', f'blocks.{i}.se.expand',
                           ConvSpec('se.conv_expand', e, e, 1, act='hard_sigmoid', norm=False, pooled=True),
                           'se_expand', b.stage, i)]
    if b.residual:
        rows.append(Layer(f'blocks.{i}.shortcut', f'blocks.{i}.shortcut',
                          ConvSpec('shortcut', b.in_entry, b.out_entry, 1, act=None), 'shortcut', b.stage, i))
    return rows


@dataclass(frozen=True)
class NetworkLayout:
    """Stem, blocks and head of a family at a given depth: the one description of its structure."""
    family: str
    depth: int
    stem: StemSpec
    blocks: Tuple[BlockSpec, ...]
    head: Optional[ConvSpec]  # a final 1x1 conv (MobileNetV2; pooled first in MobileNetV3), else None
    num_entries: int

    @property
    def head_entry(self) -> Optional[int]:
        """Entry of the head conv, or None."""
        return None if self.head is None else self.head.out_entry

    @property
    def feature_entry(self) -> int:
        """Entry whose width feeds the classifier."""
        return self.num_entries - 1

    def stage_index(self, block: int) -> Tuple[int, int]:
        """(stage, index within the stage) of block ``block``."""
        stage = self.blocks[block].stage
        return stage, block - next(i for i, b in enumerate(self.blocks) if b.stage == stage)

    def layers(self) -> List[Layer]:
        """Every conv (shortcuts after their block's convs, squeeze-excitation after its depthwise conv), the
        head conv and the classifier, in forward order."""
        rows = [Layer('stem', 'stem', self.stem.conv)]
        for i, b in enumerate(self.blocks):
            rows += _block_layers(i, b)
        if self.head is not None:
            rows.append(Layer('head', 'head', self.head))
        f = self.feature_entry
        rows.append(Layer('fc', 'fc', ConvSpec('fc', f, f, 1, act=None, norm=False, pooled=True), 'classifier'))
        return rows

    def entry_layers(self) -> List[Layer]:
        """The layer that writes each width entry, in entry order."""
        return [r for r in self.layers() if r.role == 'conv']

    def tied_entries(self) -> List[Tuple[int, int]]:
        """Pairs of entries that must hold the same width (a depthwise conv keeps its input width)."""
        return [(c.in_entry, c.out_entry) for b in self.blocks for c in b.convs if c.depthwise]


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


def block_spec(kind: str, stage: int, stride: int, in_entry: int, first: int, residual: bool, act: str = 'relu',
               kernel: int = 3, expand: bool = True, se: bool = False) -> BlockSpec:
    """A block whose entries start at ``first``: basic (3x3 s, 3x3), bottleneck (1x1, 3x3 s, 1x1), inverted
    residual ((1x1 expand,) ``kernel`` depthwise s, 1x1 linear) or conv (1x1 + BN + act); the last conv of a
    residual block has no activation (it joins the residual)."""
    if kind == 'basic':
        e = (first, first + 1)
        convs = (ConvSpec('conv1', in_entry, e[0], 3, stride, act=act), ConvSpec('conv2', e[0], e[1], 3, act=None))
    elif kind == 'bottleneck':
        e = (first, first + 1, first + 2)
        convs = (ConvSpec('conv1', in_entry, e[0], 1, act=act), ConvSpec('conv2', e[0], e[1], 3, stride, act=act),
                 ConvSpec('conv3', e[1], e[2], 1, act=None))
    elif kind == 'inverted_residual':
        e = tuple(range(first, first + (3 if expand else 2)))
        pw = (ConvSpec('conv_pw', in_entry, e[0], 1, act=act),) if expand else ()
        convs = pw + (ConvSpec('conv_dw', e[0] if expand else in_entry, e[-2], kernel, stride, depthwise=True,
                               act=act), ConvSpec('conv_pwl', e[-2], e[-1], 1, act=None))
    elif kind == 'conv':
        e = (first,)
        convs = (ConvSpec('conv', in_entry, first, kernel, stride, act=act),)
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    return BlockSpec(kind, stage, stride, in_entry, e, residual, convs, se)
