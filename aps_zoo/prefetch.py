"""Batches on the device, the way timm's loader makes them: uint8 through the workers, normalised on the device.

The DataLoaders of :func:`aps_zoo.data.build_loaders` collate uint8 images (timm's ``fast_collate``) and, used
on their own, normalise them on the CPU. :func:`device_loaders` turns them into the loaders of a run:
Accelerate shards them (a training stream is split by node and rank instead, so no rank decodes for the
others), and timm's ``PrefetchLoader`` copies each batch from pinned memory (``non_blocking``) and normalises
it on the device: on CUDA on a side stream, one batch ahead of the step; on CPU in place. From then on the
random state of each process is its own (``set_seed(seed, device_specific=True)``), so ranks draw different
augmentations (in the main process and through the DataLoader workers' seeds) while the networks, built
before, are identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import set_seed
from datasets.distributed import split_dataset_by_node
from timm.data.loader import PrefetchLoader, fast_collate
from torch.utils.data import DataLoader


def collate_uint8(items: List[Dict[str, Any]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, int64 labels) of a batch, through timm's ``fast_collate``."""
    return fast_collate([(img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img, np.uint8)),
                          int(label)) for img, label in ((i['pixel_values'], i['label']) for i in items)])


def normalize(images: torch.Tensor, mean: Tuple[float, ...], std: Tuple[float, ...]) -> torch.Tensor:
    """uint8 images (0..255) as float32 normalised by ``mean``/``std`` (given on the 0..1 scale, as timm's)."""
    like = dict(dtype=torch.float32, device=images.device)
    return (images.float() - torch.tensor(mean, **like).view(1, -1, 1, 1) * 255) / (
        torch.tensor(std, **like).view(1, -1, 1, 1) * 255)


@dataclass
class NormalizedCollate:
    """The collate of a loader used on its own: a uint8 batch, normalised on the CPU."""
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __call__(self, items: List[Dict[str, Any]]) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = collate_uint8(items)
        return normalize(images, self.mean, self.std), labels


class _Source:
    """The prepared loader a PrefetchLoader reads, noting when it ran out."""

    def __init__(self, shard):
        self.shard, self.exhausted = shard, False

    def __iter__(self):
        self.exhausted = False
        yield from self.shard
        self.exhausted = True

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def sampler(self):  # read by PrefetchLoader.sampler
        return self.shard.sampler

    @property
    def batch_sampler(self):
        return self.shard.batch_sampler

    @property
    def dataset(self):
        return self.shard.dataset


class DeviceLoader(PrefetchLoader):
    """timm's PrefetchLoader over an Accelerate-prepared loader, forwarding ``set_epoch`` and ``end``.

    The prefetcher reads one batch ahead, so the prepared loader would report its last batch (Accelerate's
    ``end_of_dataloader``, which ``gather_for_metrics`` and gradient accumulation read) one batch early and
    leave Accelerate's state before the last batch is used: the flag is set for the batch handed out."""

    def __init__(self, shard, mean, std, device: torch.device):
        super().__init__(_Source(shard), mean=mean, std=std, device=device)
        self.shard, self._stats = shard, (mean, std)

    def __iter__(self):
        source, shard = self.loader, self.shard
        for batch in super().__iter__():
            if source.exhausted:  # the last batch: the prepared loader has left Accelerate's state already
                shard.begin()
                shard.end_of_dataloader = True
                yield batch
                shard.end()
            else:  # the prepared loader is one batch ahead
                shard.end_of_dataloader = False
                yield batch

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the shuffle (Accelerate forwards it to the sampler or the streamed dataset)."""
        self.shard.set_epoch(epoch)

    def end(self) -> None:
        """Leaving the loader before its end: release it from Accelerate's gradient state."""
        self.shard.end()

    def skip(self, accelerator: Accelerator, batches: int, epoch: int) -> 'DeviceLoader':
        """This loader in ``epoch`` from batch ``batches`` on (resuming inside an epoch; the skipped batches of a
        map-style dataset are not loaded)."""
        shard = accelerator.skip_first_batches(self.shard, batches)
        shard.set_epoch(epoch)
        return DeviceLoader(shard, self._stats[0], self._stats[1], self.device)

    @property
    def batch_size(self) -> Optional[int]:
        """Images per batch of this process."""
        return self.shard.batch_size


def _uint8_loader(loader: DataLoader, dataset=None) -> DataLoader:
    """``loader`` with the uint8 collate (and ``dataset`` in place of its own when given)."""
    iterable = isinstance(loader.dataset, torch.utils.data.IterableDataset)
    return DataLoader(loader.dataset if dataset is None else dataset, batch_size=loader.batch_size,
                      sampler=None if iterable else loader.sampler, drop_last=loader.drop_last,
                      num_workers=loader.num_workers, persistent_workers=loader.persistent_workers,
                      collate_fn=collate_uint8, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context)


def _prepare(accelerator: Accelerator, loader: DataLoader, train: bool):
    """The Accelerate loader of one process, batches left on the host (the prefetcher copies them)."""
    if train and isinstance(loader.dataset, datasets.IterableDataset):
        # a training stream: each rank reads its own part (and repeats it, so no rank runs out before the others
        # within an epoch of ``steps_per_epoch``); Accelerate must not shard it again
        part = split_dataset_by_node(loader.dataset, accelerator.process_index, accelerator.num_processes)
        return prepare_data_loader(_uint8_loader(loader, part.repeat(None)), num_processes=1, process_index=0,
                                   put_on_device=False, dispatch_batches=False)
    # map-style: sharded by Accelerate; an evaluation stream: read by the main process and dispatched
    return accelerator.prepare_data_loader(_uint8_loader(loader), device_placement=False)


BUNDLE = object()  # device_loaders: the bundle's own val/test loader


def device_loaders(accelerator: Accelerator, bundle, seed: int, *, val: Any = BUNDLE, test: Any = BUNDLE):
    """(train, val, test) loaders of ``bundle`` (a DataBundle) for a run on ``accelerator``: sharded, uint8 to
    the device, normalised there. ``val``/``test`` replace the bundle's (a loader, or None for none).

    Call it once the networks are built: it seeds each process's random state differently
    (``seed`` + process index), which the augmentations and the DataLoader workers' seeds draw from."""
    set_seed(seed, device_specific=True)
    loaders = [bundle.train, bundle.val if val is BUNDLE else val, bundle.test if test is BUNDLE else test]
    return tuple(None if loader is None else DeviceLoader(_prepare(accelerator, loader, train=i == 0),
                                                          bundle.mean, bundle.std, accelerator.device)
                 for i, loader in enumerate(loaders))


def steps_per_epoch(loader, cap: Optional[int], key: str) -> int:
    """Batches of one epoch: the loader's length, or ``cap`` when smaller. A stream has no length: then ``cap``
    is required, and its absence is an error naming the recipe ``key`` that sets it."""
    try:
        length = len(loader)
    except TypeError:  # an IterableDataset
        if cap is None:
            from .data import DataError
            raise DataError(f"data.streaming: true: a stream has no length, so an epoch needs a number of steps; "
                            f"set {key}") from None
        return cap
    return length if cap is None else min(length, cap)
