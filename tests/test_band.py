"""The band sampler: uniform over the architectures whose MACs lie in [min_fraction x budget, budget]."""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from aps_zoo.recipe import load_recipe
from aps_zoo.search.controller import Controller
from aps_zoo.spaces import build_space, space_from_recipe
from aps_zoo.spaces.band import BandSampler

RESNET20 = build_space('resnet_cifar', 20, [8, 16, 32, 64], num_classes=10, input_size=(3, 32, 32))


def _vector_macs(space, choices: np.ndarray) -> np.ndarray:
    """MACs of many architectures at once from the space's MACs table (rows of ``choices``)."""
    table = space.macs_table()
    total = sum(np.asarray(table.unary[d])[choices[:, d]] for d in range(space.num_decisions))
    for (a, b), pair in table.pair.items():
        total = total + np.asarray(pair)[choices[:, a], choices[:, b]]
    return total


def _rejection(space, lower, upper, count, seed):
    """``count`` architectures drawn uniformly from the whole space and kept when their MACs are in the band."""
    rng, kept = np.random.default_rng(seed), []
    options = np.array([space.num_options(d) for d in range(space.num_decisions)])
    while sum(len(k) for k in kept) < count:
        draws = (rng.random((200_000, len(options))) * options).astype(int)
        macs = _vector_macs(space, draws)
        kept.append(draws[(macs >= lower) & (macs <= upper)])
    return np.concatenate(kept)[:count]


def _marginals(archs, space):
    return np.stack([np.bincount(np.asarray(archs)[:, d], minlength=space.num_options(d))
                     for d in range(space.num_decisions)])


@pytest.mark.parametrize('fraction', [0.10, 0.25, 0.50])
def test_marginals_agree_with_rejection_sampling(fraction):
    """Per-decision marginals of 5,000 draws against 5,000 exact rejection draws: chi-square homogeneity
    per decision, Bonferroni over the 19 decisions at 1%."""
    budget = fraction * RESNET20.macs(RESNET20.largest())
    sampler = BandSampler(RESNET20, budget, 0.9)
    generator = torch.Generator().manual_seed(0)
    ours = [sampler.sample(generator) for _ in range(5000)]
    assert all(sampler.contains(a) for a in ours)
    oracle = _rejection(RESNET20, sampler.lower, budget, 5000, seed=1)
    p = [stats.chi2_contingency(np.stack([a, b]) + 0.5)[1]
         for a, b in zip(_marginals(ours, RESNET20), _marginals(oracle, RESNET20))]
    assert min(p) > 0.01 / RESNET20.num_decisions, p


def test_the_per_decision_sampler_fails_the_same_check():
    """The old warm-up sampler (uniform among the options that keep the band reachable) is biased: the test
    above tells it apart (the last stage's mean option index is far below the band's)."""
    budget = 0.10 * RESNET20.macs(RESNET20.largest())
    controller, generator = Controller(RESNET20, budget), torch.Generator().manual_seed(0)
    biased = []
    for _ in range(2000):
        choices = []
        for _ in range(RESNET20.num_decisions):
            allowed = [c for c, ok in enumerate(controller.feasible(choices)[0]) if ok]
            choices.append(allowed[int(torch.randint(len(allowed), (), generator=generator))])
        biased.append(choices)
    oracle = _rejection(RESNET20, controller.lower, budget, 2000, seed=1)
    p = [stats.chi2_contingency(np.stack([a, b]) + 0.5)[1]
         for a, b in zip(_marginals(biased, RESNET20), _marginals(oracle, RESNET20))]
    assert min(p) < 1e-6
    assert np.asarray(biased)[:, -1].mean() < np.asarray(oracle)[:, -1].mean() - 0.4


def test_exactly_uniform_over_an_enumerated_band():
    """A space small enough to list: the counts hold every architecture of the band, and draws hit each
    one equally often (chi-square goodness of fit)."""
    space = build_space('resnet_cifar', 8, [4, 8, 16], num_classes=10, input_size=(3, 16, 16))
    macs = {a: space.macs(list(a)) for a in itertools.product(range(3), repeat=space.num_decisions)}
    budget = sorted(macs.values())[len(macs) // 2]
    sampler = BandSampler(space, budget, 0.9)
    band = sorted(a for a, m in macs.items() if sampler.lower <= m <= budget)
    assert 20 <= len(band) <= sampler.total() <= 1.3 * len(band)
    prefix_counts = sampler.option_counts([])
    assert all(prefix_counts[c] >= sum(a[0] == c for a in band) for c in range(3))
    generator = torch.Generator().manual_seed(0)
    draws = [tuple(sampler.sample(generator)) for _ in range(40 * len(band))]
    counts = [draws.count(a) for a in band]
    assert sum(counts) == len(draws)
    assert stats.chisquare(counts).pvalue > 0.001


def test_budget_above_the_largest_network_and_log_counts():
    space = build_space('resnet_cifar', 20, [4, 8, 16, 32, 64], num_classes=10, input_size=(3, 32, 32))
    largest = space.macs(space.largest())
    sampler = BandSampler(space, 10 * largest, 0.9)
    assert sampler.lower == 0.9 * largest
    logs = sampler.log_counts([])
    margin = space.num_decisions * sampler.width  # the counts' rounding margin below the band
    for log_count, (_, hi) in zip(logs, space.macs_table().option_bounds([])):
        assert (hi >= sampler.lower) <= np.isfinite(log_count) <= (hi > sampler.lower - margin)
    assert not np.isfinite(logs[0])  # a 4-wide stem cannot reach 90% of the largest network
    assert logs[-1] == max(logs)  # the widest stem leaves the most completions near the largest network


@pytest.mark.parametrize('recipe', ['search_resnet50_imagenet_2g', 'search_mobilenetv2_imagenet'])
def test_imagenet_spaces_draw_quickly(recipe):
    """1,000 draws of the ImageNet search spaces of the recipes (a few seconds each), all inside the band."""
    r = load_recipe(f'recipes/{recipe}.yaml')
    space = space_from_recipe(r, 1000, (3, r.data.image_size, r.data.image_size))
    sampler = BandSampler(space, r.search.budget_macs, r.search.min_budget_fraction)
    generator = torch.Generator().manual_seed(0)
    archs = [sampler.sample(generator) for _ in range(1000)]
    macs = [space.macs(a) for a in archs]
    assert min(macs) >= sampler.lower and max(macs) <= r.search.budget_macs
    assert len({tuple(a) for a in archs}) > 900
