"""Uniform sampling over the architectures of a space whose MACs lie in a band [lower, upper].

Picking each decision uniformly among the options that keep the band reachable is not uniform over the
band: early decisions take wide options and the last ones are forced to the minimum. The exact way is to
weight each option by the number of completions that land in the band. :class:`BandSampler` counts them
with a dynamic programme over the decisions of a :class:`~aps_zoo.spaces.space.MacsTable`, whose state is
the choices of the earlier decisions a later term still reads (the table's ``frontier``) plus the MACs
accumulated so far, in buckets of ``width`` MACs.

Bucket error and how sampling stays exact: every decision's MACs term is rounded down to whole buckets,
so the rounded total of an architecture is below its exact MACs by less than ``num_decisions x width``.
The counts are exact for the architectures whose *rounded* total lies in the widened window
``(lower - num_decisions x width, upper]`` (in MACs, a superset of the band that reaches at most
``num_decisions x width`` = ``(upper - lower) / resolution`` beyond each end of the band). Drawing
from those counts is uniform over that superset; a draw outside the exact band is rejected and drawn
again, so :meth:`BandSampler.sample` is exactly uniform over the band (about ``2 / resolution`` of the
draws are redrawn). :meth:`BandSampler.log_counts` (the policy's prior) counts the superset.
"""
from __future__ import annotations

import math
from functools import lru_cache
from itertools import product
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .space import SearchSpace, SearchSpaceError

RESOLUTION = 40  # buckets of (upper - lower) / (RESOLUTION x decisions): the superset is 5% wider than the band
MAX_ATTEMPTS = 10_000


class BandSampler:
    """Exactly uniform draws from the architectures of ``space`` with MACs in [lower, upper].

    ``upper`` is the budget; ``lower`` is ``min_fraction`` x the budget, where a budget above the largest
    network counts as that network's MACs. When no architecture's rounded MACs reach the band, the lower
    end is dropped (every architecture within the budget).
    """

    def __init__(self, space: SearchSpace, budget_macs: float, min_fraction: float = 0.9,
                 resolution: int = RESOLUTION):
        self.space, self.table = space, space.macs_table()
        self.num_options = self.table.num_options
        n = len(self.num_options)
        self.upper = float(budget_macs)
        self.top = min(self.upper, self.table.highest[0][()])  # nothing is above the largest network
        self.lower = min_fraction * self.top
        self.width = max(self.top - self.lower, 1e-3 * self.top) / (resolution * n)
        self._build()
        if self.total() == 0 and self.lower > 0:
            self.lower = 0.0
            self._build()

    def _build(self) -> None:
        """Tail counts ``cumulative[d][state][k]``: completions of decisions d.. whose rounded MACs are <= k."""
        n = len(self.num_options)
        self.window = (max(0, math.floor(self.lower / self.width) - n + 1), math.floor(self.top / self.width))
        size = self.window[1] + 1
        tails: Dict[Tuple[int, ...], np.ndarray] = {(): np.zeros(size)}
        tails[()][0] = 1.0
        self.cumulative: List[Dict[Tuple[int, ...], np.ndarray]] = [{} for _ in range(n)] + [
            {(): np.cumsum(tails[()])}]
        for d in range(n - 1, -1, -1):
            front, nxt = self.table.frontier[d], self.table.frontier[d + 1]
            new: Dict[Tuple[int, ...], np.ndarray] = {}
            for state in product(*(range(self.num_options[a]) for a in front)):
                choices = dict(zip(front, state))
                counts = np.zeros(size)
                for c in range(self.num_options[d]):
                    choices[d] = c
                    shift = self._bucket(d, c, choices)
                    if shift < size:
                        counts[shift:] += tails[tuple(choices[a] for a in nxt)][:size - shift]
                new[state] = counts
                self.cumulative[d][state] = np.cumsum(counts)
            tails = new

    def _bucket(self, d: int, c: int, choices) -> int:
        """Decision ``d``'s MACs term in whole buckets (rounded down)."""
        return int(self.table.local(d, c, choices) // self.width)

    def _in_window(self, cumulative: np.ndarray, done: int) -> float:
        """Completions whose rounded MACs plus ``done`` buckets lie in the window."""
        lo, hi = self.window[0] - done, min(self.window[1] - done, len(cumulative) - 1)
        if hi < 0:
            return 0.0
        return float(cumulative[hi] - (cumulative[lo - 1] if lo > 0 else 0.0))

    def total(self) -> float:
        """How many architectures the counts hold (those of the band plus the rounding margin)."""
        return self._in_window(self.cumulative[0][()], 0)

    def option_counts(self, prefix: Sequence[int]) -> List[float]:
        """For each option ``c`` of the next decision, the number of completions of ``prefix + [c]`` counted
        in the band (float64: exact below 2^53, relative error 1e-16 above)."""
        done = sum(self._bucket(i, c, prefix) for i, c in enumerate(prefix))
        return self._counts(dict(enumerate(prefix)), done)[0]

    def _counts(self, choices: Dict[int, int], done: int) -> Tuple[List[float], List[int]]:
        """Counts of each option of the decision after ``choices`` (a prefix as {decision: option}, ``done``
        its buckets), and each option's buckets."""
        d = len(choices)
        counts, buckets = [], []
        for c in range(self.num_options[d]):
            choices[d] = c
            key = tuple(choices[a] for a in self.table.frontier[d + 1])
            buckets.append(self._bucket(d, c, choices))
            counts.append(self._in_window(self.cumulative[d + 1][key], done + buckets[-1]))
        del choices[d]
        return counts, buckets

    def log_counts(self, prefix: Sequence[int]) -> List[float]:
        """``log`` of :meth:`option_counts` (``-inf`` where no completion is counted): the policy's prior."""
        return [math.log(x) if x > 0 else -math.inf for x in self.option_counts(prefix)]

    def contains(self, choices: Sequence[int]) -> bool:
        """Whether an architecture's exact MACs lie in the band."""
        return self.lower <= self.table.total(choices) <= self.upper

    def _draw(self, generator: Optional[torch.Generator]) -> List[int]:
        """One architecture, uniform over those the counts hold."""
        choices: Dict[int, int] = {}
        done = 0
        uniforms = torch.rand(len(self.num_options), generator=generator, dtype=torch.float64).tolist()
        for d, u in enumerate(uniforms):
            counts, buckets = self._counts(choices, done)
            c = _pick(counts, u * sum(counts))
            choices[d], done = c, done + buckets[c]
        return [choices[d] for d in range(len(self.num_options))]

    def sample(self, generator: Optional[torch.Generator] = None) -> List[int]:
        """An architecture drawn uniformly from the band (rejection of the rounding margin: exact)."""
        for _ in range(MAX_ATTEMPTS):
            choices = self._draw(generator)
            if self.contains(choices):
                return choices
        raise SearchSpaceError(f"no architecture in {MAX_ATTEMPTS} draws has MACs in the band "
                               f"[{self.lower:.4g}, {self.upper:.4g}]; lower search.min_budget_fraction")


def _pick(counts: Sequence[float], target: float) -> int:
    """The option whose share of the cumulative ``counts`` holds ``target`` (never an option counted 0)."""
    acc = 0.0
    for c, x in enumerate(counts):
        acc += x
        if target < acc and x > 0:
            return c
    return max(c for c, x in enumerate(counts) if x > 0)


@lru_cache(maxsize=16)
def band_sampler(space: SearchSpace, budget_macs: float, min_fraction: float = 0.9) -> BandSampler:
    """The (cached) :class:`BandSampler` of a space, budget and band fraction."""
    return BandSampler(space, budget_macs, min_fraction)
