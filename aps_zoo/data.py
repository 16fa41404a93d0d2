"""Images as torch DataLoaders through `datasets` and timm transforms.

``data.dataset`` is ``digits`` (scikit-learn's 8x8 digits, embedded: no download), a local folder
(``imagefolder`` layout, parquet files, or a ``save_to_disk`` folder), a single parquet/arrow file, or what
``datasets.load_dataset`` takes as its path (a Hugging Face Hub dataset id such as ``cifar10`` or
``ILSVRC/imagenet-1k``, which needs network or a local cache, or a builder name such as ``parquet`` with
``data.data_files``), with ``config_name``, ``revision`` and ``data_files`` passed through. Splits are names or
``datasets`` split expressions (``train[:90%]``). Every source becomes a ``datasets`` dataset, opened once per
node (the local main process first, so an imagefolder is scanned and cached once and the other ranks read
the cache); images are decoded and transformed in the DataLoader workers (persistent between epochs). The
training loader shuffles with a seeded sampler whose order depends only on (seed, epoch): call
``loader.set_epoch(epoch)`` (an Accelerate-prepared loader forwards it) so that a resumed run sees the same
batches as an uninterrupted one.

The input pipeline is timm's: transforms end in uint8 tensors, batches are collated as uint8 (timm's
``fast_collate``, a quarter of float32's bytes through the worker queues and the host-to-device copy).
:func:`aps_zoo.prefetch.device_loaders` prepares loaders for a run: Accelerate shards them, timm's
``PrefetchLoader`` copies each batch from pinned memory (``non_blocking``) and normalises it on the device,
on a side stream ahead of the step on CUDA. The loaders of a :class:`DataBundle` used on their own
normalise on the CPU.

A folder of MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST) is read by ``idx.py``;
``fashion_mnist`` names the Hub's ``zalando-datasets/fashion_mnist``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.data_loader import SeedableRandomSampler
from datasets.utils.stratify import stratified_shuffle_split_generate_indices
from PIL import Image as PILImage
from timm.data import create_transform
from torch.utils.data import DataLoader

from .idx import HUB_IDS, idx_dataset, is_idx_folder
from .prefetch import NormalizedCollate
from .recipe import DataSection

logger = logging.getLogger(__name__)

DIGITS = 'digits'
TRAIN_CROP_MODES = ('rrc', 'rkrc', 'rkrr')  # data.train_crop_mode: timm's create_transform train_crop_mode
TEST_SPLIT_SEED = 0  # a carved test split is the same for every run seed
LABEL_COLUMNS = ('label', 'labels', 'fine_label', 'target', 'class')
_UNREADABLE = (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError)
_DECODER = datasets.Image()
FILE_BUILDERS = {'.parquet': 'parquet', '.arrow': 'arrow'}  # single files, read by these datasets builders
SOURCE_KEYS = ('dataset', 'config_name', 'revision', 'data_files', 'streaming', 'image_column', 'label_column',
               'num_classes')  # the DataSection keys that decide which examples a dataset holds
_SOURCES: Dict[str, '_Source'] = {}  # datasets this process has opened, by their SOURCE_KEYS


class DataError(ValueError):
    """A dataset that cannot be found, read or split as the recipe asks."""


@dataclass
class DataBundle:
    """Loaders of one dataset and what a model trained on it must know (classes, input size, normalisation)."""
    train: DataLoader
    val: Optional[DataLoader]
    test: DataLoader
    num_classes: int
    input_size: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_pct: float
    interpolation: str
    description: str  # where the images come from, with split sizes (a sentence for reports and cards)
    sizes: Dict[str, Optional[int]]
    class_names: List[str]
    skipped: int  # unreadable image files left out

    @property
    def data_config(self) -> Dict[str, Any]:
        """The eval preprocessing in timm's ``resolve_data_config`` keys (for a model's ``pretrained_cfg``)."""
        return dict(input_size=self.input_size, interpolation=self.interpolation, mean=self.mean, std=self.std,
                    crop_pct=self.crop_pct, crop_mode='center')


def digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's digits as a ``datasets`` train split: RGB PIL images (8x8) and a 10-class label."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    features = datasets.Features({'image': datasets.Image(),
                                  'label': datasets.ClassLabel(names=[str(i) for i in range(10)])})
    images = [PILImage.fromarray(p).convert('RGB') for p in pixels]
    return datasets.DatasetDict(
        {'train': datasets.Dataset.from_dict({'image': images, 'label': digits.target.tolist()}, features=features)})


def _load_dataset(what: str, /, *args, **kwargs):
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (OSError, ValueError) as e:  # missing files, unknown id, offline Hub (ConnectionError is an OSError)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load dataset {what!r}: {reason}") from None


def _load_kwargs(data: DataSection) -> Dict[str, Any]:
    """The ``load_dataset`` arguments the recipe sets (config name, revision, data files)."""
    files = data.data_files
    if dataclasses.is_dataclass(files):
        files = {split: f for split, f in dataclasses.asdict(files).items() if f is not None}
    kwargs = dict(name=data.config_name, revision=data.revision, data_files=files)
    return {k: v for k, v in kwargs.items() if v is not None}


def _refuse_load_kwargs(data: DataSection, what: str) -> None:
    given = [f'data.{key}' for key in ('config_name', 'revision', 'data_files') if getattr(data, key) is not None]
    if given:
        raise DataError(f"{', '.join(given)} cannot be used with {what} "
                        f"({data.dataset}); drop it or point data.dataset at a folder or Hub id")


def _from_disk(path: Path, streaming: bool):
    """A folder written by ``save_to_disk`` (a Dataset becomes the train split)."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load the save_to_disk folder {path}: {e}") from None
    dd = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({'train': loaded})
    if streaming:
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dd.items()})
    return dd


def _saved_to_disk(path: Path) -> bool:
    return any((path / name).is_file() for name in (datasets.config.DATASETDICT_JSON_FILENAME,
                                                    datasets.config.DATASET_STATE_JSON_FILENAME))


def _open_source(data: DataSection):
    """(dataset dict, kind, description of where it came from). ``kind`` is 'digits', 'disk', 'idx', 'hub', or the
    ``datasets`` builder that read local files ('imagefolder', 'parquet', 'arrow', ...)."""
    if data.dataset == DIGITS:
        return digits_dataset(), DIGITS, 'scikit-learn digits'
    path = Path(data.dataset).expanduser()
    if path.is_dir() and _saved_to_disk(path):
        _refuse_load_kwargs(data, 'a save_to_disk folder')
        return _from_disk(path, data.streaming), 'disk', f'save_to_disk folder {path}'
    if path.is_dir() and is_idx_folder(path):
        _refuse_load_kwargs(data, 'an IDX folder')
        return idx_dataset(path, data.streaming), 'idx', f'IDX folder {path}'
    if path.is_file():
        if path.suffix not in FILE_BUILDERS:
            raise DataError(f"data.dataset {data.dataset!r} is a file but not {' or '.join(FILE_BUILDERS)}; give "
                            f"a folder (imagefolder, parquet files, save_to_disk) or use data.data_files")
        _refuse_load_kwargs(data, 'a single file')
        builder = FILE_BUILDERS[path.suffix]
        dd = _load_dataset(data.dataset, builder, data_files=str(path), streaming=data.streaming)
        return dd, builder, f'{builder} file {path}'
    if not path.is_dir() and (path.exists() or data.dataset.startswith(('.', '/', '~'))):
        raise DataError(f"data.dataset {data.dataset!r} does not exist; give 'digits', a folder (imagefolder, "
                        f"parquet files, save_to_disk), a parquet/arrow file, or a Hugging Face Hub dataset id")
    kwargs = _load_kwargs(data)
    hub_id = data.dataset if path.is_dir() else HUB_IDS.get(data.dataset, data.dataset)
    dd = _load_dataset(data.dataset, hub_id, streaming=data.streaming, **kwargs)
    builder = next(iter(dd.values())).info.builder_name
    if path.is_dir() or builder == data.dataset:  # local files read by a builder datasets picked or was named
        return dd, builder, f"{builder} {path if path.is_dir() else kwargs.get('data_files')}"
    details = ''.join(f', {k} {v}' for k, v in kwargs.items() if k != 'data_files')
    return dd, 'hub', f'{hub_id} (Hugging Face Hub{details})'


@dataclass
class _Source:
    """A dataset opened, its columns found, labels made a ClassLabel and unreadable images dropped."""
    splits: Any  # DatasetDict or IterableDatasetDict
    kind: str
    description: str
    image: str
    label: str
    skipped: int

    @property
    def streaming(self) -> bool:
        """Whether the splits are streamed (IterableDataset)."""
        return isinstance(self.splits, datasets.IterableDatasetDict)


def _resolve(data: DataSection) -> _Source:
    """The dataset of ``data``, prepared once per process (a search and the training after it share it, so an
    imagefolder is listed and checked once per run), by the node's main process first (the others then read
    what it cached)."""
    key = json.dumps({k: getattr(data, k) for k in SOURCE_KEYS}, default=dataclasses.asdict, sort_keys=True)
    if key not in _SOURCES:
        with PartialState().local_main_process_first():
            _SOURCES[key] = _prepare(data)
    return _SOURCES[key]


def _prepare(data: DataSection) -> _Source:
    dd, kind, description = _open_source(data)
    streaming = isinstance(dd, datasets.IterableDatasetDict)
    features = next(iter(dd.values())).features
    if kind == 'imagefolder' and features is not None and not data.label_column and 'label' not in features:
        raise DataError(f"{description} has no labels: an imagefolder needs one sub-folder per class and at least "
                        f"two classes (datasets drops the label of a single class folder)")
    image, label = _columns(features, data)
    dd = _class_labels(dd, label, data, description, streaming)
    if streaming or not isinstance(features[image], datasets.Image):
        dd = dd.cast_column(image, datasets.Image(decode=not streaming))  # streams decode in the loader
    skipped = 0
    if kind == 'imagefolder' and not streaming:
        num_proc = data.num_workers if data.num_workers > 1 else None
        checked = {k: _drop_unreadable(ds, image, f'{description} ({k} split)', num_proc) for k, ds in dd.items()}
        dd = datasets.DatasetDict({k: ds for k, (ds, _) in checked.items()})
        skipped = sum(n for _, n in checked.values())
    return _Source(dd, kind, description, image, label, skipped)


def _class_labels(dd, label: str, data: DataSection, description: str, streaming: bool):
    """``dd`` with ``label`` a ClassLabel of at least two classes (``data.num_classes`` when given)."""
    if not isinstance(next(iter(dd.values())).features[label], datasets.ClassLabel):
        if streaming and data.num_classes is None:
            raise DataError(f"label column {label!r} of {description} is not a ClassLabel; set data.num_classes "
                            f"(labels 0..num_classes-1) to stream it")
        dd = (dd.cast_column(label, datasets.ClassLabel(num_classes=data.num_classes)) if streaming
              else _encode_labels(dd, label, data.num_classes))
    feature = next(iter(dd.values())).features[label]
    if data.num_classes is not None and feature.num_classes != data.num_classes:
        raise DataError(f"data.num_classes is {data.num_classes} but {description} has {feature.num_classes} "
                        f"classes in column {label!r}")
    if feature.num_classes < 2:
        raise DataError(f"{description} has {feature.num_classes} class ({', '.join(feature.names)}); a classifier "
                        f"needs at least two (an imagefolder needs one sub-folder per class)")
    return dd


def _columns(features, data: DataSection) -> Tuple[str, str]:
    if features is None:
        raise DataError("the dataset declares no features; set data.image_column and data.label_column")
    names = list(features)
    image = data.image_column or next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label = data.label_column or next((k for k in LABEL_COLUMNS if k in features), None) or next(
        (k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    for key, col in (('image', image), ('label', label)):
        if col is None:
            raise DataError(f"no {key} column found among {names}; set data.{key}_column")
        if col not in features:
            raise DataError(f"data.{key}_column {col!r} is not a column; columns: {names}")
    return image, label


def _encode_labels(dd: datasets.DatasetDict, label: str, num_classes: Optional[int]) -> datasets.DatasetDict:
    """Make ``label`` a ClassLabel: integers keep their value (classes 0..max, or 0..num_classes-1 when that is
    more), other values are sorted."""
    if dd[next(iter(dd))].features[label].dtype.startswith(('int', 'uint')):
        top = max(max(ds.unique(label)) for ds in dd.values())  # not max(ds[label]): that reads row by row
        count = num_classes if num_classes and num_classes > top else top + 1
        return dd.cast_column(label, datasets.ClassLabel(names=[str(i) for i in range(count)]))
    return dd.class_encode_column(label)


def _readable(image: Dict[str, Any]) -> Dict[str, bool]:
    """Whether an undecoded image (path or bytes) decodes; JPEGs decode at reduced size (draft) to be quick."""
    try:
        with PILImage.open(io.BytesIO(image['bytes']) if image['bytes'] else image['path']) as im:
            im.draft('RGB', (32, 32))
            im.load()
        return {'_readable': True}
    except _UNREADABLE:
        return {'_readable': False}


def _drop_unreadable(ds: datasets.Dataset, column: str, where: str, num_proc: Optional[int]):
    """``ds`` without the rows whose image does not decode, and how many were dropped (logged)."""
    raw = ds.cast_column(column, datasets.Image(decode=False))
    flagged = raw.map(_readable, input_columns=column, num_proc=num_proc, desc=f'checking images ({where})')
    bad = flagged.filter(lambda ok: not ok, input_columns='_readable')
    if len(bad) == 0:
        return ds, 0
    names = [img['path'] or '<bytes>' for img in bad[:3][column]]
    logger.warning("skipped %d unreadable image file(s) in %s, e.g. %s", len(bad), where, ', '.join(names))
    good = flagged.filter(lambda ok: ok, input_columns='_readable').remove_columns('_readable')
    return good.cast_column(column, ds.features[column]), len(bad)


def _num_examples(ds, split: str) -> Optional[int]:
    splits = ds.info.splits
    return (splits[split].num_examples or None) if splits and split in splits else None


def _split(ds: datasets.Dataset, fraction: float, seed: int, label: str, what: str):
    """(rest, carved): ``fraction`` of ``ds`` carved off, seeded, stratified by a class-label column; the same
    images as ``ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column=label)``."""
    try:
        if not isinstance(ds.features[label], datasets.ClassLabel):
            parts = ds.train_test_split(test_size=fraction, seed=seed)
            return parts['train'], parts['test']
        return _stratified_split(ds, fraction, seed, label)
    except ValueError as e:
        raise DataError(f"cannot carve the {what} split ({fraction:.0%} of {len(ds)} images): {e}") from None


def _stratified_split(ds: datasets.Dataset, fraction: float, seed: int, label: str):
    """``train_test_split``'s stratified split (its sizes, generator and index draw) with the labels read as one
    array: datasets >= 4 hands ``train_test_split`` the column row by row, seconds for 60,000 images."""
    n_test = math.ceil(fraction * len(ds))
    labels = ds.select_columns([label]).with_format('numpy')[:][label]
    try:
        train_idx, test_idx = next(stratified_shuffle_split_generate_indices(
            labels, len(ds) - n_test, n_test, rng=np.random.default_rng(seed)))
    except ValueError as e:
        if str(e) == 'Minimum class count error':  # datasets' own message for it
            raise ValueError(f"a class of column {label!r} has 1 image; a stratified split needs 2") from None
        raise
    return ds.select(train_idx), ds.select(test_idx)


def _rgb(img: PILImage.Image) -> PILImage.Image:
    """``img`` as 8-bit RGB. Integer greyscale (16-bit PNGs open as 'I;16' or 'I') is scaled from 0..65535 to
    0..255; PIL's own ``convert`` would clip it (an all-white image)."""
    if img.mode.startswith('I'):
        values = np.asarray(img, dtype=np.float64) * (255 / 65535)
        img = PILImage.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return img.convert('RGB')


def _apply(batch: Dict[str, list], transform, image: str, label: str) -> Dict[str, list]:
    return {'pixel_values': [transform(_rgb(img)) for img in batch[image]], 'label': batch[label]}


def _apply_stream(batch: Dict[str, list], transform, image: str, label: str) -> Dict[str, list]:
    """Streaming variant: decode here and drop (with a warning) images that do not decode."""
    out = {'pixel_values': [], 'label': []}
    for img, lab in zip(batch[image], batch[label]):
        try:
            pixels = transform(_rgb(_DECODER.decode_example(img)))
        except _UNREADABLE as e:
            logger.warning("skipped unreadable image %s: %s", img['path'] or '<bytes>', e)
            continue
        out['pixel_values'].append(pixels)
        out['label'].append(lab)
    return out


def _transforms(data: DataSection, interpolation: str):
    """(train, eval) timm transforms ending in uint8 tensors (normalisation comes after the collate)."""
    size = (3, data.image_size, data.image_size)
    common = dict(interpolation=interpolation, use_prefetcher=True)
    eval_tf = create_transform(size, is_training=False, crop_pct=data.crop_pct, **common)
    if not data.augment:
        return eval_tf, eval_tf
    train_tf = create_transform(size, is_training=True, train_crop_mode=data.train_crop_mode,
                                scale=tuple(data.crop_scale), hflip=data.hflip, color_jitter=data.color_jitter,
                                **common)
    return train_tf, eval_tf


def _with_transform(ds, transform, image: str, label: str, batch_size: int):
    if isinstance(ds, datasets.IterableDataset):
        return ds.map(partial(_apply_stream, transform=transform, image=image, label=label), batched=True,
                      batch_size=batch_size, remove_columns=list(ds.features))
    return ds.with_transform(partial(_apply, transform=transform, image=image, label=label))


def _select(src: _Source, expr: str):
    """The split ``expr`` names or describes ('train', 'train[:90%]', 'train[:50]+test'; datasets' split
    syntax), or None when it names a split the dataset lacks."""
    if expr in src.splits:
        return src.splits[expr]
    try:
        instruction = datasets.ReadInstruction.from_spec(expr)
    except ValueError as e:
        raise DataError(f"split {expr!r}: {e}") from None
    lengths = {k: 0 if src.streaming else len(ds) for k, ds in src.splits.items()}
    try:
        parts = instruction.to_absolute(lengths)
    except ValueError:  # an unknown split name
        return None
    if src.streaming:
        raise DataError(f"split {expr!r}: split expressions need streaming: false (a stream has no length)")
    pieces = [src.splits[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)


def _train_and_test(src: _Source, data: DataSection):
    """(train, test, note): the recipe's splits, or a test split carved from a dataset's only split."""
    train = _select(src, data.train_split)
    if train is None:
        raise DataError(f"split {data.train_split!r} not found in {src.description}; splits: {list(src.splits)} "
                        f"(set data.train_split)")
    test = _select(src, data.test_split)
    if test is not None:
        return train, test, ''
    if len(src.splits) > 1 or src.streaming:
        raise DataError(f"split {data.test_split!r} not found in {src.description}; splits: {list(src.splits)} "
                        f"(set data.test_split)")
    train, test = _split(train, data.test_fraction, TEST_SPLIT_SEED, src.label, 'test')
    return train, test, (f"test: {len(test)} images carved from the {data.train_split} split "
                         f"({data.test_fraction:.0%}, seed {TEST_SPLIT_SEED})")


def _holdout(src: _Source, data: DataSection, train, test, seed: int, holdout: bool):
    """(train, val, sizes) of a map-style dataset: val carved (seeded, stratified), train capped."""
    val = None
    if holdout:
        train, val = _split(train, data.val_fraction, seed, src.label, 'validation')
    if data.max_train_samples and data.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(data.max_train_samples))
    if len(train) < data.batch_size:
        raise DataError(f"the training split has {len(train)} images, fewer than one batch "
                        f"(batch_size {data.batch_size})")
    return train, val, {'train': len(train), 'val': len(val) if val is not None else None, 'test': len(test)}


def _stream_holdout(src: _Source, data: DataSection, train, test, seed: int, holdout: bool):
    """(train, val, sizes) of a stream: val is its first ``data.val_size`` examples (else ``data.val_fraction``
    of the split's size, when the dataset declares it), train the rest, shuffled."""
    total = _num_examples(train, data.train_split)
    n_val = 0
    if holdout:
        n_val = data.val_size or (round(data.val_fraction * total) if total else 0)
    if holdout and not n_val:
        raise DataError(f"streaming {src.description}: the size of the {data.train_split} split is unknown, so "
                        f"data.val_fraction cannot be carved; set data.val_size (images taken from the head of "
                        f"the stream as the held-out split)")
    val = None
    if n_val:
        val, train = train.take(n_val), train.skip(n_val)
    train_size = total - n_val if total else None
    if data.max_train_samples:
        train = train.take(data.max_train_samples)
        train_size = min(train_size or data.max_train_samples, data.max_train_samples)
    sizes = {'train': train_size, 'val': n_val or None, 'test': _num_examples(test, data.test_split)}
    return train.shuffle(seed=seed, buffer_size=10_000), val, sizes


def worker_ignores_sigterm(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: a DataLoader worker ignores a SIGTERM from anyone but its parent and ends
    on its parent's. A scheduler (SLURM) or `timeout` signals the whole process group; a worker ended by it would
    crash the main process before it writes its preemption checkpoint. The main process stops a worker by SIGTERM
    (``Process.terminate``) when it does not end when asked (torch) and at exit: multiprocessing's exit handler
    terminates daemonic children and joins them without a timeout, so a worker that ignored it would hang the
    exit (as when an uncaught Preempted keeps the loaders alive).

    The worker is born with SIGTERM blocked (:class:`WorkerContext`) and keeps it blocked in every thread (a
    thread inherits its creator's mask), so the signal stays pending until :func:`_end_on_parents_sigterm` takes
    it with sigwaitinfo, which names the sender; one that came while the worker started is taken first."""
    threading.Thread(target=_end_on_parents_sigterm, name='sigterm', daemon=True).start()


def _end_on_parents_sigterm() -> None:
    """Take SIGTERMs until one comes from the worker's parent (``parent_process``: the process that started it, also
    when a fork server forked it), then end the worker with exit code 0: torch's SIGCHLD handler in the parent
    raises for a worker that ends otherwise (a signal or another exit code), also inside the exit handler."""
    parent = multiprocessing.parent_process().pid
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


class _WorkerProcess(multiprocessing.Process):
    """A process of the start method in effect, started with SIGTERM blocked in the starting thread. (Starting
    multiprocessing's resource tracker unblocks it; a DataLoader makes its queues, which start the tracker under
    spawn and forkserver, before its workers.)"""

    @staticmethod
    def _Popen(process_obj):
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return multiprocessing.Process._Popen(process_obj)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class WorkerContext(multiprocessing.context.BaseContext):
    """The ``multiprocessing_context`` of every loader: the start method in effect, its workers born with SIGTERM
    blocked (and kept so by :func:`worker_ignores_sigterm`), so that a group SIGTERM that comes while a worker
    starts does not end it. A signal mask survives fork and exec: a worker forked or spawned by the main process gets
    the starting thread's mask, one forked by a fork server the server's, which the server got from the thread
    that started it (the first worker's start, unless the process had started the fork server before). The
    main process does not lose the signal: another of its threads takes it, or it comes when the start ends."""
    Process = _WorkerProcess

    def get_context(self, method=None):
        return multiprocessing.get_context(method)


def _loaders(src: _Source, data: DataSection, seed: int, train, val, test, interpolation: str):
    """(train, val or None, test) DataLoaders; the training order depends only on (seed, epoch)."""
    train_tf, eval_tf = _transforms(data, interpolation)
    workers = data.num_workers > 0
    loader = partial(DataLoader, num_workers=data.num_workers, persistent_workers=workers,
                     worker_init_fn=worker_ignores_sigterm,
                     multiprocessing_context=WorkerContext() if workers else None,
                     collate_fn=NormalizedCollate(tuple(data.mean), tuple(data.std)),
                     pin_memory=torch.cuda.is_available())
    train_ds = _with_transform(train, train_tf, src.image, src.label, data.batch_size)
    sampler = None if src.streaming else SeedableRandomSampler(train_ds, data_seed=seed)

    def eval_loader(ds):
        return loader(_with_transform(ds, eval_tf, src.image, src.label, data.eval_batch_size),
                      batch_size=data.eval_batch_size, shuffle=False)

    return (loader(train_ds, batch_size=data.batch_size, sampler=sampler, drop_last=True),
            eval_loader(val) if val is not None else None, eval_loader(test))


def build_loaders(data: DataSection, seed: int, holdout: bool, interpolation: str = 'bilinear') -> DataBundle:
    """Train / val / test DataLoaders of ``data.dataset`` with timm transforms resizing with ``interpolation``
    (the family's, :func:`aps_zoo.families.interpolation`, for a model of that family).

    ``holdout``: carve ``data.val_fraction`` of the training split (seeded, stratified) as ``val``;
    otherwise ``val`` is None and ``train`` is the whole training split. A dataset without
    ``data.test_split`` (and no other split than the training one) gets a test split of
    ``data.test_fraction`` carved with a fixed seed, noted in ``description``. Splits are names or
    ``datasets`` split expressions (``train[:90%]``); the dataset is opened once per process.
    """
    src = _resolve(data)
    train, test, note = _train_and_test(src, data)
    train, val, sizes = (_stream_holdout if src.streaming else _holdout)(src, data, train, test, seed, holdout)
    label_feature = train.features[src.label]
    train_loader, val_loader, test_loader = _loaders(src, data, seed, train, val, test, interpolation)
    if src.kind == DIGITS:
        name = f"scikit-learn digits (1797 8x8 images{_resized(8, data.image_size)}"
    else:
        counts = ', '.join(f'{k} {v}' for k, v in sizes.items() if v is not None)
        name = f"{src.description} ({label_feature.num_classes} classes; {counts} images"
    name += f"; {note})" if note else ')'
    return DataBundle(
        train=train_loader, val=val_loader, test=test_loader, num_classes=label_feature.num_classes,
        input_size=(3, data.image_size, data.image_size), mean=tuple(data.mean), std=tuple(data.std),
        crop_pct=data.crop_pct, interpolation=interpolation, description=name, sizes=sizes,
        class_names=list(label_feature.names),
        skipped=src.skipped)


def _resized(native: int, size: int) -> str:
    if size == native:
        return ''
    return f", {'upsampled' if size > native else 'downsampled'} to {size}x{size}"
