"""The ranking benchmark: architectures in the band, rank agreement with bootstrap CIs, its jobs in worker
processes, and one tiny end-to-end run on digits (the benchmark's calls into the library stay in sync)."""
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aps_zoo.spaces import build_space
from conftest import import_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def ranking():
    return import_benchmark('ranking')


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


def test_jobs_in_worker_processes_return_in_order(ranking):
    """Results come back in the jobs' order, from other processes, each with the asked torch threads."""
    jobs = [(pow, (2, i)) for i in range(5)] + [(os.getpid, ()), (torch.get_num_threads, ())]
    out = ranking.run_jobs(jobs, workers=2, threads=1)
    assert out[:5] == [1, 2, 4, 8, 16] and out[5] != os.getpid() and out[6] == 1
    assert ranking.run_jobs(jobs[:5], workers=1, threads=1) == out[:5]


# the recipe on resnet_cifar8 (its band at the recipe's budget holds plenty of architectures), a few steps of each run
TINY = ['space.depth=8', 'search.epochs=2', 'search.warmup_epochs=1', 'search.steps_per_epoch=2',
        'search.controller.steps_per_epoch=1', 'search.calibration_batches=1', 'search.decode_candidates=4',
        'search.decode_top_k=2', 'search.band_samples=2', 'data.val_fraction=0.1', 'train.steps_per_epoch=2']


RECIPE = ROOT / 'recipes' / 'search_resnet20_digits.yaml'


@pytest.fixture(scope='module')
def tiny_ranking(ranking, tmp_path_factory):
    """(folder, summary) of the tiny run of every supernet: three digits architectures, each trained standalone
    for one epoch; its report is in <folder>/out, its runs in <folder>/runs."""
    root = tmp_path_factory.mktemp('ranking')
    with pytest.MonkeyPatch.context() as mp:  # the bootstrap CIs over 3 architectures with fewer resamples
        mp.setattr(ranking, 'rank_agreement', functools.partial(ranking.rank_agreement, reps=100))
        return root, ranking.run(RECIPE, TINY, root / 'out', root / 'runs', 3, 1, True, command='first')


def test_tiny_end_to_end_run_scores_every_architecture_and_reuses_its_runs(ranking, tiny_ranking, monkeypatch):
    """Three digits architectures: each standalone top-1 is what its saved weights score on the test split,
    every supernet scores every architecture under both evaluations, and a rerun reuses the runs."""
    sq = sys.modules['search_quality']
    monkeypatch.setattr(ranking, 'rank_agreement', functools.partial(ranking.rank_agreement, reps=100))
    root, summary = tiny_ranking
    assert len(summary['archs']) == 3 and all(0.9 * 1.3e6 <= m <= 1.3e6 for m in summary['macs'])
    data = ranking.build_loaders(ranking.load_recipe(RECIPE, TINY).data, 0, holdout=True)
    for i, top1 in enumerate(summary['standalone']):
        correct = sq.test_correctness(root / 'runs' / 'standalone' / f'arch{i}', data.test)
        assert top1 == pytest.approx(100 * np.mean(correct), abs=1e-4)
    for sc in summary['supernets'].values():
        assert all(len(sc[ev]) == 3 and all(0 <= v <= 1 for v in sc[ev]) for ev in ranking.EVALUATIONS)
    again = ranking.run(RECIPE, TINY, root / 'out', root / 'runs', 3, 1, True, command='second')
    assert again['standalone'] == summary['standalone']
    assert {m: sc['recalibrate'] for m, sc in again['supernets'].items()} == \
        {m: sc['recalibrate'] for m, sc in summary['supernets'].items()}
    written = json.loads((root / 'out' / 'ranking.json').read_text())
    assert [i['command'] for i in written['invocations']] == ['first', 'second']
    assert (root / 'out' / 'ranking.png').stat().st_size > 0


def test_another_supernet_setting_is_ranked_against_the_standalone_accuracies_of_an_earlier_run(ranking, tiny_ranking,
                                                                                               tmp_path,
                                                                                               monkeypatch):
    """--standalone-from: one supernet with a search override ranked against an earlier run's standalone
    accuracies, without training a standalone network; an earlier run of other training is refused by name."""
    monkeypatch.setattr(ranking, 'rank_agreement', functools.partial(ranking.rank_agreement, reps=100))
    root, first = tiny_ranking
    earlier = root / 'out' / 'ranking.json'
    floor = TINY + ['search.sharing_floor=0.9']
    second = ranking.run(RECIPE, floor, tmp_path / 'floor', tmp_path / 'floor_runs', 3, 1, True, command='second',
                         methods=('aps',), standalone_from=earlier)
    assert second['standalone'] == first['standalone'] and list(second['supernets']) == ['aps']
    assert not (tmp_path / 'floor_runs' / 'standalone').exists()
    assert all(len(second['supernets']['aps'][ev]) == 3 for ev in ranking.EVALUATIONS)
    assert str(earlier) in (tmp_path / 'floor' / 'ranking.md').read_text()
    with pytest.raises(ValueError, match='train differ'):
        ranking.run(RECIPE, floor, tmp_path / 'floor', tmp_path / 'floor_runs', 3, 2, True, command='third',
                    methods=('aps',), standalone_from=earlier)
    with pytest.raises(ValueError, match='no such file'):
        ranking.run(RECIPE, floor, tmp_path / 'floor', tmp_path / 'floor_runs', 3, 1, True, command='third',
                    methods=('aps',), standalone_from=tmp_path / 'missing.json')
    not_ranking = tmp_path / 'list.json'
    not_ranking.write_text('[1, 2]')
    with pytest.raises(ValueError, match='not a ranking.json'):
        ranking.run(RECIPE, floor, tmp_path / 'floor', tmp_path / 'floor_runs', 3, 1, True, command='third',
                    methods=('aps',), standalone_from=not_ranking)
