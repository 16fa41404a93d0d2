"""LSTM controller that emits one width choice per decision, trained with REINFORCE.

Input at each step: an embedding of the previous choice, a one-hot of the decision index and the
fraction of the MACs budget left (budget minus the MACs of the smallest network that completes the
choices made so far). Decoders: sampling and beam search.

The policy starts from the band distribution: each decision's logits are the head's output plus the
log of the number of completions of each option that land in the band [min_fraction x budget, budget]
(:class:`aps_zoo.spaces.band.BandSampler`), and the heads start at zero, so the untrained policy draws
uniformly over the band (up to the counts' rounding margin, stated there). Options with no completion
counted, or after which no completion can stay within the budget or reach the band's lower end (exact
bounds of :class:`aps_zoo.spaces.space.MacsTable`), are masked. The prior and the mask depend only on the
choices made so far, so the log-probability of an architecture is that of the masked policy and
REINFORCE stays exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces import SearchSpace
from ..spaces.band import band_sampler


class Controller(nn.Module):
    """Autoregressive width policy over a SearchSpace with a budget-aware input."""

    def __init__(self, space: SearchSpace, budget_macs: float, hidden_size: int = 100, min_fraction: float = 0.9):
        super().__init__()
        self.space = space
        self.budget = float(budget_macs)
        self.table = space.macs_table()
        self.band = band_sampler(space, self.budget, min_fraction)
        self.lower = self.band.lower  # a budget above the largest network counts as that network's MACs
        n = space.num_decisions
        max_options = max(space.num_options(d) for d in range(n))
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(max_options + 1, hidden_size)  # last index = start token
        self.cell = nn.LSTMCell(hidden_size + n + 1, hidden_size)
        self.heads = nn.ModuleList([nn.Linear(hidden_size, space.num_options(d)) for d in range(n)])
        self.register_buffer('onehots', torch.eye(n), persistent=False)
        self.start_token = max_options
        for head in self.heads:  # zero heads: the untrained policy is the band prior
            nn.init.zeros_(head.bias)
            nn.init.zeros_(head.weight)

    def feasible(self, prefix: Sequence[int]) -> Tuple[List[bool], float]:
        """Which options of the next decision keep the band [lower, budget] reachable, and the fraction of
        the budget left (budget minus the smallest MACs of any completion of ``prefix``, clipped to [-1, 1])."""
        allowed, _, left = self._prior(prefix)
        return allowed, left

    def _prior(self, prefix: Sequence[int]) -> Tuple[List[bool], List[float], float]:
        """(allowed options, log completion counts in the band, budget fraction left) of the next decision."""
        bounds = self.table.option_bounds(prefix)
        log_counts = self.band.log_counts(prefix)
        under = [lo <= self.budget for lo, _ in bounds]
        both = [u and hi >= self.lower and n > -math.inf for u, (_, hi), n in zip(under, bounds, log_counts)]
        left = (self.budget - min(lo for lo, _ in bounds)) / self.budget
        # an over-budget prefix (only reached by teacher-forcing an architecture outside the band, whose
        # log-probability is then -inf) masks nothing, so that log-probability stays -inf, not nan
        allowed = both if any(both) else under if any(under) else [True] * len(bounds)
        prior = [n if ok and n > -math.inf else 0.0 for ok, n in zip(allowed, log_counts)]
        return allowed, prior, max(-1.0, min(1.0, left))

    def uniform(self, generator: Optional[torch.Generator] = None) -> List[int]:
        """An architecture drawn uniformly from the band (:class:`aps_zoo.spaces.band.BandSampler`): the
        warm-up's and the random search's distribution, and the untrained policy's."""
        return self.band.sample(generator)

    def _logits(self, state, prev: int, d: int, prefix: Sequence[int]):
        """Masked log-probabilities of decision ``d`` (-inf where infeasible) and the new LSTM state."""
        allowed, prior, left = self._prior(prefix)
        x = torch.cat([self.embed.weight[prev], self.onehots[d], self.onehots.new_tensor([left])]).unsqueeze(0)
        h, c = self.cell(x, state)
        logits = self.heads[d](h).squeeze(0) + torch.tensor(prior, dtype=h.dtype)
        mask = torch.tensor(allowed)
        return F.log_softmax(logits.masked_fill(~mask, -math.inf), -1), (h, c)

    @staticmethod
    def _entropy(logp: torch.Tensor) -> torch.Tensor:
        p = logp.exp()
        return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)

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
        log_probs, entropies = self.log_probs([choices])
        return log_probs[0], entropies[0]

    def log_probs(self, archs: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities and entropies of several architectures, teacher-forced as one batch."""
        return self._batch(len(archs), archs)[1:]

    @torch.no_grad()
    def sample_many(self, count: int, generator: Optional[torch.Generator] = None) -> List[List[int]]:
        """``count`` architectures sampled as one batch (the same distribution as :meth:`sample`)."""
        return self._batch(count, None, generator)[0]

    def _batch(self, k: int, archs: Optional[Sequence[Sequence[int]]], generator=None):
        """Roll out ``k`` sequences at once, teacher-forced on ``archs`` or sampled; returns (choices, summed
        log-probabilities, summed entropies)."""
        z = self.onehots.new_zeros(k, self.hidden_size)
        state, prev, choices = (z, z), [self.start_token] * k, [[] for _ in range(k)]
        log_probs, entropies = [], []
        for d in range(self.space.num_decisions):
            priors = [self._prior(c) for c in choices]
            left = self.onehots.new_tensor([[p[2]] for p in priors])
            x = torch.cat([self.embed.weight[prev], self.onehots[d].expand(k, -1), left], 1)
            state = self.cell(x, state)
            logits = self.heads[d](state[0]) + torch.tensor([p[1] for p in priors], dtype=z.dtype)
            mask = torch.tensor([p[0] for p in priors])
            logp = F.log_softmax(logits.masked_fill(~mask, -math.inf), -1)
            if archs is None:
                chosen = torch.multinomial(logp.detach().exp(), 1, generator=generator)[:, 0]
            else:
                chosen = torch.tensor([a[d] for a in archs])
            log_probs.append(logp.gather(1, chosen[:, None])[:, 0])
            entropies.append(self._entropy(logp))
            prev = chosen.tolist()
            for c, option in zip(choices, prev):
                c.append(option)
        return choices, torch.stack(log_probs).sum(0), torch.stack(entropies).sum(0)

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


NORM_EPS = 1e-3  # advantages are divided by their RMS plus this (rewards are accuracies: 1e-3 is 0.1 point)


@dataclass
class ReinforceStats:
    """What one REINFORCE update leaves for the log: the moving-average baseline and the samples' mean entropy."""
    baseline: float
    entropy: float


class Reinforce:
    """REINFORCE with an entropy bonus, Adam on the controller, several samples per update.

    Baseline: with k >= 2 samples per update, each sample's baseline is the mean reward of the other k - 1
    (leave-one-out: unbiased, and it cancels the supernet's drift between updates); with one sample, a
    moving average of the rewards (decay ``baseline_decay``, the paper's). The moving average is kept
    either way and logged.
    """

    def __init__(self, controller: Controller, lr: float, entropy_weight: float = 4e-3,
                 baseline_decay: float = 0.99, grad_clip: float = 5.0):
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.entropy_weight, self.baseline_decay, self.grad_clip = entropy_weight, baseline_decay, grad_clip
        self.baseline: Optional[float] = None

    def _baselines(self, rewards: Sequence[float]) -> List[float]:
        k = len(rewards)
        if k >= 2:
            return [(sum(rewards) - r) / (k - 1) for r in rewards]
        return [rewards[0] if self.baseline is None else self.baseline]

    def update(self, archs: Sequence[Sequence[int]], rewards: Sequence[float]) -> ReinforceStats:
        """One policy-gradient step from sampled architectures and their rewards (log-probabilities are
        recomputed by teacher forcing: the same as when they were sampled, the policy has not moved)."""
        advantages = [r - b for r, b in zip(rewards, self._baselines(rewards))]
        # k >= 2: advantages in units of their RMS (the step no longer depends on how far apart rewards are)
        scale = math.sqrt(sum(a * a for a in advantages) / len(advantages)) + NORM_EPS if len(advantages) > 1 else 1.0
        log_probs, entropies = self.controller.log_probs(archs)
        weights = torch.tensor(advantages, dtype=log_probs.dtype) / scale
        loss = -(weights * log_probs).mean() - self.entropy_weight * entropies.mean()
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
        self.optimizer.step()
        for r in rewards:
            self.baseline = r if self.baseline is None else \
                self.baseline_decay * self.baseline + (1 - self.baseline_decay) * r
        return ReinforceStats(self.baseline, entropies.mean().item())

    def state_dict(self):
        """Controller, optimizer and baseline state for a checkpoint."""
        return {'controller': self.controller.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'baseline': self.baseline}

    def load_state_dict(self, state) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.controller.load_state_dict(state['controller'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.baseline = state['baseline']
