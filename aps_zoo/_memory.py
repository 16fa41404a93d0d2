"""Memory estimates checked before anything large is allocated: a search's supernet, an exported model.

The estimates are analytic: parameters are counted on PyTorch's ``meta`` device (shapes only, no
storage) or from the ChannelConfig's layer table, activations from the layer table of the widest
subnet. They are compared with the memory free on the device the work runs on, so a recipe or a
folder that cannot fit ends in one line naming the estimate and the limit instead of a failed
allocation (or the machine swapping) minutes later.
"""
from __future__ import annotations

from typing import Optional, Tuple

import psutil
import torch

from ._io import human_bytes
from .channels import ChannelConfig
from .flops import count_params, layer_table

FP32_BYTES = 4
TRAIN_COPIES = 3      # a trained parameter: value, gradient, SGD momentum
SAVED_PER_CONV = 3    # tensors autograd keeps per conv layer: conv output, BN output, activation
LOAD_COPIES = 2       # loading weights: the model's parameters plus the state dict read from the file


class MemoryEstimateError(ValueError):
    """Work whose estimated memory exceeds what the machine has free."""


def available_bytes(device=None) -> int:
    """Memory free now on ``device`` (a CUDA device's free memory, else the host's available RAM)."""
    if device is not None and torch.device(device).type == 'cuda':
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return psutil.virtual_memory().available


def check_fits(estimate: int, what: str, available: int, fix: str) -> None:
    """Raise MemoryEstimateError when ``estimate`` bytes exceed ``available``; the message gives both."""
    if estimate > available:
        raise MemoryEstimateError(f"{what} needs an estimated {human_bytes(estimate)} but {human_bytes(available)} "
                                  f"is free; {fix}")


def activation_elements(config: ChannelConfig, batch_size: int) -> int:
    """Elements of the layer outputs a training step of ``config`` keeps for backward (analytic)."""
    per_image = sum(layer.c_out * layer.out_hw[0] * layer.out_hw[1] for layer in layer_table(config))
    return per_image * batch_size * SAVED_PER_CONV


def supernet_estimate(space, batch_size: int) -> Tuple[int, int]:
    """(parameter bytes, activation bytes) of training the APS supernet of ``space`` at ``batch_size``.

    Parameters (meta weights, projections, per-candidate BN) are counted on the meta device, each with
    its gradient and momentum (a penalised step gives every projection a gradient); activations are
    those of the space's widest subnet.
    """
    from .spaces.supernet import APSSupernet
    with torch.device('meta'):
        supernet = APSSupernet(space)
    params = sum(p.numel() for p in supernet.parameters()) * TRAIN_COPIES
    widest = space.config(space.largest())
    return params * FP32_BYTES, activation_elements(widest, batch_size) * FP32_BYTES


def check_supernet_memory(space, batch_size: int, device=None, available: Optional[int] = None) -> None:
    """Refuse a search whose supernet would not fit the free memory of ``device``."""
    params, acts = supernet_estimate(space, batch_size)
    check_fits(params + acts, f"the {space.family}{space.depth or ''} supernet (meta widths up to "
                              f"{max(space.meta_widths)}: {human_bytes(params)} of parameters with momentum, "
                              f"{human_bytes(acts)} of activations at batch {batch_size})",
               available_bytes(device) if available is None else available,
               'narrow space.candidates, use space.meta_width: max, or lower data.batch_size')


def check_model_memory(config: ChannelConfig, where: str, *, batch_size: int = 0, device=None,
                       available: Optional[int] = None) -> None:
    """Refuse to build the network ``config`` describes when it would not fit: loaded with its weights file
    (``batch_size`` 0), or trained at ``batch_size`` (value, gradient, momentum and activations)."""
    params = count_params(config)
    copies = TRAIN_COPIES if batch_size else LOAD_COPIES
    estimate = (params * copies + activation_elements(config, batch_size)) * FP32_BYTES
    what = f"trained at batch {batch_size}" if batch_size else "loaded with its weights file"
    check_fits(estimate, f"{where}: the {config.name} network ({params:,} parameters, {what})",
               available_bytes(device) if available is None else available,
               'narrow the widths' + (' or lower the batch size' if batch_size else ''))
