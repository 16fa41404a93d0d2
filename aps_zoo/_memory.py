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

from .channels import ChannelConfig
from .flops import count_params, layer_table

GIB = 2 ** 30
FP32_BYTES = 4
TRAIN_COPIES = 2      # every supernet parameter: its value and its SGD momentum buffer (gradients: see below)
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
        raise MemoryEstimateError(f"{what} needs an estimated {estimate / GIB:.2f} GiB but {available / GIB:.2f} GiB "
                                  f"is free; {fix}")


def activation_elements(config: ChannelConfig, batch_size: int) -> int:
    """Elements of the layer outputs a training step of ``config`` keeps for backward (analytic)."""
    per_image = sum(layer.c_out * layer.out_hw[0] * layer.out_hw[1] for layer in layer_table(config))
    return per_image * batch_size * SAVED_PER_CONV


def supernet_estimate(space, batch_size: int) -> Tuple[int, int]:
    """(parameter bytes, activation bytes) of training the APS supernet of ``space`` at ``batch_size``.

    Parameters (meta weights, projections, per-candidate BN) are counted on the meta device: each
    with its momentum, plus a gradient for the meta weights (a step's projection gradients are those
    of one candidate pair per layer, left out); activations are those of the space's widest subnet.
    For the ResNet-50 space at batch 8 (docs/benchmarks.md: 12.03 GiB peak RSS measured) this gives
    11.2 GiB.
    """
    from .spaces.supernet import APSSupernet
    with torch.device('meta'):
        supernet = APSSupernet(space)
    params = sum(p.numel() for p in supernet.parameters()) * TRAIN_COPIES
    params += sum(p.numel() for p in supernet.meta_parameters())
    widest = space.config(space.largest())
    return params * FP32_BYTES, activation_elements(widest, batch_size) * FP32_BYTES


def check_supernet_memory(space, batch_size: int, device=None, available: Optional[int] = None) -> None:
    """Refuse a search whose supernet would not fit the free memory of ``device``."""
    params, acts = supernet_estimate(space, batch_size)
    check_fits(params + acts, f"the {space.family}{space.depth or ''} supernet (meta widths up to "
                              f"{max(space.meta_widths)}, {params / GIB:.2f} GiB of parameters with gradients and "
                              f"momentum, {acts / GIB:.2f} GiB of activations at batch {batch_size})",
               available_bytes(device) if available is None else available,
               'narrow space.candidates, use space.meta_width: max, or lower data.batch_size')


def check_model_memory(config: ChannelConfig, where: str, available: Optional[int] = None) -> None:
    """Refuse to build and load the network ``config`` describes when its weights would not fit in RAM."""
    estimate = count_params(config) * FP32_BYTES * LOAD_COPIES
    check_fits(estimate, f"{where}: the {config.name} network ({count_params(config):,} parameters, loaded "
                         f"with its weights file)", available_bytes() if available is None else available,
               'this machine cannot load it')
