"""Controller: learns a peaked synthetic reward; beam search and budget-aware input behave."""
import torch

from aps_zoo.search.controller import Controller, Reinforce, budget_reward
from aps_zoo.spaces import build_space

SPACE = build_space('resnet_cifar', 20, [4, 8, 16, 32, 64], num_classes=10, input_size=(3, 32, 32))
TARGET = [1, 3, 0, 2, 4, 1, 1, 0, 3, 2, 4, 4, 0, 1, 2, 3, 4, 0, 1]


def test_controller_learns_peaked_reward():
    torch.manual_seed(0)
    controller = Controller(SPACE, 2.05e7)
    reinforce = Reinforce(controller, lr=1e-3, entropy_weight=1e-3, baseline_decay=0.9)
    generator = torch.Generator().manual_seed(0)
    assert controller.sample(greedy=True)[0] != TARGET
    for step in range(400):
        choices, log_prob, entropy = controller.sample(generator)
        reinforce.step(log_prob, entropy, sum(a == b for a, b in zip(choices, TARGET)) / len(TARGET))
        if step % 25 == 24 and controller.sample(greedy=True)[0] == TARGET:
            break
    assert controller.sample(greedy=True)[0] == TARGET
    assert controller.beam_search(3)[0][0] == TARGET


def test_beam_search_orders_by_log_prob():
    torch.manual_seed(1)
    controller = Controller(SPACE, 2.05e7)
    beams = controller.beam_search(5)
    scores = [s for _, s in beams]
    assert scores == sorted(scores, reverse=True) and len({tuple(c) for c, _ in beams}) == 5
    for choices, score in beams:
        assert abs(controller.log_prob(choices)[0].item() - score) < 1e-4


def test_budget_left_input():
    controller = Controller(SPACE, 2.05e7)
    smallest = SPACE.macs(SPACE.smallest())
    assert abs(controller.budget_left([]) - (2.05e7 - smallest) / 2.05e7) < 1e-9
    assert controller.budget_left([4] * SPACE.num_decisions) == -1.0  # clipped far over budget


def test_reward_soft_constraint():
    assert budget_reward(0.8, 1e6, 2e6) == 0.8
    assert budget_reward(0.8, 4e6, 2e6) == 0.8 * 2 ** -0.1


def test_fit_to_budget():
    choices = SPACE.fit_to_budget(SPACE.largest(), 2.05e7)
    assert SPACE.macs(choices) <= 2.05e7
    assert any(c > 0 for c in choices)
