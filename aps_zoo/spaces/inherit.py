"""An APS supernet that starts from a trained parent, and the child that inherits its weights (issue 17).

The parent's widths become the meta widths, its conv weights the meta weights and its classifier the
supernet's, so at overlap 1 every candidate starts as the parent's leading channels (after the optional
importance reordering of ``parents.reorder_by_importance``). BatchNorm stays per candidate pair as in every
supernet, but gains a per-pair affine (:class:`APSAffineBatchNorm2d`): each pair starts from the parent's
BN projected by that pair's output projection (``P^T gamma``, ``P^T beta``, ``P^T mean``, ``(P*P)^T var``),
which at init is the parent's BN of those channels. Parent identity shortcuts start as identity kernels.

The searched child inherits ``P^T W Q`` of every conv, ``W Q`` of the classifier and the BN of its pairs
(:func:`inherited_state_dict`); ``aps_zoo.inherited`` writes it as a run folder for ``aps-zoo export`` and
``aps-zoo train --init inherited``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..aps.layers import APSBatchNorm2d, pair_key
from ..aps.projection import required_meta_width
from ..channels import ChannelConfig
from .parents import BN_EPS, BN_TENSORS, InheritError, Parent, conv_layers, layer_channels, layer_kind, load_parent
from .space import SearchSpace
from .supernet import APSSupernet


class APSAffineBatchNorm2d(APSBatchNorm2d):
    """Per-candidate-pair BatchNorm with a per-pair affine (weight, bias), for supernets inherited from a parent."""

    def __init__(self, pairs, momentum: float = 0.1):
        super().__init__(pairs, momentum)
        self.weights = nn.ParameterDict({k: nn.Parameter(torch.ones(n.num_features)) for k, n in self.norms.items()})
        self.biases = nn.ParameterDict({k: nn.Parameter(torch.zeros(n.num_features)) for k, n in self.norms.items()})

    def forward(self, x: torch.Tensor, c_in: int) -> torch.Tensor:
        """Normalise with pair (c_in, x.shape[1])'s statistics and affine parameters."""
        key = pair_key(c_in, x.shape[1])
        bn = self.norms[key]
        return F.batch_norm(x, bn.running_mean, bn.running_var, self.weights[key], self.biases[key],
                            self.training or not self.use_running_stats, self.momentum if self.training else 0.0,
                            bn.eps)

    def pair_tensors(self, key: str) -> Dict[str, torch.Tensor]:
        """weight, bias, running_mean, running_var of one pair."""
        bn = self.norms[key]
        return {'weight': self.weights[key], 'bias': self.biases[key], 'running_mean': bn.running_mean,
                'running_var': bn.running_var}


def inherit_space(space: SearchSpace, parent: Parent) -> SearchSpace:
    """``space`` with the parent's widths as meta widths; raises naming the first layer whose candidates do not
    fit the parent's width at the space's overlap, or a parent of another network."""
    if (parent.family, parent.depth) != (space.family, space.depth):
        raise InheritError(f"space.init_from {parent.source}: the parent is a {parent.family}{parent.depth or ''}, "
                           f"the space a {space.family}{space.depth or ''}")
    if parent.in_chans != space.input_size[0]:
        raise InheritError(f"space.init_from {parent.source}: the parent takes {parent.in_chans} input channels, "
                           f"the data has {space.input_size[0]}")
    names = {layer.out_entry: layer.name for layer in space.layout.entry_layers()}
    for e, (cands, width) in enumerate(zip(space.candidates, parent.widths)):
        need = required_meta_width(cands, space.overlap)
        if need > width:
            raise InheritError(f"space.init_from {parent.source}: layer {names[e]} (entry {e}) is {width} wide in "
                               f"the parent; its candidates {list(cands)} need {need} at overlap {space.overlap}: "
                               f"lower space.candidates or space.stage_multipliers")
    return dataclasses.replace(space, meta_widths=tuple(parent.widths))


def _pair_bn(bn: APSAffineBatchNorm2d, conv, stats: Dict[str, torch.Tensor]) -> None:
    """Every pair's BN from the parent's meta-width BN through the pair's output projection."""
    for (c_in, c_out) in conv.pairs:
        key = pair_key(c_in, c_out)
        p = conv.out_proj[key].detach()
        target = bn.pair_tensors(key)
        target['weight'].copy_(p.t() @ stats['weight'])
        target['bias'].copy_(p.t() @ stats['bias'])
        target['running_mean'].copy_(p.t() @ stats['running_mean'])
        target['running_var'].copy_((p * p).t() @ stats['running_var'])


def _identity_stats(width: int) -> Dict[str, torch.Tensor]:
    """BN tensors that leave a channel unchanged at evaluation (running var 1 - eps: exactly 1 / sqrt(1))."""
    return {'weight': torch.ones(width), 'bias': torch.zeros(width), 'running_mean': torch.zeros(width),
            'running_var': torch.full((width,), 1.0 - BN_EPS)}


@torch.no_grad()
def load_parent_into(supernet: APSSupernet, parent: Parent) -> None:
    """Copy the parent into ``supernet`` (built on ``inherit_space``): meta weights, per-pair affine BN,
    identity kernels for the parent's identity shortcuts, and the classifier when the classes agree."""
    layout, state = supernet.space.layout, parent.state
    for layer in conv_layers(layout):
        module = supernet.get_submodule(layer.module)
        conv = getattr(module, 'conv', module)  # a squeeze-excitation conv is its own module
        kind = layer_kind(layout, layer, parent.widths, parent.in_chans)
        meta = conv.weight
        if kind is None:  # identity in the parent (equal meta widths): an identity kernel
            weight, stats = torch.eye(meta.shape[0], meta.shape[1])[:, :, None, None], _identity_stats(meta.shape[0])
        else:
            weight = state[f'{layer.conv_key}.weight']
            stats = {t: state[f'{layer.name}.bn.{t}'] for t in BN_TENSORS} if kind == 'conv_bn' else None
        if tuple(weight.shape) != tuple(meta.shape):
            raise InheritError(f"space.init_from {parent.source}: layer {layer.name} has shape {list(weight.shape)}, "
                               f"the supernet's meta weight {list(meta.shape)}")
        meta.copy_(weight)
        if kind == 'conv_bias':
            conv.bias.copy_(state[f'{layer.conv_key}.bias'])
        if getattr(module, 'bn', None) is not None:
            module.bn = APSAffineBatchNorm2d(module.conv.pairs, module.bn.momentum).to(meta.device)
            _pair_bn(module.bn, module.conv, stats)
    if supernet.fc.weight.shape == state['fc.weight'].shape:
        supernet.fc.weight.copy_(state['fc.weight'])
        supernet.fc.bias.copy_(state['fc.bias'])
    else:
        parent.notes.append(f"classifier re-initialised: the parent has {parent.num_classes} classes, the data "
                            f"{supernet.fc.weight.shape[0]}")


def supernet_for(space: SearchSpace, init_from: Optional[str], importance: str = 'none'
                 ) -> Tuple[SearchSpace, APSSupernet, Optional[Parent]]:
    """The space, its supernet and the parent (None without ``init_from``): with a parent, the space takes its
    widths as meta widths and the supernet its weights."""
    if not init_from:
        return space, APSSupernet(space), None
    parent = load_parent(init_from, space.family, space.depth, importance)
    space = inherit_space(space, parent)
    supernet = APSSupernet(space)
    load_parent_into(supernet, parent)
    return space, supernet, parent


def _bn_tensors(bn, key: str, width: int) -> Dict[str, torch.Tensor]:
    if isinstance(bn, APSAffineBatchNorm2d):
        return bn.pair_tensors(key)
    norm = bn.norms[key]  # a plain supernet BN: no affine
    return {'weight': torch.ones(width), 'bias': torch.zeros(width), 'running_mean': norm.running_mean,
            'running_var': norm.running_var}


@torch.no_grad()
def inherited_state_dict(supernet: APSSupernet, config: ChannelConfig) -> Dict[str, torch.Tensor]:
    """The weights of the aps-zoo model of ``config`` (an architecture of the supernet's space): ``P^T W Q`` of
    every conv, each pair's BN, and ``W Q`` of the classifier (keys without ``num_batches_tracked``)."""
    layout, widths, in_chans = config.layout, config.widths, config.in_chans
    out: Dict[str, torch.Tensor] = {}
    for layer in conv_layers(layout):
        kind = layer_kind(layout, layer, widths, in_chans)
        if kind is None:
            continue
        module = supernet.get_submodule(layer.module)
        conv = getattr(module, 'conv', module)
        c_in, c_out = layer_channels(layer, widths, in_chans)
        out[f'{layer.conv_key}.weight'] = conv.candidate_weight(c_in, c_out)
        if kind == 'conv_bias':
            out[f'{layer.conv_key}.bias'] = conv.candidate_bias(c_in, c_out)
        if kind == 'conv_bn':
            bn = _bn_tensors(module.bn, pair_key(c_in, c_out), c_out)  # the stem's c_in is its fixed meta_in
            out.update({f'{layer.name}.bn.{t}': v for t, v in bn.items()})
    feature = widths[layout.feature_entry]
    q = supernet.fc.in_proj[pair_key(feature, supernet.fc.weight.shape[0])]
    out.update({'fc.weight': supernet.fc.weight @ q, 'fc.bias': supernet.fc.bias})
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}
