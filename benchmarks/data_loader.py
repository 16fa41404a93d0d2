"""Images/s of aps_zoo's DataLoaders at ImageNet-like 224 crops, from a generated imagefolder of JPEGs.

    python benchmarks/data_loader.py [--images 512] [--workers 0 1 2] [--batch 64]

Writes ~500x375 JPEGs (smooth noise, ~50-100 KB like photos) to a temp folder, builds the loaders through
``aps_zoo.data.build_loaders`` (datasets imagefolder, timm train/eval transforms, decoding in workers)
and times one pass of the training loader (random-resized crop, flip, colour jitter) and of the eval
loader (resize + centre crop) for each worker count. Nothing is downloaded.
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

from aps_zoo.data import build_loaders  # noqa: E402
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


def images_per_second(loader) -> float:
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=512)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--size', type=int, default=224)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'imagefolder'
        write_imagefolder(root, args.images)
        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / 'cache')
        mb = sum(p.stat().st_size for p in root.rglob('*.jpg')) / 2 ** 20
        print(f"{args.images} JPEGs ({mb:.0f} MB) -> {args.size}x{args.size}, batch {args.batch}, "
              f"{os.cpu_count()} CPUs")
        rows = []
        for workers in args.workers:
            data = DataSection(dataset=str(root), image_size=args.size, batch_size=args.batch,
                               eval_batch_size=args.batch, num_workers=workers, test_fraction=0.5)
            start = time.perf_counter()
            bundle = build_loaders(data, seed=0, holdout=False)
            build = time.perf_counter() - start
            rows.append((workers, build, images_per_second(bundle.train), images_per_second(bundle.test)))
        print(f"{'workers':>7}  {'build s':>7}  {'train img/s':>11}  {'eval img/s':>10}")
        for workers, build, train, evaluation in rows:
            print(f"{workers:>7}  {build:>7.2f}  {train:>11.1f}  {evaluation:>10.1f}")
        print("build: load + one-off scan for unreadable files (cached by `datasets` after the first build)")


if __name__ == '__main__':
    main()
