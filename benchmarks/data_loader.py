"""Images/s per process of aps_zoo's training loader next to timm's ``create_loader``, on the same JPEGs at 224.

    python benchmarks/data_loader.py [--images 256] [--workers 0 2 8] [--batch 64] [--epochs 2]

Writes ~500x375 JPEGs (smooth noise, ~50-100 KB like photos) to a temp imagefolder. aps_zoo: the recipe's
loaders (``build_loaders``: datasets imagefolder, timm train transforms to uint8, ``fast_collate``) prepared
for a run by ``device_loaders`` (Accelerate, one CPU process; timm's ``PrefetchLoader`` normalising on the
device). timm: ``timm.data.create_dataset`` over the same folder and ``create_loader`` with the same
random-resized crop, flip and colour jitter 0.4, prefetcher on. Both decode the JPEGs in the workers. Each
epoch after the first is timed (persistent workers: no start-up in it); the table gives the mean images/s
and aps_zoo / timm. Nothing is downloaded.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from aps_zoo.data import build_loaders  # noqa: E402
from aps_zoo.prefetch import device_loaders  # noqa: E402
from aps_zoo.recipe import DataSection  # noqa: E402


def write_imagefolder(root: Path, images: int, classes: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / 'train' / f'class_{i % classes}'
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        coarse = Image.fromarray(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h))
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f'{i}.jpg', quality=90)


def images_per_second(loader, epochs: int) -> float:
    """Mean images/s of ``loader`` over ``epochs`` passes after a first, untimed one."""
    for _ in loader:
        pass
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _ in loader:
            n += len(images)
    return n / (time.perf_counter() - start)


def aps_zoo_loader(root: Path, size: int, batch: int, workers: int):
    data = DataSection(dataset=str(root), image_size=size, batch_size=batch, num_workers=workers,
                       test_fraction=0.1)  # a test split is carved; the rate is per image
    bundle = build_loaders(data, seed=0, holdout=False)
    return device_loaders(Accelerator(cpu=True), bundle, seed=0)[0]


def timm_loader(root: Path, size: int, batch: int, workers: int):
    from timm.data import create_dataset, create_loader
    dataset = create_dataset('', root=str(root / 'train'), split='train', is_training=True)
    return create_loader(dataset, input_size=(3, size, size), batch_size=batch, is_training=True,
                         scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4, interpolation='bilinear',
                         num_workers=workers, device=torch.device('cpu'), use_prefetcher=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2, 8])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--epochs', type=int, default=2, help='timed passes after an untimed first one')
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'imagefolder'
        write_imagefolder(root, args.images)
        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / 'cache')
        datasets.disable_progress_bars()
        mb = sum(p.stat().st_size for p in root.rglob('*.jpg')) / 2 ** 20
        print(f"{args.images} JPEGs ({mb:.0f} MB) -> {args.size}x{args.size} training crops, batch {args.batch}, "
              f"{os.cpu_count()} CPUs, one process")
        print(f"{'workers':>7}  {'aps_zoo img/s':>13}  {'timm img/s':>10}  {'ratio':>5}")
        for workers in args.workers:
            ours = images_per_second(aps_zoo_loader(root, args.size, args.batch, workers), args.epochs)
            theirs = images_per_second(timm_loader(root, args.size, args.batch, workers), args.epochs)
            print(f"{workers:>7}  {ours:>13.1f}  {theirs:>10.1f}  {ours / theirs:>5.2f}")


if __name__ == '__main__':
    main()
