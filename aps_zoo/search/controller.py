"""LSTM controller that emits one width choice per decision, trained with REINFORCE.

Input at each step: an embedding of the previous choice, a one-hot of the decision index and the
fraction of the MACs budget left (budget minus the MACs of the smallest network that completes the
choices made so far). Decoders: sampling and beam search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces import SearchSpace


class Controller(nn.Module):
    """Autoregressive width policy over a SearchSpace with a budget-aware input."""

    def __init__(self, space: SearchSpace, budget_macs: float, hidden_size: int = 100):
        super().__init__()
        self.space = space
        self.budget = float(budget_macs)
        n = space.num_decisions
        max_options = max(space.num_options(d) for d in range(n))
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(max_options + 1, hidden_size)  # last index = start token
        self.cell = nn.LSTMCell(hidden_size + n + 1, hidden_size)
        self.heads = nn.ModuleList([nn.Linear(hidden_size, space.num_options(d)) for d in range(n)])
        self.register_buffer('onehots', torch.eye(n), persistent=False)
        self.start_token = max_options
        for head in self.heads:  # start near uniform
            nn.init.zeros_(head.bias)
            head.weight.data.mul_(0.1)

    def budget_left(self, prefix: Sequence[int]) -> float:
        """Fraction of the budget left if the remaining decisions took their smallest candidates, in [-1, 1]."""
        choices = list(prefix) + [0] * (self.space.num_decisions - len(prefix))
        return max(-1.0, (self.budget - self.space.macs(choices)) / self.budget)

    def _logits(self, state, prev: int, d: int, prefix: Sequence[int]):
        x = torch.cat([self.embed.weight[prev], self.onehots[d],
                       self.onehots.new_tensor([self.budget_left(prefix)])]).unsqueeze(0)
        h, c = self.cell(x, state)
        return self.heads[d](h).squeeze(0), (h, c)

    def _initial_state(self):
        z = self.onehots.new_zeros(1, self.hidden_size)
        return z, z

    def sample(self, generator: Optional[torch.Generator] = None, greedy: bool = False
               ) -> Tuple[List[int], torch.Tensor, torch.Tensor]:
        """Sample (or take the argmax of) an architecture; returns choices, summed log-prob, summed entropy."""
        state, prev, choices = self._initial_state(), self.start_token, []
        log_probs, entropies = [], []
        for d in range(self.space.num_decisions):
            logits, state = self._logits(state, prev, d, choices)
            logp = F.log_softmax(logits, -1)
            if greedy:
                c = int(logp.argmax())
            else:
                c = int(torch.multinomial(logp.detach().exp(), 1, generator=generator))
            log_probs.append(logp[c])
            entropies.append(-(logp.exp() * logp).sum())
            choices.append(c)
            prev = c
        return choices, torch.stack(log_probs).sum(), torch.stack(entropies).sum()

    def log_prob(self, choices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability and entropy of a given architecture (teacher forcing)."""
        state, prev = self._initial_state(), self.start_token
        log_probs, entropies = [], []
        for d, c in enumerate(choices):
            logits, state = self._logits(state, prev, d, choices[:d])
            logp = F.log_softmax(logits, -1)
            log_probs.append(logp[c])
            entropies.append(-(logp.exp() * logp).sum())
            prev = c
        return torch.stack(log_probs).sum(), torch.stack(entropies).sum()

    @torch.no_grad()
    def beam_search(self, top_k: int) -> List[Tuple[List[int], float]]:
        """The ``top_k`` most probable architectures (choices, log-prob), best first."""
        beams = [([], 0.0, self._initial_state(), self.start_token)]
        for d in range(self.space.num_decisions):
            expanded = []
            for choices, score, state, prev in beams:
                logits, new_state = self._logits(state, prev, d, choices)
                logp = F.log_softmax(logits, -1)
                for c in range(logp.numel()):
                    expanded.append((choices + [c], score + float(logp[c]), new_state, c))
            expanded.sort(key=lambda b: b[1], reverse=True)
            beams = expanded[:top_k]
        return [(choices, score) for choices, score, _, _ in beams]


def budget_reward(accuracy: float, macs: float, budget: float, under_exponent: float = 0.0,
                  over_exponent: float = -0.1) -> float:
    """MnasNet-style soft constraint: accuracy x (MACs / budget)^e, e by side of the budget."""
    e = under_exponent if macs <= budget else over_exponent
    return accuracy * math.pow(macs / budget, e)


@dataclass
class ReinforceStats:
    reward: float
    baseline: float
    advantage: float
    entropy: float
    loss: float


class Reinforce:
    """REINFORCE with a moving-average baseline and an entropy bonus, Adam on the controller."""

    def __init__(self, controller: Controller, lr: float = 1.6e-4, entropy_weight: float = 4e-3,
                 baseline_decay: float = 0.99, grad_clip: float = 5.0):
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.entropy_weight, self.baseline_decay, self.grad_clip = entropy_weight, baseline_decay, grad_clip
        self.baseline: Optional[float] = None

    def step(self, log_prob: torch.Tensor, entropy: torch.Tensor, reward: float) -> ReinforceStats:
        """One policy-gradient update from one sampled architecture and its reward."""
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        loss = -advantage * log_prob - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
        self.optimizer.step()
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        return ReinforceStats(reward, self.baseline, advantage, entropy.item(), loss.item())

    def state_dict(self):
        return {'controller': self.controller.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'baseline': self.baseline}

    def load_state_dict(self, state) -> None:
        self.controller.load_state_dict(state['controller'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.baseline = state['baseline']
