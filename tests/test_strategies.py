"""Search strategies: CPU-only sampling, a policy that learns a realistic reward, evolution inside the band."""
import numpy as np
import pytest
import torch

from aps_zoo.recipe import RecipeError, load_recipe, recipe_from_dict
from aps_zoo.search.strategies import STRATEGIES, create_strategy
from aps_zoo.spaces import space_from_recipe

DIGITS = load_recipe('recipes/search_resnet20_digits.yaml')
SPACE = space_from_recipe(DIGITS, 10, (3, 8, 8))


def _synthetic_accuracy(strategy, spread=0.03, seed=0):
    """Accuracy 0.80 + up to ``spread`` by how much width sits in late layers (normalised over the band, as a
    supernet tells subnets apart by a couple of points); returns it and its mean over band samples."""
    weights = np.arange(SPACE.num_decisions) / (SPACE.num_decisions - 1)
    generator = torch.Generator().manual_seed(seed)
    band = [strategy.band.sample(generator) for _ in range(500)]
    lo, hi = np.percentile([weights @ a for a in band], [1, 99])

    def accuracy(arch):
        return 0.80 + spread * float(np.clip((weights @ arch - lo) / (hi - lo), 0, 1))
    return accuracy, float(np.mean([accuracy(a) for a in band]))


def _run(strategy, accuracy, updates, images=256, seed=0):
    """``updates`` ask/tell rounds rewarded by the accuracy on ``images`` images (binomial noise)."""
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        archs = strategy.ask()
        strategy.tell(archs, [rng.binomial(images, accuracy(a)) / images for a in archs])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_policy_learns_a_realistic_reward_within_the_recipe_steps(seed):
    """Architectures 3 points apart, each reward read off a 256-image batch (2.5 points of noise): within the
    updates the digits recipe gives the controller (at the default lr, derived from them), the policy's mean
    accuracy rises by at least 0.5 points over the band's (its starting distribution), from each of three
    initialisations (0.6-1.3 points measured over six; a 200-sample mean varies by about 0.06)."""
    s = DIGITS.search
    strategy = create_strategy('reinforce', SPACE, s, seed=seed)
    accuracy, band_mean = _synthetic_accuracy(strategy)
    with torch.no_grad():
        start = np.mean([accuracy(strategy.controller.sample(strategy.generator)[0]) for _ in range(200)])
    assert abs(start - band_mean) < 0.002  # the untrained policy is the band distribution
    _run(strategy, accuracy, (s.epochs - s.warmup_epochs) * s.controller.steps_per_epoch)
    with torch.no_grad():
        end = np.mean([accuracy(strategy.controller.sample(strategy.generator)[0]) for _ in range(200)])
    assert end > band_mean + 0.005, (band_mean, end)


@pytest.mark.parametrize('fraction', [0.0, 0.5, 1.0])
def test_supernet_steps_mix_band_samples_into_the_policys(monkeypatch, fraction):
    """After warm-up the supernet trains a band sample with probability search.band_train_fraction and the
    policy's sample otherwise (a sentinel here): 2,000 steps land within 4 binomial sigmas of the fraction."""
    s = recipe_from_dict({'search': {**DIGITS.to_dict()['search'], 'band_train_fraction': fraction}}).search
    strategy = create_strategy('reinforce', SPACE, s, seed=0)
    policy_pick = [-1] * SPACE.num_decisions
    monkeypatch.setattr(strategy.controller, 'sample', lambda generator=None, greedy=False: (policy_pick, None))
    picks = [strategy.train_arch() for _ in range(2000)]
    band = [a for a in picks if a != policy_pick]
    assert all(strategy.band.contains(a) for a in band)
    assert abs(len(band) / len(picks) - fraction) <= 4 * np.sqrt(fraction * (1 - fraction) / len(picks))


def test_evolution_climbs_inside_the_band():
    """The same reward read off the recipe's reward images (1,024) and the same number of updates: children
    stay in the band, and the population scores 0.4 points above it."""
    s = recipe_from_dict({'search': {**DIGITS.to_dict()['search'], 'strategy': 'evolution'}}).search
    strategy = create_strategy('evolution', SPACE, s, seed=0)
    accuracy, band_mean = _synthetic_accuracy(strategy)
    _run(strategy, accuracy, (s.epochs - s.warmup_epochs) * s.controller.steps_per_epoch, s.controller.reward_images)
    children = strategy.ask()
    assert all(strategy.band.contains(a) for a in children + [m for m, _ in strategy.population])
    assert np.mean([accuracy(a) for a, _ in strategy.population]) > band_mean + 0.004
    assert len({tuple(a) for a in strategy.propose(100)}) == 100


def test_strategies_sample_on_the_cpu_whatever_the_accelerator_device(tmp_path):
    """Issue 23: a controller moved to the accelerator's device made multinomial fail with the CPU generator
    after warm-up. A searcher whose accelerator reports another device keeps every strategy on the CPU."""
    from aps_zoo.runs import make_accelerator
    from aps_zoo.search.loop import Searcher

    class Elsewhere:  # a CPU accelerator that reports the meta device, as a GPU one reports cuda
        device = torch.device('meta')

        def __init__(self, acc):
            self._acc = acc

        def __getattr__(self, name):
            return getattr(self._acc, name)

    for name in STRATEGIES:
        recipe = recipe_from_dict({'output_dir': str(tmp_path), 'data': {'dataset': 'digits', 'image_size': 8},
                                   'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8, 16]},
                                   'search': {'budget_macs': 2e5, 'strategy': name}})
        searcher = Searcher(recipe, Elsewhere(make_accelerator(cpu=True)), tmp_path / name)
        strategy = searcher.strategy
        tensors = list(strategy.controller.parameters()) if name == 'reinforce' else []
        assert all(t.device.type == 'cpu' for t in tensors)
        archs = [strategy.train_arch()] + strategy.ask()
        strategy.tell(archs[1:], [0.5] * len(archs[1:]))
        assert all(strategy.band.contains(a) for a in archs + [strategy.best()])


def test_strategy_key_names_the_allowed_values():
    with pytest.raises(RecipeError, match=r"'search.strategy' must be one of reinforce, random, evolution"):
        recipe_from_dict({'search': {'strategy': 'bayesian'}})
    with pytest.raises(RecipeError, match=r"'search.decode_top_k' must be between 1 and search.decode_candidates"):
        recipe_from_dict({'search': {'decode_candidates': 4, 'decode_top_k': 8}})
    with pytest.raises(RecipeError, match=r"'search.evolution.mutation_prob' must be in \(0, 1\]"):
        recipe_from_dict({'search': {'evolution': {'mutation_prob': 0}}})


def test_nearest_uniform_choices_stay_within_the_uniform_macs():
    from aps_zoo.flops import count_macs, uniform_at_budget
    from aps_zoo.search.decode import nearest_choices
    uniform = uniform_at_budget('resnet_cifar', 20, 1.2e6, num_classes=10, input_size=(3, 8, 8))
    choices = nearest_choices(SPACE, uniform.widths, count_macs(uniform))
    assert 0.9 * count_macs(uniform) <= SPACE.macs(choices) <= count_macs(uniform)
    widths = SPACE.widths(choices)
    assert all(w in (8, 16) for w in widths[:13]) and all(w in (32, 64) for w in widths[13:])  # 11/22/43 -> near
    exact = SPACE.widths(SPACE.largest())
    assert nearest_choices(SPACE, exact, SPACE.macs(SPACE.largest())) == SPACE.largest()
