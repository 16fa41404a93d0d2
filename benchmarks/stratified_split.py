"""Seconds to carve a stratified split: aps_zoo's (labels read as one array) next to datasets' own
``train_test_split(stratify_by_column=...)``, which carves the same images.

    python benchmarks/stratified_split.py [--rows 1797 60000] [--fraction 0.1] [--repeats 3]

The dataset is in memory: an int64 column and a 10-class label column (the sizes of digits and of
Fashion-MNIST's train split). Each row of the table is the best of ``--repeats`` timings; the run stops
with exit 1 if the two ever carve different images. Nothing is downloaded.
"""
import argparse
import time

import datasets
import numpy as np

from aps_zoo.data import _split


def labelled(rows: int, seed: int = 0) -> datasets.Dataset:
    labels = np.random.default_rng(seed).integers(0, 10, rows)
    features = datasets.Features({'x': datasets.Value('int64'), 'label': datasets.ClassLabel(num_classes=10)})
    return datasets.Dataset.from_dict({'x': np.arange(rows), 'label': labels}, features=features)


def best_seconds(fn, repeats: int):
    """(least seconds over ``repeats`` calls, the last result)."""
    best, out = float('inf'), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, nargs='+', default=[1797, 60000])
    ap.add_argument('--fraction', type=float, default=0.1)
    ap.add_argument('--repeats', type=int, default=3)
    args = ap.parse_args()
    print(f"datasets {datasets.__version__}; stratified split of {args.fraction:.0%}, best of {args.repeats}")
    print('| rows | datasets train_test_split (s) | aps_zoo (s) | speed-up |\n|---:|---:|---:|---:|')
    for rows in args.rows:
        ds = labelled(rows)
        theirs_s, theirs = best_seconds(lambda: ds.train_test_split(
            test_size=args.fraction, seed=0, stratify_by_column='label'), args.repeats)
        ours_s, ours = best_seconds(lambda: _split(ds, args.fraction, 0, 'label', 'validation'), args.repeats)
        if ours[1]['x'][:] != theirs['test']['x'][:]:
            print(f"{rows} rows: the two carve different images")
            return 1
        print(f"| {rows} | {theirs_s:.3f} | {ours_s:.4f} | {theirs_s / ours_s:.0f}x |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
