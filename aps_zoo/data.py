"""Images as torch DataLoaders through `datasets` and timm transforms.

``data.dataset`` is ``digits`` (scikit-learn's 8x8 digits, embedded: no download), a local directory
(``imagefolder`` layout, or parquet files), or a Hugging Face Hub dataset id (``cifar10``,
``ILSVRC/imagenet-1k``; needs network or a local cache). Every source becomes a ``datasets`` dataset;
images are decoded and transformed in the DataLoader workers. The training loader shuffles with a
seeded sampler whose order depends only on (seed, epoch): call ``loader.set_epoch(epoch)`` (an
Accelerate-prepared loader forwards it) so that a resumed run sees the same batches as an
uninterrupted one.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import datasets
import numpy as np
import torch
from accelerate.data_loader import SeedableRandomSampler
from PIL import Image as PILImage
from timm.data import create_transform
from torch.utils.data import DataLoader

from .recipe import DataSection

logger = logging.getLogger(__name__)

DIGITS = 'digits'
TEST_SPLIT_SEED = 0  # a carved test split is the same for every run seed
LABEL_COLUMNS = ('label', 'labels', 'fine_label', 'target', 'class')
INTERPOLATION = 'bilinear'
_UNREADABLE = (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError)
_DECODER = datasets.Image()


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
    dataset_name: str
    sizes: Dict[str, Optional[int]]
    class_names: List[str]
    skipped: int  # unreadable image files left out

    @property
    def data_config(self) -> Dict[str, Any]:
        """The eval preprocessing in timm's ``resolve_data_config`` keys (for a model's ``pretrained_cfg``)."""
        return dict(input_size=self.input_size, interpolation=INTERPOLATION, mean=self.mean, std=self.std,
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


def _load_dataset(name: str, *args, **kwargs):
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (OSError, ValueError) as e:  # missing files, unknown id, offline Hub (ConnectionError is an OSError)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load dataset {name!r}: {reason}") from None


def _open_source(data: DataSection):
    """(dataset dict, kind, description of where it came from)."""
    if data.dataset == DIGITS:
        return digits_dataset(), DIGITS, 'scikit-learn digits'
    path = Path(data.dataset).expanduser()
    if path.is_dir():
        kind = 'parquet' if any(path.glob('*.parquet')) or any(path.glob('*/*.parquet')) else 'imagefolder'
        return _load_dataset(data.dataset, kind, data_dir=str(path), streaming=data.streaming), kind, f'{kind} {path}'
    if path.exists() or data.dataset.startswith(('.', '/', '~')):
        raise DataError(f"data.dataset {data.dataset!r} is not a directory; give 'digits', an imagefolder or "
                        f"parquet directory, or a Hugging Face Hub dataset id")
    return (_load_dataset(data.dataset, data.dataset, streaming=data.streaming), 'hub',
            f'{data.dataset} (Hugging Face Hub)')


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


def _encode_labels(dd: datasets.DatasetDict, label: str) -> datasets.DatasetDict:
    """Make ``label`` a ClassLabel: integers keep their value (classes 0..max), other values are sorted."""
    if dd[next(iter(dd))].features[label].dtype.startswith(('int', 'uint')):
        top = max(max(ds[label]) for ds in dd.values())
        return dd.cast_column(label, datasets.ClassLabel(names=[str(i) for i in range(top + 1)]))
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
    stratify = label if isinstance(ds.features[label], datasets.ClassLabel) else None
    try:
        parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    except ValueError as e:
        raise DataError(f"cannot carve the {what} split ({fraction:.0%} of {len(ds)} images): {e}") from None
    return parts['train'], parts['test']


def _apply(batch: Dict[str, list], transform, image: str, label: str) -> Dict[str, list]:
    return {'pixel_values': [transform(img.convert('RGB')) for img in batch[image]], 'label': batch[label]}


def _apply_stream(batch: Dict[str, list], transform, image: str, label: str) -> Dict[str, list]:
    """Streaming variant: decode here and drop (with a warning) images that do not decode."""
    out = {'pixel_values': [], 'label': []}
    for img, lab in zip(batch[image], batch[label]):
        try:
            pixels = transform(_DECODER.decode_example(img).convert('RGB'))
        except _UNREADABLE as e:
            logger.warning("skipped unreadable image %s: %s", img['path'] or '<bytes>', e)
            continue
        out['pixel_values'].append(pixels)
        out['label'].append(lab)
    return out


def _collate(items: List[Dict[str, Any]]) -> Tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([torch.as_tensor(i['pixel_values']) for i in items]),
            torch.tensor([int(i['label']) for i in items]))


def _transforms(data: DataSection):
    size = (3, data.image_size, data.image_size)
    common = dict(interpolation=INTERPOLATION, mean=tuple(data.mean), std=tuple(data.std))
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


def build_loaders(data: DataSection, seed: int, holdout: bool) -> DataBundle:
    """Train / val / test DataLoaders of ``data.dataset`` with timm transforms.

    ``holdout``: carve ``data.val_fraction`` of the training split (seeded, stratified) as ``val``;
    otherwise ``val`` is None and ``train`` is the whole training split. A dataset without
    ``data.test_split`` (and no other split than the training one) gets a test split of
    ``data.test_fraction`` carved with a fixed seed, noted in ``dataset_name``.
    """
    dd, kind, source = _open_source(data)
    if data.train_split not in dd:
        raise DataError(f"split {data.train_split!r} not found in {source}; splits: {list(dd)} (set data.train_split)")
    train = dd[data.train_split]
    image, label = _columns(train.features, data)
    streaming = isinstance(train, datasets.IterableDataset)
    if not isinstance(train.features[label], datasets.ClassLabel):
        if streaming:
            raise DataError(f"label column {label!r} is not a ClassLabel; streaming needs the number of classes "
                            f"declared in the dataset features")
        dd = _encode_labels(dd, label)
        train = dd[data.train_split]
    if not isinstance(train.features[image], datasets.Image):
        dd = dd.cast_column(image, datasets.Image())
        train = dd[data.train_split]
    if streaming:
        dd = dd.cast_column(image, datasets.Image(decode=False))
        train = dd[data.train_split]

    skipped = 0
    num_proc = data.num_workers if data.num_workers > 1 else None
    if kind == 'imagefolder' and not streaming:
        train, skipped = _drop_unreadable(train, image, f'{source} ({data.train_split} split)', num_proc)

    note = ''
    if data.test_split in dd:
        test = dd[data.test_split]
        if kind == 'imagefolder' and not streaming:
            test, n = _drop_unreadable(test, image, f'{source} ({data.test_split} split)', num_proc)
            skipped += n
    elif list(dd) == [data.train_split] and not streaming:
        train, test = _split(train, data.test_fraction, TEST_SPLIT_SEED, label, 'test')
        note = (f"test: {len(test)} images carved from the {data.train_split} split "
                f"({data.test_fraction:.0%}, seed {TEST_SPLIT_SEED})")
    else:
        raise DataError(f"split {data.test_split!r} not found in {source}; splits: {list(dd)} (set data.test_split)")

    val = None
    if streaming:
        total = _num_examples(train, data.train_split)
        n_val = round(data.val_fraction * total) if holdout and total else 0
        if holdout and not n_val:
            raise DataError(f"streaming {source}: the size of the {data.train_split} split is unknown, so "
                            f"data.val_fraction cannot be carved; use a non-streaming dataset")
        if n_val:
            val, train = train.take(n_val), train.skip(n_val)
        train_size = total - n_val if total else None
        if data.max_train_samples:
            train = train.take(data.max_train_samples)
            train_size = min(train_size or data.max_train_samples, data.max_train_samples)
        train = train.shuffle(seed=seed, buffer_size=10_000)
        sizes = {'train': train_size, 'val': n_val or None, 'test': _num_examples(test, data.test_split)}
    else:
        if holdout:
            train, val = _split(train, data.val_fraction, seed, label, 'validation')
        if data.max_train_samples and data.max_train_samples < len(train):
            train = train.shuffle(seed=seed).select(range(data.max_train_samples))
        sizes = {'train': len(train), 'val': len(val) if val is not None else None, 'test': len(test)}
        if len(train) < data.batch_size:
            raise DataError(f"the training split has {len(train)} images, fewer than one batch "
                            f"(batch_size {data.batch_size})")

    label_feature = train.features[label]
    train_tf, eval_tf = _transforms(data)
    loader = partial(DataLoader, num_workers=data.num_workers, collate_fn=_collate,
                     pin_memory=torch.cuda.is_available())
    train_ds = _with_transform(train, train_tf, image, label, data.batch_size)
    sampler = None if streaming else SeedableRandomSampler(train_ds, data_seed=seed)
    train_loader = loader(train_ds, batch_size=data.batch_size, sampler=sampler, drop_last=True)

    def eval_loader(ds):
        return loader(_with_transform(ds, eval_tf, image, label, data.eval_batch_size),
                      batch_size=data.eval_batch_size, shuffle=False)

    if kind == DIGITS:
        name = f"scikit-learn digits (1797 8x8 images{_resized(8, data.image_size)}"
    else:
        counts = ', '.join(f'{k} {v}' for k, v in sizes.items() if v is not None)
        name = f"{source} ({label_feature.num_classes} classes; {counts} images"
    name += f"; {note})" if note else ')'
    return DataBundle(
        train=train_loader, val=eval_loader(val) if val is not None else None, test=eval_loader(test),
        num_classes=label_feature.num_classes, input_size=(3, data.image_size, data.image_size),
        mean=tuple(data.mean), std=tuple(data.std), crop_pct=data.crop_pct, dataset_name=name, sizes=sizes,
        class_names=list(label_feature.names), skipped=skipped)


def _resized(native: int, size: int) -> str:
    if size == native:
        return ''
    return f", {'upsampled' if size > native else 'downsampled'} to {size}x{size}"
