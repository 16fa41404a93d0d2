"""The child a search inherits from its parent: written as a run folder, loaded for fine-tuning (issue 17).

A search with ``space.init_from`` writes ``<run>/search/inherited/``: ``model.safetensors`` (the child's
``P^T W Q`` weights from the supernet, BN statistics re-estimated on a few training batches) and
``channel_config.json`` (the searched config; its provenance names the parent and its revision). That folder
is what ``aps-zoo export`` reads, and ``aps-zoo train --init inherited`` starts from its weights.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from itertools import chain
from typing import Dict, Iterable

import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.optim.swa_utils import update_bn

from ._io import write_weights
from .filenames import CHANNEL_CONFIG_FILE, INHERITED_DIR, WEIGHTS_FILE
from .channels import ChannelConfig
from .models import create_model_from_config
from .spaces.inherit import inherited_state_dict
from .spaces.parents import InheritError



def load_inherited(model: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    """Load an inherited state dict into an aps-zoo model, refusing (one line) any key or shape it lacks."""
    own = model.state_dict()
    for key, tensor in state.items():
        if key not in own or own[key].shape != tensor.shape:
            have = list(own[key].shape) if key in own else 'no such layer'
            raise InheritError(f"{where}: inherited tensor {key!r} {list(tensor.shape)} does not fit the model "
                               f"being trained ({have}); train the config the search wrote")
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    if missing:
        raise InheritError(f"{where}: no inherited weights for {missing[0]!r} ({len(missing)} missing)")
    model.load_state_dict(state, strict=False)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every BN's running statistics as the plain average over ``batches`` of (images, labels)
    (``torch.optim.swa_utils.update_bn``; weights unchanged); returns the number of batches used (0:
    statistics untouched)."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:  # update_bn would reset the statistics even without a batch
        return 0
    used = 0

    def counted():
        nonlocal used
        for batch in chain([first], batches):
            used += 1
            yield batch

    update_bn(counted(), model, device=next(model.parameters()).device)
    return used


def inherited_model(supernet, config: ChannelConfig, calibration: Iterable = ()) -> nn.Module:
    """The aps-zoo model of ``config`` with the weights it inherits from ``supernet``, BN statistics re-estimated
    on ``calibration`` batches when given (recorded in its provenance)."""
    model = create_model_from_config(config)
    load_inherited(model, inherited_state_dict(supernet, config), f'{config.name} {list(config.widths)}')
    batches = recalibrate_bn(model, calibration)
    model.channel_config = dataclasses.replace(
        config, provenance={**config.provenance, 'init': 'inherited', 'bn_recalibration_batches': batches})
    return model.eval()


def write_inherited(model: nn.Module, search_dir) -> Path:
    """Write an :func:`inherited_model` as ``<search_dir>/inherited/`` (what ``aps-zoo export`` reads)."""
    folder = Path(search_dir) / INHERITED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(model.state_dict(), folder / WEIGHTS_FILE)
    model.channel_config.save(folder / CHANNEL_CONFIG_FILE)
    return folder


def inherited_weights(search_dir, config: ChannelConfig) -> Dict[str, torch.Tensor]:
    """The inherited weights a search wrote for ``config`` (``train --init inherited``); raises in one line
    when the search had no parent or wrote another network."""
    folder = Path(search_dir) / INHERITED_DIR
    if not (folder / WEIGHTS_FILE).is_file():
        raise InheritError(f"--init inherited: no {folder / WEIGHTS_FILE}; run the search with space.init_from "
                           f"(a trained parent) first")
    searched = ChannelConfig.load(folder / CHANNEL_CONFIG_FILE)
    if (searched.family, list(searched.widths)) != (config.family, list(config.widths)):
        raise InheritError(f"--init inherited: {folder} holds the weights of {searched.name} "
                           f"{list(searched.widths)}, not of the config being trained {list(config.widths)}")
    return load_file(str(folder / WEIGHTS_FILE))
