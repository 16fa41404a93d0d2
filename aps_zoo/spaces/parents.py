"""Trained parent networks a search can start from (``space.init_from``), read into aps-zoo's layer names.

A parent is a trained network of a registered family (``aps_zoo.families``: ResNet, MobileNetV2, ...), given as

* a timm model name (``resnet18``, ``resnet50.a1_in1k``, ``mobilenetv2_100``): ``timm.create_model(name,
  pretrained=True)``, so weights come from the Hub (only when online);
* ``local-dir:<folder>`` or ``hf-hub:<org>/<name>[@revision]``: a folder timm loads (an exported aps_* model
  or a folder of the timm model of a family);
* a ``.safetensors`` file of such a model's state dict (aps-zoo or timm layer names).

Every parent is turned into the state dict of the aps-zoo model of the same widths (``stem.conv``,
``blocks.<i>.<conv>``, ``blocks.<i>.shortcut``, ``head.conv``, ``fc``), checked tensor by tensor against the
family's layout: a missing, unexpected or mis-shaped tensor ends with one line naming the layer.

timm's plain ResNets downsample with a strided 1x1 conv + BN at each stage start, the zoo with a 2x2 average
pool + 1x1 conv (docs/design.md#shortcuts): that shortcut is carried with its BN folded into the conv (scale)
and the block's last BN (shift), an approximation (the pool averages the four pixels the strided conv samples
one of). Every other layer, and every layer of the zoo's own models and of timm's EfficientNet-builder models
(MobileNetV2, MobileNetV3), is exact. timm's layer names are each family's registry entry's ``timm_naming``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..filenames import HUB_CONFIG_FILE, WEIGHTS_FILE
from ..channels import ChannelConfig, ChannelConfigError, NetworkLayout, network_layout, shortcut_kind, tied_entries
from ..families import FAMILIES, TimmNaming
from ..layout import Layer

BN_TENSORS = ('weight', 'bias', 'running_mean', 'running_var')
BN_EPS = 1e-5  # torch's, timm's and the zoo's BatchNorm eps
IMPORTANCE = ('none', 'bn_scale', 'l1')
Tensors = Dict[str, torch.Tensor]


class InheritError(ValueError):
    """A parent network that cannot initialise the search space (wrong family, missing or mis-shaped layers)."""


def conv_layers(layout: NetworkLayout) -> List[Layer]:
    """Every layer of ``layout`` with weights of its own but the classifier (``NetworkLayout.layers``)."""
    return [layer for layer in layout.layers() if layer.role != 'classifier']


def layer_kind(layout: NetworkLayout, layer: Layer, widths, in_chans: int) -> Optional[str]:
    """What ``layer`` is at these widths: 'conv_bn' (a conv + BN), 'conv_bias' (a conv with bias, no BN),
    'pool_conv' (a conv, no BN), or None (an identity shortcut or no residual: no weights)."""
    if layer.role != 'shortcut':
        return 'conv_bn' if layer.spec.norm else 'conv_bias'
    kind = shortcut_kind(layout.blocks[layer.block], in_chans if layer.in_entry is None else widths[layer.in_entry],
                         widths[layer.out_entry])
    return kind if kind in ('conv_bn', 'pool_conv') else None


def layer_channels(layer: Layer, widths, in_chans: int) -> Tuple[int, int]:
    """(c_in, c_out) of ``layer`` at ``widths``."""
    return layer.channels(in_chans if layer.in_entry is None else widths[layer.in_entry], widths[layer.out_entry])


# ------------------------------------------------------------------------------------- layer names

ZOO_NAMING = TimmNaming('aps-zoo', 'stem.conv.weight', lambda layout, layer: (layer.conv_key, f'{layer.name}.bn'),
                        'fc', 'blocks.', 2)


def _num_blocks(naming: TimmNaming, state: Tensors) -> int:
    """Blocks in ``state`` (distinct block prefixes of its tensors)."""
    return len({'.'.join(k.split('.')[:naming.block_parts]) for k in state if k.startswith(naming.block_prefix)})


def recognise(state: Tensors) -> Tuple[Optional[TimmNaming], Optional[str]]:
    """(naming, family) of a checkpoint, from the registry's timm namings and aps-zoo recognisers (None, None:
    unknown; an aps-zoo checkpoint of no known family: (ZOO_NAMING, None))."""
    if ZOO_NAMING.marker in state:
        return ZOO_NAMING, next((f.name for f in FAMILIES.values() if f.is_zoo_state(state)), None)
    return next(((f.timm_naming, f.name) for f in FAMILIES.values()
                 if f.timm_naming and f.timm_naming.marker in state), (None, None))


def naming_of(state: Tensors, layout: NetworkLayout, source: str) -> TimmNaming:
    """The naming of ``state``; raises naming the mismatch if it is unknown, of another family or depth."""
    family = layout.family
    naming, found = recognise(state)
    if naming is None:
        markers = [ZOO_NAMING.marker] + [f.timm_naming.marker for f in FAMILIES.values() if f.timm_naming]
        raise InheritError(f"space.init_from {source}: not a checkpoint of a family this project reads (none of "
                           f"{', '.join(map(repr, markers))} in its {len(state)} tensors)")
    if found != family:
        raise InheritError(f"space.init_from {source}: a {naming.label} {found or 'network of no known family'} "
                           f"checkpoint cannot initialise a space of family {family!r}")
    if _num_blocks(naming, state) != len(layout.blocks):
        raise InheritError(f"space.init_from {source}: the parent has {_num_blocks(naming, state)} blocks, a "
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


def _pop_checked(state: Tensors, key: str, shape, layer: Layer, source: str, label: str, why: str) -> torch.Tensor:
    tensor = _pop(state, key, layer.name, source, label)
    _check_shape(tensor, shape, key, layer.name, source, why)
    return tensor


def to_zoo_state(state: Tensors, layout: NetworkLayout, source: str) -> Tuple[Tensors, List[int], int, int]:
    """``state`` (any supported naming) as aps-zoo tensors, with the parent's widths, input channels and the
    number of strided downsamples folded into the zoo's pooled shortcut.

    Widths are read from the conv that first writes each entry; every other tensor is checked against them.
    """
    state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    naming = naming_of(state, layout, source)
    widths: List[Optional[int]] = [None] * layout.num_entries
    in_chans, folded, zoo = 0, 0, {}
    for layer in conv_layers(layout):
        conv_name, bn_name = naming.names(layout, layer)
        kind = layer_kind(layout, layer, widths, in_chans)
        if kind is None:
            continue
        weight = _pop(state, f'{conv_name}.weight', layer.name, source, naming.label)
        in_chans = in_chans or weight.shape[1]
        if layer.role == 'conv':
            widths[layer.out_entry] = widths[layer.out_entry] or weight.shape[0]
        c_in, c_out = layer_channels(layer, widths, in_chans)
        _check_shape(weight, (c_out, 1 if layer.spec.depthwise else c_in, layer.spec.kernel, layer.spec.kernel),
                     f'{conv_name}.weight', layer.name, source,
                     f'entry {layer.out_entry} is {widths[layer.out_entry]} wide and its input {c_in}')
        bn = {}
        if kind == 'conv_bias':
            zoo[f'{layer.conv_key}.bias'] = _pop_checked(state, f'{conv_name}.bias', (c_out,), layer, source,
                                                         naming.label, 'one per channel')
        elif kind == 'conv_bn' or naming.strided_downsample:
            bn = {t: _pop_checked(state, f'{bn_name}.{t}', (c_out,), layer, source, naming.label, 'one per channel')
                  for t in BN_TENSORS}
        if kind == 'pool_conv' and bn:  # timm's strided conv + BN downsample: fold the BN (see module doc)
            scale = bn['weight'] / (bn['running_var'] + BN_EPS).sqrt()
            weight = weight * scale[:, None, None, None]
            last = f'blocks.{layer.block}.{layout.blocks[layer.block].convs[-1].name}.bn.bias'
            zoo[last] = zoo[last] + bn['bias'] - bn['running_mean'] * scale
            bn, folded = {}, folded + 1
        zoo[f'{layer.conv_key}.weight'] = weight
        zoo.update({f'{layer.name}.bn.{t}': v for t, v in bn.items()})
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

    for layer in conv_layers(layout):
        if layer.role == 'shortcut' and layer_kind(layout, layer, widths, in_chans) is None:  # identity
            root[find(layer.out_entry)] = find(layer.in_entry)
    for a, b in tied_entries(layout):
        root[find(b)] = find(a)
    groups: Dict[int, List[int]] = {}
    for e in range(layout.num_entries):
        groups.setdefault(find(e), []).append(e)
    return list(groups.values())


def _entry_scores(zoo: Tensors, layout: NetworkLayout, importance: str) -> Dict[int, torch.Tensor]:
    scores = {}
    for layer in layout.entry_layers():
        if importance == 'bn_scale' and layer.spec.norm:
            s = zoo[f'{layer.name}.bn.weight'].abs()
        else:  # 'l1', or a conv without BN (an efficient head)
            s = zoo[f'{layer.conv_key}.weight'].abs().flatten(1).sum(1)
        scores[layer.out_entry] = s / s.mean().clamp_min(1e-12)
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
    for layer in conv_layers(layout):
        key = f'{layer.conv_key}.weight'
        if key not in out:
            continue
        rows = slice(None) if layer.role == 'se_reduce' else perm[layer.out_entry]  # reduced channels keep order
        w = out[key][rows]
        keep_in = layer.in_entry is None or layer.spec.depthwise or layer.role == 'se_expand'
        out[key] = w if keep_in else w[:, perm[layer.in_entry]]
        for k in [f'{layer.conv_key}.bias'] + [f'{layer.name}.bn.{t}' for t in BN_TENSORS]:
            if k in out:
                out[k] = out[k][rows]
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
    for filename in (WEIGHTS_FILE, 'pytorch_model.bin', cfg.get('hf_hub_filename') or ''):
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
    if source.startswith('local-dir:') and not (Path(source[len('local-dir:'):]) / HUB_CONFIG_FILE).is_file():
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
        weights = folder / WEIGHTS_FILE
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
