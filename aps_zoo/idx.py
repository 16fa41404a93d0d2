"""MNIST-format (IDX) image folders as ``datasets`` datasets: MNIST, Fashion-MNIST, KMNIST.

A folder holds ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` and, for a test split,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``; the uncompressed
file is read when both exist). An IDX file is a big-endian header, magic 2051 for images (then count, rows,
cols: 16 bytes) or 2049 for labels (then count: 8 bytes), followed by uint8 data (docs/design.md#data-formats).

Files are checked before anything large is allocated: the magic, the data size the header claims against the
file's length (a gzip file cannot inflate more than ``DEFLATE_MAX_RATIO`` times its size) and ``MAX_BYTES``,
decompression capped at the claimed size, no link leading out of the folder. A bad file ends in one
``IdxError`` line naming it (a ValueError: the CLI prints it and exits with code 2).
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional

import datasets
import numpy as np

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
SPLIT_PREFIXES = {'train': 'train', 'test': 't10k'}
KINDS = {'image': ('images-idx3', IMAGES_MAGIC), 'label': ('labels-idx1', LABELS_MAGIC)}
DEFLATE_MAX_RATIO = 1032  # the most one byte of deflate data can expand to (258-byte matches in ~2 bits)
MAX_BYTES = 1 << 32  # an IDX file's data is held in memory; EMNIST's largest is 0.55 GB
HUB_IDS = {'fashion_mnist': 'zalando-datasets/fashion_mnist'}  # data.dataset names of the Hub's IDX datasets
_CHUNK = 1 << 20


class IdxError(ValueError):
    """An IDX file that is missing, malformed or not where the folder says."""


def file_names(split: str, kind: str):
    """The names an IDX file of ``split`` ('train'/'test') and ``kind`` ('image'/'label') may have, preferred
    first (uncompressed, then gzipped)."""
    name = f'{SPLIT_PREFIXES[split]}-{KINDS[kind][0]}-ubyte'
    return name, f'{name}.gz'


def is_idx_folder(folder: Path) -> bool:
    """Whether ``folder`` holds any of the MNIST-format file names (as a file or a link)."""
    return any(os.path.lexists(folder / name) for split in SPLIT_PREFIXES for kind in KINDS
               for name in file_names(split, kind))


def _find(folder: Path, split: str, kind: str) -> Optional[Path]:
    """The file of (split, kind) in ``folder``, checked to be a regular file inside it; None when absent."""
    path = next((folder / n for n in file_names(split, kind) if os.path.lexists(folder / n)), None)
    if path is None:
        return None
    target = path.resolve()
    if not target.is_relative_to(folder.resolve()):
        raise IdxError(f"IDX file {path} links to {target}, outside the folder; copy the file into {folder}")
    if not target.is_file():
        raise IdxError(f"IDX file {path} is not a regular file")
    return path


def _read_capped(stream, size: int, path: Path) -> bytes:
    """Exactly ``size`` bytes from ``stream``, read in chunks so that memory follows the data actually there;
    refuses a stream that ends early or holds more."""
    data = bytearray()
    while len(data) <= size:
        chunk = stream.read(min(_CHUNK, size + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) > size:
        raise IdxError(f"IDX file {path} holds more data than the {size} bytes its header says")
    if len(data) < size:
        raise IdxError(f"IDX file {path} holds {len(data)} bytes of data, fewer than the {size} its header says")
    return bytes(data)


def _header(stream, path: Path, magic: int):
    """The dimensions after the magic number; refuses another magic (or a file too short for a header)."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    raw = stream.read(4 + 4 * ndim)
    if len(raw) < 4 + 4 * ndim:
        raise IdxError(f"IDX file {path} is too short for its {4 + 4 * ndim}-byte header")
    found, *dims = struct.unpack(f'>{1 + ndim}I', raw)
    if found != magic:
        raise IdxError(f"IDX file {path} has magic number {found}, expected {magic} "
                       f"({'images' if magic == IMAGES_MAGIC else 'labels'}, unsigned bytes)")
    if 0 in dims:
        raise IdxError(f"IDX file {path} has a zero dimension in its header: {dims}")
    return dims


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of one IDX file (images: (count, rows, cols); labels: (count,)), gzipped or not."""
    zipped = path.suffix == '.gz'
    try:
        length = path.stat().st_size
        with (gzip.open if zipped else open)(path, 'rb') as stream:
            dims = _header(stream, path, magic)
            size = math.prod(dims)
            header = 4 + 4 * len(dims)
            if not zipped and header + size != length:
                raise IdxError(f"IDX file {path} is {length} bytes but its header {dims} says {header + size}")
            if zipped and size > DEFLATE_MAX_RATIO * length:
                raise IdxError(f"IDX file {path}: its header {dims} claims {size} bytes, more than a "
                               f"{length}-byte gzip file can hold")
            if size > MAX_BYTES:
                raise IdxError(f"IDX file {path}: its header {dims} claims {size} bytes, more than the "
                               f"{MAX_BYTES} an IDX dataset may hold in memory")
            data = _read_capped(stream, size, path)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise IdxError(f"IDX file {path} cannot be read: {e}") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _pgm(image: np.ndarray) -> Dict[str, object]:
    """A greyscale image as an uncompressed PGM file (netpbm), which ``datasets.Image`` stores and PIL decodes:
    no encoding cost."""
    rows, cols = image.shape
    return {'bytes': f'P5\n{cols} {rows}\n255\n'.encode() + image.tobytes(), 'path': None}


def read_split(folder: Path, split: str):
    """(images, labels) of ``split``, or None when the folder has neither of its files."""
    paths = {kind: _find(folder, split, kind) for kind in KINDS}
    if not any(paths.values()):
        return None
    for kind, path in paths.items():
        if path is None:
            raise IdxError(f"IDX folder {folder} has no {file_names(split, kind)[0]}[.gz] for its {split} split")
    images = read_idx(paths['image'], IMAGES_MAGIC)
    labels = read_idx(paths['label'], LABELS_MAGIC)
    if len(images) != len(labels):
        raise IdxError(f"IDX files {paths['image']} and {paths['label']} disagree: {len(images)} images, "
                       f"{len(labels)} labels")
    return images, labels


def idx_dataset(folder: Path, streaming: bool = False):
    """The IDX files of ``folder`` as a ``DatasetDict`` ('train', and 'test' from the t10k files when present):
    an ``Image`` column and a ``ClassLabel`` of the integer labels (classes 0..max label)."""
    splits = {name: arrays for name in SPLIT_PREFIXES if (arrays := read_split(folder, name)) is not None}
    if 'train' not in splits:
        raise IdxError(f"IDX folder {folder} has no {file_names('train', 'image')[0]}[.gz]: a training split is "
                       f"needed")
    num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
    features = datasets.Features({'image': datasets.Image(),
                                  'label': datasets.ClassLabel(names=[str(i) for i in range(num_classes)])})
    dd = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({'image': [_pgm(im) for im in images], 'label': labels.tolist()},
                                         features=features)
        for name, (images, labels) in splits.items()})
    if streaming:
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dd.items()})
    return dd
