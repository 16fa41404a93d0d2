"""What every aps_* model shares: the network body built from a ChannelConfig, its pretrained cfgs and factory.

A model is the network ``aps_zoo.flops.layer_table`` walks, with the same module names:
``stem.conv``, ``blocks.<i>.<conv>``, ``blocks.<i>.shortcut``, ``head.conv`` and ``fc``.
The family files (``aps_resnet.py``, ``aps_mobilenetv2.py``) add their blocks and register the models.
"""

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (EntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from timm.layers import ConvNormAct, SelectAdaptivePool2d, create_classifier, get_act_layer, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from ..filenames import HUB_CONFIG_FILE, WEIGHTS_FILE
from ..channels import BlockSpec, ChannelConfig, ChannelConfigError, ConvSpec, NetworkLayout, uniform_widths
from ..families import get_family
from ..flops import feature_size

CONFIG_DIR = Path(__file__).parent / 'configs'
# Zoo models whose trained weights ship inside the package: ``pretrained/<name>/`` is the Hub folder exported
# for ``aps-zoo/<name>`` (card, timm's config.json, weights), so ``pretrained=True`` works offline.
PRETRAINED_DIR = Path(__file__).parent / 'pretrained'
HUB_ORG = 'aps-zoo'
_HUB_MISSING = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled)
# Zoo models whose trained weights are on the Hub at aps-zoo/<name> (and not shipped in PRETRAINED_DIR): these
# and the shipped ones get an ``hf_hub_id``, so ``timm.list_pretrained('aps_*')`` lists exactly the models with
# weights. None yet; add a name once its weights are pushed.
PUBLISHED_WEIGHTS: frozenset = frozenset()


class PretrainedWeightsNotFoundError(RuntimeError):
    """``pretrained=True`` for a model whose weights are not on the Hub (or not in the offline cache)."""


def make_config(family: str, widths: Sequence[int], depth: int, num_classes: int, in_chans: int,
                img_size: Optional[Union[int, Sequence[int]]]) -> ChannelConfig:
    """The ChannelConfig of a model built with these constructor arguments (validated)."""
    size = get_family(family).preprocessing.img_size if img_size is None else img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ChannelConfig(family, list(widths), depth, num_classes, (in_chans, *size))


def feature_taps(layout: NetworkLayout) -> List[Tuple[int, int]]:
    """(block index, reduction) of each feature_info entry: the last output at each reduction (-1 is the stem)."""
    reduction = layout.stem.conv.stride
    outputs = [(-1, reduction)]
    reduction = layout.stem.reduction
    for i, block in enumerate(layout.blocks):
        reduction *= block.stride
        outputs.append((i, reduction))
    return [o for o, after in zip(outputs, outputs[1:] + [(None, 0)]) if after[1] != o[1]]


def conv_norm_act(spec: ConvSpec, in_chs: int, out_chs: int, device=None, dtype=None) -> nn.Module:
    """The conv + BN + activation of ``spec`` (timm's ConvNormAct)."""
    return ConvNormAct(in_chs, out_chs, spec.kernel, spec.stride, groups=spec.groups(in_chs),
                       apply_act=spec.act is not None, act_layer=spec.act or 'relu', device=device, dtype=dtype)


def block_convs(spec: BlockSpec, in_chs: int, widths: Sequence[int], device=None, dtype=None) -> Dict[str, nn.Module]:
    """Conv + BN (+ activation) of every conv of ``spec``, keyed by its name; ``widths`` are the block's
    entries' widths, ``in_chs`` its input width."""
    width = {spec.in_entry: in_chs, **dict(zip(spec.entries, widths))}
    return {c.name: conv_norm_act(c, width[c.in_entry], width[c.out_entry], device=device, dtype=dtype)
            for c in spec.convs}


def pooled_head(spec: ConvSpec, in_chs: int, out_chs: int, device=None, dtype=None) -> nn.Module:
    """timm's efficient head conv: 1x1 with bias, no BN, then the activation (run on pooled features)."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_chs, out_chs, 1, bias=True, device=device, dtype=dtype),
                                     act=get_act_layer(spec.act)(inplace=True)))


def make_shortcut(kind: Optional[str], in_chs: int, out_chs: int, device=None, dtype=None) -> Optional[nn.Module]:
    """The shortcut module of ``channels.shortcut_kind`` (None where the block has no residual)."""
    if kind is None:
        return None
    if kind == 'identity':
        return nn.Identity()
    if kind == 'conv_bn':
        return ConvNormAct(in_chs, out_chs, 1, apply_act=False, device=device, dtype=dtype)
    return nn.Sequential(OrderedDict(
        pool=nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        conv=nn.Conv2d(in_chs, out_chs, 1, bias=False, device=device, dtype=dtype),
    ))


class ApsNet(nn.Module):
    """Stem, blocks and optional head conv of a ChannelConfig, then global pooling and a linear classifier.

    A head conv whose spec is ``pooled`` is timm's efficient head (MobileNetV3): global pooling, the 1x1 conv
    with bias, its activation, then the classifier; ``forward_features`` then ends at the last block.
    Subclasses set ``block_cls`` (built as ``block_cls(spec, in_chs, widths, drop_path, device=, dtype=)``)
    and turn their constructor arguments into a ChannelConfig.
    """
    block_cls: Type[nn.Module]

    def __init__(
            self,
            config: ChannelConfig,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        layout, w = config.layout, config.widths
        self.channel_config = config
        self.num_classes = config.num_classes
        self.in_chans = config.in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        stem, pool = layout.stem.conv, layout.stem.pool
        self.stem = conv_norm_act(stem, config.in_chans, w[0], **dd)
        self.stem_pool = nn.MaxPool2d(*pool, padding=pool[0] // 2) if pool else nn.Identity()
        last = max(len(layout.blocks) - 1, 1)
        self.blocks = nn.Sequential(*[
            self.block_cls(b, w[b.in_entry], [w[j] for j in b.entries], drop_path_rate * i / last, **dd)
            for i, b in enumerate(layout.blocks)
        ])
        head = layout.head
        self.pooled_head = head is not None and head.pooled
        if head is None:
            self.head = nn.Identity()
        elif self.pooled_head:
            self.head = pooled_head(head, w[head.in_entry], w[head.out_entry], **dd)
        else:
            self.head = conv_norm_act(head, w[head.in_entry], w[head.out_entry], **dd)
        self.num_features = w[head.in_entry] if self.pooled_head else w[layout.feature_entry]
        self.head_hidden_size = w[layout.feature_entry]
        self._make_classifier(global_pool, **dd)

        taps = feature_taps(layout)
        self._tap_blocks = [i for i, _ in taps]
        self.feature_info = [
            dict(num_chs=w[0 if i < 0 else layout.blocks[i].out_entry], reduction=r,
                 module='stem' if i < 0 else f'blocks.{i}')
            for i, r in taps
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem, then blocks (by stage if ``coarse``), head conv last."""
        if coarse:
            blocks = [(rf'^blocks\.{i}\.', (b.stage,)) for i, b in enumerate(self.channel_config.layout.blocks)]
        else:
            blocks = [(r'^blocks\.(\d+)\.', None)]
        return dict(stem=r'^stem\.', blocks=blocks + [(r'^head\.', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0`` removes it); ``global_pool=None`` keeps the pooling."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.num_classes = num_classes
        self.channel_config = dataclasses.replace(self.channel_config, num_classes=num_classes)
        self._make_classifier(global_pool, **get_device_dtype(self))
        for module in (self.global_pool, self.flatten, self.fc):
            module.train(self.training)

    def _make_classifier(self, global_pool: str, device=None, dtype=None) -> None:
        """Global pooling and classifier (``self.num_classes``): timm's create_classifier, or for a pooled head
        unflattened pooling (``flatten`` after the head conv) and a linear layer as timm's MobileNetV3."""
        dd = {'device': device, 'dtype': dtype}
        if not self.pooled_head:
            self.flatten = nn.Identity()
            self.global_pool, self.fc = create_classifier(self.num_features, self.num_classes, pool_type=global_pool,
                                                          **dd)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
            return
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.fc = nn.Linear(self.head_hidden_size, self.num_classes, **dd) if self.num_classes else nn.Identity()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features at the ``feature_info`` taps selected by ``indices`` (all if None, last n if an int)."""
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        if stop_early:
            assert intermediates_only, 'Must use intermediates_only for early stopping.'
        take_indices, max_index = feature_take_indices(len(self._tap_blocks), indices)
        taps = [self._tap_blocks[i] for i in take_indices]
        intermediates = []
        x = self.stem(x)
        if -1 in taps:
            intermediates.append(x)
        x = self.stem_pool(x)
        blocks = self.blocks
        if stop_early and not torch.jit.is_scripting():
            blocks = self.blocks[:self._tap_blocks[max_index] + 1]
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i in taps:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x if self.pooled_head else self.head(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last selected tap (and the head conv and classifier); returns the taps kept."""
        take_indices, max_index = feature_take_indices(len(self._tap_blocks), indices)
        self.blocks = self.blocks[:self._tap_blocks[max_index] + 1]
        if prune_norm or prune_head or max_index < len(self._tap_blocks) - 1:
            self.head, self.pooled_head = nn.Identity(), False
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features after the last block (and the head conv, unless it runs on pooled features)."""
        x = self.stem_pool(self.stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x if self.pooled_head else self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling (then a pooled head conv), dropout and the classifier (skipped if ``pre_logits``)."""
        x = self.global_pool(x)
        if self.pooled_head:
            x = self.flatten(self.head(x))
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))


class ApsFamilyNet(ApsNet):
    """The network of ``family`` (the subclass's, or given) at any widths and depth (0: the family has one)."""
    family: str = ''

    def __init__(
            self,
            widths: Sequence[int],
            num_classes: int = 1000,
            in_chans: int = 3,
            img_size=None,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            depth: int = 0,
            family: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            widths: the output width of every conv in forward order (the family's config entries).
            img_size: nominal input size, recorded in ``channel_config`` (MACs); any size runs.
        """
        if family and self.family and family != self.family:
            raise ChannelConfigError(f"{type(self).__name__} builds family {self.family!r}, got {family!r}")
        config = make_config(family or self.family, widths, depth, num_classes, in_chans, img_size)
        super().__init__(config, global_pool, drop_rate, drop_path_rate, device=device, dtype=dtype)


def zoo_config(name: str) -> ChannelConfig:
    """The ChannelConfig a registered zoo model is built from (``configs/<name>.json``; a fresh copy)."""
    path = CONFIG_DIR / f'{name}.json'
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob('*.json'))
        raise ChannelConfigError(f"no zoo config named {name!r} in {CONFIG_DIR}; known: {', '.join(known)}")
    return ChannelConfig.load(path)


def architecture_for(config: ChannelConfig) -> str:
    """The registered timm architecture that builds any config of ``config.family``."""
    return get_family(config.family).architecture


def generic_args(family: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Model kwargs of a family's generic architecture: depth defaults to the family's, widths to the uniform
    network at that depth."""
    entry, depth = get_family(family), 0
    if entry.has_depth:
        depth = kwargs.setdefault('depth', entry.default_depth)
    kwargs.setdefault('widths', uniform_widths(family, depth))
    return kwargs


def zoo_args(name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Model kwargs of a zoo model: its config's widths (and depth) and nominal input size; other widths are
    refused."""
    config = zoo_config(name)
    kwargs.setdefault('img_size', tuple(config.input_size[1:]))
    widths = list(kwargs.setdefault('widths', list(config.widths)))
    if widths != list(config.widths):
        i = next((i for i, (a, b) in enumerate(zip(widths, config.widths)) if a != b), None)
        problem = (f'{len(widths)} widths given, its config has {len(config.widths)}' if i is None
                   else f'width {i} is {widths[i]}, its config has {config.widths[i]}')
    elif get_family(config.family).has_depth and kwargs.setdefault('depth', config.depth) != config.depth:
        problem = f"depth {kwargs['depth']} given, its config has depth {config.depth}"
    else:
        return kwargs
    raise ChannelConfigError(
        f"{name} is a fixed network ({CONFIG_DIR / (name + '.json')}): {problem}. Build other widths with "
        f"timm.create_model('{architecture_for(config)}', widths=...) or aps_zoo.models.create_model_from_config.")


def pool_size(config: ChannelConfig) -> Tuple[int, int]:
    """Spatial size of the unpooled features at ``config.input_size``."""
    return feature_size(config)


def aps_cfg(config: ChannelConfig, hf_hub_id: str = '', **kwargs) -> Dict[str, Any]:
    """The timm pretrained cfg of a model built from ``config`` (weights, if any, at ``hf_hub_id``); its
    preprocessing is the family's (registry entry)."""
    pre = get_family(config.family).preprocessing
    cfg = {
        'url': '',
        'num_classes': config.num_classes, 'input_size': config.input_size, 'pool_size': pool_size(config),
        'crop_pct': pre.crop_pct, 'interpolation': pre.interpolation, 'mean': pre.mean, 'std': pre.std,
        'first_conv': 'stem.conv', 'classifier': 'fc',
        'license': 'apache-2.0',
        'paper_name': 'Revisiting Parameter Sharing for Automatic Neural Channel Number Search',
    }
    if hf_hub_id:
        cfg.update(hf_hub_id=hf_hub_id, hf_hub_filename=WEIGHTS_FILE)
    return {**cfg, **kwargs}


def shipped_folder(name: str) -> Optional[Path]:
    """The exported Hub folder of zoo model ``name`` shipped in the package (None if its weights do not ship)."""
    folder = PRETRAINED_DIR / name
    return folder if (folder / WEIGHTS_FILE).is_file() else None


def _shipped_cfg(folder: Path) -> Dict[str, Any]:
    """The weights file and the preprocessing they were trained with (the folder's timm config.json)."""
    trained = json.loads((folder / HUB_CONFIG_FILE).read_text())['pretrained_cfg']
    keys = ('input_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')
    return {'file': str(folder / WEIGHTS_FILE),
            **{k: tuple(v) if isinstance(v, list) else v for k, v in trained.items() if k in keys}}


def zoo_cfg(name: str, **kwargs) -> Dict[str, Any]:
    """Pretrained cfg of a zoo model: its config's input size and classes; weights at ``aps-zoo/<name>`` once
    published (``PUBLISHED_WEIGHTS``) or shipped in the package (``file=``, with their preprocessing)."""
    folder = shipped_folder(name)
    published = name in PUBLISHED_WEIGHTS or folder is not None
    shipped = _shipped_cfg(folder) if folder else {}
    return aps_cfg(zoo_config(name), hf_hub_id=f'{HUB_ORG}/{name}' if published else '', **{**shipped, **kwargs})


def train_recipe(name: str) -> str:
    """The recipe (path in the repository) that trains the weights of zoo model ``name`` (with ``--config``)."""
    config = zoo_config(name)
    return get_family(config.family).train_recipe(config.depth)


def generic_cfg(family: str, **kwargs) -> Dict[str, Any]:
    """Pretrained cfg of a family's generic architecture (no weights of its own): its standard network at the
    family's default depth, classes and input size."""
    entry = get_family(family)
    depth = entry.default_depth
    config = make_config(family, uniform_widths(family, depth), depth, entry.preprocessing.num_classes, 3, None)
    return aps_cfg(config, **kwargs)


def create_aps_model(
        model_cls: Type[ApsNet], variant: str, layout: NetworkLayout, pretrained: bool = False, **kwargs,
) -> nn.Module:
    """``build_model_with_cfg`` with the feature taps of ``layout``, the zoo provenance, and a clear error for
    weights that are not published."""
    feature_cfg = dict(flatten_sequential=True, out_indices=tuple(range(len(feature_taps(layout)))))
    feature_cfg.update(kwargs.pop('feature_cfg', None) or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    zoo = (CONFIG_DIR / f'{variant}.json').exists()
    if pretrained and zoo and not (cfg.has_weights or cfg.state_dict):
        raise _no_weights_error(variant, 'none are published')
    try:
        model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    except _HUB_MISSING as e:
        offline = ' with HF_HUB_OFFLINE set' if hf_constants.HF_HUB_OFFLINE else ''
        raise _no_weights_error(variant, f"{type(e).__name__} for https://huggingface.co/{cfg.hf_hub_id}{offline}") \
            from None
    if isinstance(model, ApsNet) and zoo:
        provenance = dict(zoo_config(variant).provenance)
        model.channel_config = dataclasses.replace(model.channel_config, provenance=provenance)
    return model


def _no_weights_error(variant: str, why: str) -> PretrainedWeightsNotFoundError:
    """One line: no weights for ``variant`` (``why``), and the recipe that trains them."""
    recipe = train_recipe(variant) if (CONFIG_DIR / f'{variant}.json').exists() else '<train recipe>'
    return PretrainedWeightsNotFoundError(
        f"No weights are published for {variant} ({why}); train them with `aps-zoo train {recipe} --config "
        f"{variant}` and `aps-zoo export <run>/train <folder>`, then load timm.create_model('local-dir:<folder>', "
        f"pretrained=True); or use pretrained=False for random weights")
