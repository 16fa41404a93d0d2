"""Trained parent networks a search can start from (``space.init_from``), read into aps-zoo's layer names.

A parent is a ResNet (basic or bottleneck) or a MobileNetV2 with trained weights, given as

* a timm model name (``resnet18``, ``resnet50.a1_in1k``, ``mobilenetv2_100``): ``timm.create_model(name,
  pretrained=True)``, so weights come from the Hub (only when online);
* ``local-dir:<folder>`` or ``hf-hub:<org>/<name>[@revision]``: a folder timm loads (an exported aps_* model
  or any timm ResNet/MobileNetV2 folder);
* a ``.safetensors`` file of such a model's state dict (aps-zoo or timm layer names).

Every parent is turned into the state dict of the aps-zoo model of the same widths (``stem.conv``,
``blocks.<i>.<conv>``, ``blocks.<i>.shortcut``, ``head.conv``, ``fc``), checked tensor by tensor against the
family's layout: a missing, unexpected or mis-shaped tensor ends with one line naming the layer.

timm's plain ResNets downsample with a strided 1x1 conv + BN at each stage start, the zoo with a 2x2
average pool + 1x1 conv (DESIGN §3): that shortcut is carried with its BN folded into the conv (scale) and
the block's last BN (shift), an approximation (the pool averages the four pixels the strided conv samples
one of). Every other layer, and every layer of the zoo's own models and of timm's MobileNetV2, is exact.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..channels import ChannelConfig, ChannelConfigError, NetworkLayout, network_layout, shortcut_kind, tied_entries

BN_TENSORS = ('weight', 'bias', 'running_mean', 'running_var')
BN_EPS = 1e-5  # torch's, timm's and the zoo's BatchNorm eps
IMPORTANCE = ('none', 'bn_scale', 'l1')
Tensors = Dict[str, torch.Tensor]


class InheritError(ValueError):
    """A parent network that cannot initialise the search space (wrong family, missing or mis-shaped layers)."""


@dataclass(frozen=True)
class Slot:
    """One conv of a family's layout: its aps-zoo model name, its supernet module, the entries it reads and
    writes (``in_entry`` None: the image), its kernel, and the block it is the shortcut of (None: not one)."""
    name: str
    module: str
    in_entry: Optional[int]
    out_entry: int
    kernel: int
    depthwise: bool = False
    shortcut_of: Optional[int] = None


def conv_slots(layout: NetworkLayout) -> List[Slot]:
    """Every conv of ``layout`` in forward order (shortcuts after their block's convs), head conv last."""
    stem = layout.stem.conv
    slots = [Slot('stem', 'stem', None, stem.out_entry, stem.kernel)]
    for i, b in enumerate(layout.blocks):
        for j, conv in enumerate(b.convs):
            slots.append(Slot(f'blocks.{i}.{conv.name}', f'blocks.{i}.convs.{j}', conv.in_entry, conv.out_entry,
                              conv.kernel, conv.depthwise))
        if b.residual:
            slots.append(Slot(f'blocks.{i}.shortcut', f'blocks.{i}.shortcut', b.in_entry, b.out_entry, 1,
                              shortcut_of=i))
    if layout.head is not None:
        slots.append(Slot('head', 'head', layout.head.in_entry, layout.head.out_entry, layout.head.kernel))
    return slots


def slot_kind(layout: NetworkLayout, slot: Slot, widths, in_chans: int) -> Optional[str]:
    """What ``slot`` is at these widths: 'conv_bn' (a conv + BN), 'pool_conv' (a conv, no BN), or None
    (an identity shortcut or no residual: no weights)."""
    if slot.shortcut_of is None:
        return 'conv_bn'
    block = layout.blocks[slot.shortcut_of]
    kind = shortcut_kind(block, in_chans if slot.in_entry is None else widths[slot.in_entry], widths[slot.out_entry])
    return kind if kind in ('conv_bn', 'pool_conv') else None


# ------------------------------------------------------------------------------------- layer names

def _stage_index(layout: NetworkLayout, block: int) -> Tuple[int, int]:
    stage = layout.blocks[block].stage
    first = next(i for i, b in enumerate(layout.blocks) if b.stage == stage)
    return stage, block - first


def _zoo_names(layout: NetworkLayout, slot: Slot) -> Tuple[str, str]:
    return f'{slot.name}.conv', f'{slot.name}.bn'


def _timm_resnet_names(layout: NetworkLayout, slot: Slot) -> Tuple[str, str]:
    if slot.name == 'stem':
        return 'conv1', 'bn1'
    block, conv = slot.name.split('.')[1:]
    stage, index = _stage_index(layout, int(block))
    prefix = f'layer{stage + 1}.{index}'
    if conv == 'shortcut':
        return f'{prefix}.downsample.0', f'{prefix}.downsample.1'
    return f'{prefix}.{conv}', f'{prefix}.bn{conv[-1]}'


_TIMM_MBV2_CONVS = {  # timm has no shortcut convs (identity only): a zoo conv shortcut is never found there
    3: {'conv_pw': ('conv_pw', 'bn1'), 'conv_dw': ('conv_dw', 'bn2'), 'conv_pwl': ('conv_pwl', 'bn3')},
    2: {'conv_dw': ('conv_dw', 'bn1'), 'conv_pwl': ('conv_pw', 'bn2')}}


def _timm_mobilenetv2_names(layout: NetworkLayout, slot: Slot) -> Tuple[str, str]:
    if slot.name in ('stem', 'head'):
        return ('conv_stem', 'bn1') if slot.name == 'stem' else ('conv_head', 'bn2')
    block, conv = slot.name.split('.')[1:]
    stage, index = _stage_index(layout, int(block))
    conv_name, bn_name = _TIMM_MBV2_CONVS[len(layout.blocks[int(block)].entries)].get(conv, (conv, conv))
    return f'blocks.{stage}.{index}.{conv_name}', f'blocks.{stage}.{index}.{bn_name}'


def _zoo_family(state: Tensors) -> str:
    if 'blocks.0.conv_dw.conv.weight' in state:
        return 'mobilenetv2'
    return 'resnet' if state['stem.conv.weight'].shape[-1] == 7 else 'resnet_cifar'


@dataclass(frozen=True)
class Naming:
    """How one kind of checkpoint names the layers: a tensor that identifies it, the family it holds, the
    (conv, BN) prefixes of a slot, the classifier prefix, and how it downsamples."""
    label: str
    marker: str
    family: Callable[[Tensors], str]
    names: Callable[[NetworkLayout, Slot], Tuple[str, str]]
    classifier: str
    block_prefix: str  # how block tensors start, and how many dot-separated parts name a block
    block_parts: int   # ('blocks.3', 'layer2.1', 'blocks.2.0')
    strided_downsample: bool = False  # stage-start shortcut is a strided 1x1 conv + BN (timm's plain ResNet)

    def num_blocks(self, state: Tensors) -> int:
        """Blocks in ``state`` (distinct block prefixes of its tensors)."""
        return len({'.'.join(k.split('.')[:self.block_parts]) for k in state if k.startswith(self.block_prefix)})


NAMINGS = (
    Naming('aps-zoo', 'stem.conv.weight', _zoo_family, _zoo_names, 'fc', 'blocks.', 2),
    Naming('timm ResNet', 'layer1.0.conv1.weight', lambda state: 'resnet', _timm_resnet_names, 'fc', 'layer', 2,
           True),
    Naming('timm MobileNetV2', 'conv_stem.weight', lambda state: 'mobilenetv2', _timm_mobilenetv2_names,
           'classifier', 'blocks.', 3),
)


def naming_of(state: Tensors, layout: NetworkLayout, source: str) -> Naming:
    """The naming of ``state``; raises naming the mismatch if it is unknown, of another family or depth."""
    family = layout.family
    naming = next((n for n in NAMINGS if n.marker in state), None)
    if naming is None:
        raise InheritError(f"space.init_from {source}: not a checkpoint of a ResNet or MobileNetV2 this project "
                           f"reads (none of {', '.join(repr(n.marker) for n in NAMINGS)} in its "
                           f"{len(state)} tensors)")
    if naming.family(state) != family:
        raise InheritError(f"space.init_from {source}: a {naming.label} {naming.family(state)} checkpoint cannot "
                           f"initialise a space of family {family!r}")
    if naming.num_blocks(state) != len(layout.blocks):
        raise InheritError(f"space.init_from {source}: the parent has {naming.num_blocks(state)} blocks, a "
                           f"{family}{layout.depth or ''} {len(layout.blocks)}: set space.depth to the parent's")
    return naming


# ------------------------------------------------------------------------------------- conversion

def _pop(state: Tensors, key: str, layer: str, source: str, label: str) -> torch.Tensor:
    if key not in state:
        raise InheritError(f"space.init_from {source}: no tensor {key!r} for layer {layer} in this {label} "
                           f"checkpoint: it is another network or incomplete")
    return state.pop(key)


def _check_shape(tensor: torch.Tensor, shape: Tuple[int, ...], key: str, layer: str, source: str, why: str):
    if tuple(tensor.shape) != tuple(shape):
        raise InheritError(f"space.init_from {source}: layer {layer} ({key}) has shape {list(tensor.shape)}, "
                           f"needs {list(shape)} ({why})")


def to_zoo_state(state: Tensors, layout: NetworkLayout, source: str) -> Tuple[Tensors, List[int], int, int]:
    """``state`` (any supported naming) as aps-zoo tensors, with the parent's widths, input channels and the
    number of strided downsamples folded into the zoo's pooled shortcut.

    Widths are read from the conv that first writes each entry; every other tensor is checked against them.
    """
    state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    naming = naming_of(state, layout, source)
    widths: List[Optional[int]] = [None] * layout.num_entries
    in_chans, folded, zoo = 0, 0, {}
    for slot in conv_slots(layout):
        conv_name, bn_name = naming.names(layout, slot)
        kind = slot_kind(layout, slot, widths, in_chans)
        if kind is None:
            continue
        weight = _pop(state, f'{conv_name}.weight', slot.name, source, naming.label)
        in_chans = in_chans or weight.shape[1]
        widths[slot.out_entry] = widths[slot.out_entry] or weight.shape[0]
        c_in = in_chans if slot.in_entry is None else widths[slot.in_entry]
        _check_shape(weight, (widths[slot.out_entry], 1 if slot.depthwise else c_in, slot.kernel, slot.kernel),
                     f'{conv_name}.weight', slot.name, source,
                     f'entry {slot.out_entry} is {widths[slot.out_entry]} wide and its input {c_in}')
        bn = {}
        if kind == 'conv_bn' or naming.strided_downsample:
            for t in BN_TENSORS:
                bn[t] = _pop(state, f'{bn_name}.{t}', slot.name, source, naming.label)
                _check_shape(bn[t], (widths[slot.out_entry],), f'{bn_name}.{t}', slot.name, source, 'one per channel')
        if kind == 'pool_conv' and bn:  # timm's strided conv + BN downsample: fold the BN (see module doc)
            scale = bn['weight'] / (bn['running_var'] + BN_EPS).sqrt()
            weight = weight * scale[:, None, None, None]
            last = f'blocks.{slot.shortcut_of}.{layout.blocks[slot.shortcut_of].convs[-1].name}.bn.bias'
            zoo[last] = zoo[last] + bn['bias'] - bn['running_mean'] * scale
            bn, folded = {}, folded + 1
        zoo[f'{slot.name}.conv.weight'] = weight
        zoo.update({f'{slot.name}.bn.{t}': v for t, v in bn.items()})
    feature = widths[layout.feature_entry]
    fc_w = _pop(state, f'{naming.classifier}.weight', 'fc', source, naming.label)
    fc_b = _pop(state, f'{naming.classifier}.bias', 'fc', source, naming.label)
    _check_shape(fc_w, (fc_w.shape[0], feature), f'{naming.classifier}.weight', 'fc', source,
                 f'its input is entry {layout.feature_entry}, {feature} wide')
    _check_shape(fc_b, (fc_w.shape[0],), f'{naming.classifier}.bias', 'fc', source, 'one per class')
    zoo.update({'fc.weight': fc_w, 'fc.bias': fc_b})
    if state:
        extra = sorted(state)
        raise InheritError(f"space.init_from {source}: {len(extra)} tensor(s) that a {layout.family}"
                           f"{layout.depth or ''} does not have (first: {extra[0]!r}): the parent is another network")
    return zoo, widths, in_chans, folded


# ------------------------------------------------------------------------------------- importance

def _entry_groups(layout: NetworkLayout, widths, in_chans: int) -> List[List[int]]:
    """Entries whose channels must keep one order: joined by identity shortcuts or depthwise ties."""
    root = list(range(layout.num_entries))

    def find(e):
        while root[e] != e:
            e = root[e]
        return e

    for slot in conv_slots(layout):
        if slot.shortcut_of is not None and slot_kind(layout, slot, widths, in_chans) is None:  # identity
            root[find(slot.out_entry)] = find(slot.in_entry)
    for a, b in tied_entries(layout):
        root[find(b)] = find(a)
    groups: Dict[int, List[int]] = {}
    for e in range(layout.num_entries):
        groups.setdefault(find(e), []).append(e)
    return list(groups.values())


def _entry_scores(zoo: Tensors, layout: NetworkLayout, importance: str) -> Dict[int, torch.Tensor]:
    scores = {}
    for slot in conv_slots(layout):
        if slot.shortcut_of is not None or slot.out_entry in scores:
            continue
        if importance == 'bn_scale':
            s = zoo[f'{slot.name}.bn.weight'].abs()
        else:
            s = zoo[f'{slot.name}.conv.weight'].abs().flatten(1).sum(1)
        scores[slot.out_entry] = s / s.mean().clamp_min(1e-12)
    return scores


def reorder_by_importance(zoo: Tensors, layout: NetworkLayout, widths, in_chans: int, importance: str) -> Tensors:
    """The same network with each entry's channels sorted by importance, most important first, so the
    leading channels a candidate starts from are the parent's strongest ones (the function is unchanged).

    ``importance``: 'bn_scale' (|gamma| of the BN after the conv writing the entry) or 'l1' (L1 norm of that
    conv's filters); entries that share an order (identity shortcuts, depthwise ties) add their scores.
    """
    if importance == 'none':
        return dict(zoo)
    scores = _entry_scores(zoo, layout, importance)
    perm: Dict[int, torch.Tensor] = {}
    for group in _entry_groups(layout, widths, in_chans):
        order = torch.argsort(sum(scores[e] for e in group), descending=True, stable=True)
        perm.update({e: order for e in group})
    out = dict(zoo)
    for slot in conv_slots(layout):
        key = f'{slot.name}.conv.weight'
        if key not in out:
            continue
        w = out[key][perm[slot.out_entry]]
        out[key] = w if slot.in_entry is None or slot.depthwise else w[:, perm[slot.in_entry]]
        for t in BN_TENSORS:
            if f'{slot.name}.bn.{t}' in out:
                out[f'{slot.name}.bn.{t}'] = out[f'{slot.name}.bn.{t}'][perm[slot.out_entry]]
    out['fc.weight'] = out['fc.weight'][:, perm[layout.feature_entry]]
    return out


# ------------------------------------------------------------------------------------- sources

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return 'sha256:' + digest.hexdigest()


def _hub_revision(model) -> str:
    """The commit of the Hub snapshot timm loaded ``model`` from (read from the local cache), else 'unknown'."""
    from huggingface_hub import try_to_load_from_cache
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    repo = cfg.get('hf_hub_id')
    if not repo:
        return 'unknown'
    for filename in ('model.safetensors', 'pytorch_model.bin', cfg.get('hf_hub_filename') or ''):
        path = try_to_load_from_cache(repo, filename) if filename else None
        if isinstance(path, str) and '/snapshots/' in path:
            return path.split('/snapshots/')[1].split('/')[0]
    return 'unknown'


def read_source(source: str) -> Tuple[Tensors, str, str]:
    """(state dict, architecture or None for a bare file, revision) of a parent source (see the module doc)."""
    path = Path(source)
    if source.endswith('.safetensors') or path.is_file():
        try:
            return load_file(str(path)), None, _sha256(path)
        except FileNotFoundError:
            raise InheritError(f"space.init_from: file not found: {source}") from None
        except (SafetensorError, OSError) as e:
            raise InheritError(f"space.init_from {source}: not a readable safetensors file: {e}") from None
    import timm
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    if source.startswith('local-dir:') and not (Path(source[len('local-dir:'):]) / 'config.json').is_file():
        raise InheritError(f"space.init_from {source}: no config.json in that folder (an exported or "
                           f"timm save_for_hf folder is needed)")
    try:
        model = timm.create_model(source, pretrained=True)
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise InheritError(f"space.init_from {source}: cannot load its weights "
                           f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); timm names and hf-hub: "
                           f"need the Hub: use a local-dir: folder or a .safetensors file offline") from None
    except RuntimeError as e:  # timm: unknown model name
        raise InheritError(f"space.init_from {source}: {(str(e).splitlines() or [''])[0]}") from None
    if source.startswith('local-dir:'):
        folder = Path(source[len('local-dir:'):])
        weights = folder / 'model.safetensors'
        revision = _sha256(weights) if weights.is_file() else 'unknown'
    else:
        revision = source.split('@')[1] if '@' in source else _hub_revision(model)
    arch = str((getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, arch, revision


@dataclass
class Parent:
    """A trained network in aps-zoo's layer names: its widths, input channels, classes, tensors and origin."""
    family: str
    depth: int
    widths: List[int]
    in_chans: int
    num_classes: int
    state: Tensors
    source: str
    architecture: str
    revision: str
    importance: str = 'none'
    notes: List[str] = field(default_factory=list)

    @property
    def layout(self) -> NetworkLayout:
        """The parent family's NetworkLayout."""
        return network_layout(self.family, self.depth)

    def provenance(self) -> Dict[str, object]:
        """The fields a searched child's ChannelConfig records about its parent (shown on the model card)."""
        d = {'parent': self.source, 'parent_architecture': self.architecture, 'parent_revision': self.revision,
             'parent_widths': list(self.widths), 'init_importance': self.importance}
        if self.notes:
            d['parent_notes'] = '; '.join(self.notes)
        return d


def load_parent(source: str, family: str, depth: int = 0, importance: str = 'none') -> Parent:
    """Read ``source`` as a parent of ``family``/``depth``; channels reordered by ``importance``."""
    if importance not in IMPORTANCE:
        raise InheritError(f"space.init_importance must be one of {', '.join(IMPORTANCE)}, got {importance!r}")
    state, architecture, revision = read_source(source)
    layout = network_layout(family, depth)
    architecture = architecture or f"{naming_of(state, layout, source).label} {family}{depth or ''}"
    zoo, widths, in_chans, folded = to_zoo_state(state, layout, source)
    num_classes = int(zoo['fc.weight'].shape[0])
    try:
        ChannelConfig(family, widths, depth, num_classes, (in_chans, 224, 224))
    except ChannelConfigError as e:
        raise InheritError(f"space.init_from {source}: its widths are not a valid {family}{depth or ''}: {e}") \
            from None
    notes = [f"{folded} strided 1x1 conv + BN downsample(s) carried as the zoo's 2x2 avg-pool + 1x1 conv "
             f"(BN folded): approximate"] if folded else []
    zoo = reorder_by_importance(zoo, layout, widths, in_chans, importance)
    return Parent(family, depth, widths, in_chans, num_classes, zoo, source, architecture, revision, importance,
                  notes)
