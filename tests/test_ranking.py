"""The ranking benchmark's pure parts: architectures in the band, rank agreement with bootstrap CIs."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from aps_zoo.spaces import build_space

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def ranking():
    sys.path.insert(0, str(ROOT / 'benchmarks'))  # ranking imports its sibling search_quality
    return importlib.import_module('ranking')


def test_sampled_architectures_are_distinct_and_in_the_band(ranking):
    space = build_space('resnet_cifar', 20, [8, 16, 32, 64], num_classes=10, input_size=(3, 8, 8))
    archs = ranking.sample_archs(space, 1.3e6, 0.9, 20, seed=0)
    assert len({tuple(a) for a in archs}) == 20
    assert all(0.9 * 1.3e6 <= space.macs(a) <= 1.3e6 for a in archs)
    assert archs == ranking.sample_archs(space, 1.3e6, 0.9, 20, seed=0)


def test_rank_agreement(ranking):
    x = np.arange(20.0)
    same = ranking.rank_agreement(x, 2 * x + 1, reps=300)
    assert same['tau'] == pytest.approx(1) and same['rho'] == pytest.approx(1) and same['tau_lo'] == pytest.approx(1)
    flipped = ranking.rank_agreement(x, -x, reps=300)
    assert flipped['tau'] == pytest.approx(-1) and flipped['tau_hi'] == pytest.approx(-1)
    noise = ranking.rank_agreement(x, np.random.default_rng(0).permutation(20), reps=300)
    assert noise['tau_lo'] < noise['tau'] < noise['tau_hi'] and noise['tau_lo'] < 0 < noise['tau_hi']
