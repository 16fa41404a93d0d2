"""Controller: exact MACs bounds, budget-feasible masked sampling, peaked synthetic reward, beam search."""
import itertools
import random

import pytest
import torch

from aps_zoo.search.controller import Controller, Reinforce, budget_reward
from aps_zoo.spaces import build_space

SPACE = build_space('resnet_cifar', 20, [4, 8, 16, 32, 64], num_classes=10, input_size=(3, 32, 32))
TARGET = [1, 3, 0, 2, 4, 1, 1, 0, 3, 2, 4, 4, 0, 1, 2, 3, 4, 0, 1]  # 3.63e7 MACs
BUDGET = 3.8e7
SMALL = build_space('resnet_cifar', 8, [4, 8, 16], num_classes=10, input_size=(3, 16, 16))

SPACES = {
    'resnet20': SPACE,
    'resnet50_blockwise': build_space('resnet', 50, [32, 48, 64, 80], num_classes=1000, input_size=(3, 224, 224),
                                      stage_multipliers=[1, 2, 4, 8], blockwise=True),
    'resnet50': build_space('resnet', 50, [32, 64], num_classes=1000, input_size=(3, 224, 224),
                            stage_multipliers=[1, 2, 4, 8]),
    'mobilenetv2': build_space('mobilenetv2', 0, [8, 12, 16, 20], num_classes=1000, input_size=(3, 224, 224),
                               stage_multipliers=[1, 1, 1.5, 2, 4, 6, 10, 64]),
}


@pytest.mark.parametrize('name', sorted(SPACES))
def test_macs_table_matches_count_macs(name):
    space, rng = SPACES[name], random.Random(0)
    table = space.macs_table()
    for choices in [space.smallest(), space.largest()] + [space.random_choices(rng) for _ in range(100)]:
        assert table.total(choices) == space.macs(choices)


def _brute_bounds(space, prefix):
    """(min, max) MACs of every completion of ``prefix``, by enumeration."""
    rest = range(len(prefix), space.num_decisions)
    macs = [space.macs(list(prefix) + list(tail)) for tail in itertools.product(*(range(space.num_options(d))
                                                                                   for d in rest))]
    return min(macs), max(macs)


@pytest.mark.parametrize('name, free', [('small', 7), ('resnet50', 9)])
def test_option_bounds_match_brute_force(name, free):
    """Exact smallest/largest MACs of every completion, against enumerating the last ``free`` decisions
    (all 3^7 architectures of the small space; bottleneck blocks, where MACs are not monotone, in ResNet-50)."""
    space = SMALL if name == 'small' else SPACES[name]
    table, rng = space.macs_table(), random.Random(1)
    n = space.num_decisions
    for _ in range(8):
        prefix = [rng.randrange(space.num_options(d)) for d in range(rng.randrange(n - free, n))]
        for c, bounds in enumerate(table.option_bounds(prefix)):
            assert bounds == _brute_bounds(space, prefix + [c]), (prefix, c)


def test_smallest_completion_is_not_smallest_widths():
    """A stride-1 shortcut is free where its widths match, so after a wide block input the cheapest
    bottleneck output can be the wide one: "smallest widths for the rest" would be a wrong bound."""
    space, rng = SPACES['resnet50'], random.Random(0)
    table, n = space.macs_table(), space.num_decisions
    found = 0
    for _ in range(100):
        prefix = [rng.randrange(2) for _ in range(n - 6)]  # two bottleneck blocks left
        lo = table.option_bounds(prefix)[0][0]
        if lo < space.macs(prefix + [0] * 6):
            found += 1
            assert lo == _brute_bounds(space, prefix + [0])[0]
    assert found >= 10


def test_every_sampled_greedy_and_beam_architecture_is_in_the_band():
    torch.manual_seed(0)
    controller = Controller(SPACE, BUDGET, min_fraction=0.9)
    generator = torch.Generator().manual_seed(0)
    archs = [controller.sample(generator)[0] for _ in range(200)]
    archs += [controller.sample(greedy=True)[0]] + [c for c, _ in controller.beam_search(8)]
    macs = [SPACE.macs(a) for a in archs]
    assert min(macs) >= 0.9 * BUDGET and max(macs) <= BUDGET
    assert len({tuple(a) for a in archs}) > 150  # the mask narrows the policy, it does not collapse it


def test_masked_policy_is_a_distribution_over_feasible_architectures():
    """exp(log_prob) sums to 1 over the architectures in the band and is 0 outside: REINFORCE is exact."""
    space = build_space('resnet_cifar', 8, [4, 16], num_classes=10, input_size=(3, 16, 16))
    archs = list(itertools.product(range(2), repeat=space.num_decisions))
    macs = sorted(space.macs(a) for a in archs)
    budget = macs[len(macs) // 2]
    torch.manual_seed(0)
    controller = Controller(space, budget, min_fraction=0.8)
    total = 0.0
    for arch in archs:
        p = controller.log_prob(list(arch))[0].exp().item()
        inside = 0.8 * budget <= space.macs(arch) <= budget
        assert inside or p == 0.0, arch
        total += p
    assert total == pytest.approx(1.0, abs=1e-5)
    choices, log_prob, _ = controller.sample(torch.Generator().manual_seed(3))
    assert log_prob.item() == pytest.approx(controller.log_prob(choices)[0].item(), abs=1e-6)


def test_controller_learns_peaked_reward_under_the_mask():
    torch.manual_seed(0)
    controller = Controller(SPACE, BUDGET)
    reinforce = Reinforce(controller, lr=1e-3, entropy_weight=1e-3, baseline_decay=0.9)
    generator = torch.Generator().manual_seed(0)
    assert controller.sample(greedy=True)[0] != TARGET
    for step in range(600):
        archs = [controller.sample(generator)[0] for _ in range(4)]
        assert all(SPACE.macs(choices) <= BUDGET for choices in archs)
        reinforce.update(archs, [sum(a == b for a, b in zip(choices, TARGET)) / len(TARGET) for choices in archs])
        if step % 25 == 24 and controller.sample(greedy=True)[0] == TARGET:
            break
    assert controller.sample(greedy=True)[0] == TARGET
    assert controller.beam_search(3)[0][0] == TARGET


def test_beam_search_orders_by_log_prob():
    torch.manual_seed(1)
    controller = Controller(SPACE, BUDGET)
    beams = controller.beam_search(5)
    scores = [s for _, s in beams]
    assert scores == sorted(scores, reverse=True) and len({tuple(c) for c, _ in beams}) == 5
    for choices, score in beams:
        assert abs(controller.log_prob(choices)[0].item() - score) < 1e-4


def test_budget_left_input_and_lower_bound_above_the_space():
    controller = Controller(SPACE, 4e6)
    allowed, left = controller.feasible([])
    assert left == pytest.approx((4e6 - SPACE.macs(SPACE.smallest())) / 4e6)
    assert allowed == [True] * 4 + [False]  # a 64-wide stem alone needs 5.4M MACs with the rest at 4
    huge = Controller(SPACE, 1e12)  # a budget above the largest network: the band ends at the largest
    assert huge.lower == 0.9 * SPACE.macs(SPACE.largest())
    highest = [hi for _, hi in SPACE.macs_table().option_bounds([])]
    assert huge.feasible([])[0] == [hi >= huge.lower for hi in highest] and not huge.feasible([])[0][0]


def test_reward_soft_constraint():
    assert budget_reward(0.8, 1e6, 2e6) == 0.8
    assert budget_reward(0.8, 4e6, 2e6) == 0.8 * 2 ** -0.1


def test_fit_to_budget():
    choices = SPACE.fit_to_budget(SPACE.largest(), 2.05e7)
    assert SPACE.macs(choices) <= 2.05e7
    assert any(c > 0 for c in choices)


def test_uniform_warmup_draws_stay_in_the_band_and_cover_it():
    controller = Controller(SPACE, BUDGET)
    generator = torch.Generator().manual_seed(0)
    archs = [controller.uniform(generator) for _ in range(100)]
    macs = [SPACE.macs(a) for a in archs]
    assert min(macs) >= 0.9 * BUDGET and max(macs) <= BUDGET
    assert all(len({a[d] for a in archs}) >= 3 for d in range(SPACE.num_decisions))
