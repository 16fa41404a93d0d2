"""LSTM controller that emits one width choice per decision, trained with REINFORCE.

Input at each step: an embedding of the previous choice, a one-hot of the decision index and the
fraction of the MACs budget left (budget minus the MACs of the smallest network that completes the
choices made so far). Decoders: sampling and beam search.

Every decoder samples under a hard feasibility rule: at each decision the options after which no
completion can stay within the budget (even with the smallest MACs for the rest), or reach
``min_fraction`` x budget (even with the largest), are masked, and the log-probabilities are
renormalised over the options left. The mask depends only on the choices made so far, so the
log-probability of an architecture is that of the masked policy and REINFORCE stays exact. The
bounds are exact (:class:`aps_zoo.spaces.space.MacsTable`); when the band is narrower than one
decision's step and no option reaches the lower bound, the lower bound is dropped for that decision
(the budget never is).
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

    def __init__(self, space: SearchSpace, budget_macs: float, hidden_size: int = 100, min_fraction: float = 0.9):
        super().__init__()
        self.space = space
        self.budget = float(budget_macs)
        self.table = space.macs_table()
        # the lower end of the band; a budget above the largest network counts as that network's MACs
        self.lower = min_fraction * min(self.budget, self.table.highest[0][()])
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

    def feasible(self, prefix: Sequence[int]) -> Tuple[List[bool], float]:
        """Which options of the next decision keep the band [lower, budget] reachable, and the fraction of
        the budget left (budget minus the smallest MACs of any completion of ``prefix``, clipped to [-1, 1])."""
        bounds = self.table.option_bounds(prefix)
        under = [lo <= self.budget for lo, _ in bounds]
        both = [u and hi >= self.lower for u, (_, hi) in zip(under, bounds)]
        left = (self.budget - min(lo for lo, _ in bounds)) / self.budget
        # an over-budget prefix (only reached by teacher-forcing an architecture outside the band, whose
        # log-probability is then -inf) masks nothing, so that log-probability stays -inf, not nan
        allowed = both if any(both) else under if any(under) else [True] * len(bounds)
        return allowed, max(-1.0, min(1.0, left))

    def uniform(self, generator: Optional[torch.Generator] = None) -> List[int]:
        """An architecture drawn uniformly among the feasible options of each decision in turn (warm-up):
        the supernet trains the subnets of the band the search will sample from."""
        choices: List[int] = []
        for _ in range(self.space.num_decisions):
            allowed = [c for c, ok in enumerate(self.feasible(choices)[0]) if ok]
            choices.append(allowed[int(torch.randint(len(allowed), (1,), generator=generator))])
        return choices

    def _logits(self, state, prev: int, d: int, prefix: Sequence[int]):
        """Masked log-probabilities of decision ``d`` (-inf where infeasible) and the new LSTM state."""
        allowed, left = self.feasible(prefix)
        x = torch.cat([self.embed.weight[prev], self.onehots[d], self.onehots.new_tensor([left])]).unsqueeze(0)
        h, c = self.cell(x, state)
        logits = self.heads[d](h).squeeze(0)
        mask = torch.tensor(allowed, device=logits.device)
        return F.log_softmax(logits.masked_fill(~mask, -math.inf), -1), (h, c)

    @staticmethod
    def _entropy(logp: torch.Tensor) -> torch.Tensor:
        p = logp.exp()
        return -(p * logp.masked_fill(p == 0, 0.0)).sum()

    def _initial_state(self):
        z = self.onehots.new_zeros(1, self.hidden_size)
        return z, z

    def sample(self, generator: Optional[torch.Generator] = None, greedy: bool = False
               ) -> Tuple[List[int], torch.Tensor, torch.Tensor]:
        """Sample (or take the argmax of) an architecture; returns choices, summed log-prob, summed entropy."""
        state, prev, choices = self._initial_state(), self.start_token, []
        log_probs, entropies = [], []
        for d in range(self.space.num_decisions):
            logp, state = self._logits(state, prev, d, choices)
            if greedy:
                c = int(logp.argmax())
            else:
                c = int(torch.multinomial(logp.detach().exp(), 1, generator=generator))
            log_probs.append(logp[c])
            entropies.append(self._entropy(logp))
            choices.append(c)
            prev = c
        return choices, torch.stack(log_probs).sum(), torch.stack(entropies).sum()

    def log_prob(self, choices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability and entropy of a given architecture (teacher forcing)."""
        state, prev = self._initial_state(), self.start_token
        log_probs, entropies = [], []
        for d, c in enumerate(choices):
            logp, state = self._logits(state, prev, d, choices[:d])
            log_probs.append(logp[c])
            entropies.append(self._entropy(logp))
            prev = c
        return torch.stack(log_probs).sum(), torch.stack(entropies).sum()

    @torch.no_grad()
    def beam_search(self, top_k: int) -> List[Tuple[List[int], float]]:
        """The ``top_k`` most probable feasible architectures (choices, masked log-prob), best first."""
        beams = [([], 0.0, self._initial_state(), self.start_token)]
        for d in range(self.space.num_decisions):
            expanded = []
            for choices, score, state, prev in beams:
                logp, new_state = self._logits(state, prev, d, choices)
                for c in range(logp.numel()):
                    if logp[c] > -math.inf:
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
    """What one REINFORCE step saw: reward, baseline and policy entropy."""
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
        """Controller, optimizer and baseline state for a checkpoint."""
        return {'controller': self.controller.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'baseline': self.baseline}

    def load_state_dict(self, state) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.controller.load_state_dict(state['controller'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.baseline = state['baseline']
