"""Search strategies: what proposes architectures to a trained supernet, apart from the supernet trainer.

The shape follows timm's scheduler package: a small base class and a factory by name
(:func:`create_strategy`, ``search.strategy`` in a recipe). The search loop (:mod:`aps_zoo.search.loop`)
trains the supernet on :meth:`SearchStrategy.train_arch` after warm-up, then runs each epoch's strategy
phase: ``ask`` for architectures, score them on the held-out split, ``tell`` the scores. Decoding asks
:meth:`SearchStrategy.propose` for N candidates and keeps the best the supernet scores.

- ``reinforce`` (the paper's): an LSTM policy over the band (:class:`~aps_zoo.search.controller.Controller`),
  trained with REINFORCE; the supernet trains on its samples, mixed with band samples
  (``search.band_train_fraction``; 0 is the paper's policy-only training).
- ``random``: architectures drawn uniformly from the band; keeps the best scored so far.
- ``evolution`` (as OFA and SPOS do on a trained supernet; aging evolution, Real et al. 2019): a
  population seeded from the band; each child is a tournament winner's mutation, or a crossover of two
  winners, kept inside the band; the oldest member leaves when a child joins. The supernet trains on
  band samples (SPOS's uniform single-path training).

Every strategy samples on the CPU with its own seeded generator and runs on the main process only; its
state is plain (tensors, numbers, lists) for the checkpoint.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Type

import torch

from ..spaces import SearchSpace
from ..spaces.band import band_sampler
from .controller import Controller, Reinforce

Arch = List[int]
MAX_TRIES = 50  # draws of a child before it is replaced by a band sample
# Adam lr x the search's controller updates when search.controller.lr is null: the policy moves as far in a short
# search as in a long one. At 0.5, 80 updates of 8 samples moved the policy a fifth of the way up a 3-point
# reward spread read through 256-image noise (the synthetic reward of tests/test_strategies.py); the explicit
# lrs of the shipped ImageNet and CIFAR recipes follow the same rule (lr x updates ~ 0.5).
POLICY_TRAVEL = 0.5


def policy_lr(search) -> float:
    """The controller's Adam lr: ``search.controller.lr``, or POLICY_TRAVEL over the updates of the search."""
    c = search.controller
    if c.lr is not None:
        return c.lr
    return POLICY_TRAVEL / max(1, (search.epochs - search.warmup_epochs) * c.steps_per_epoch)


class SearchStrategy:
    """Base class: band sampling, a seeded CPU generator and an archive of the best scored architectures."""
    name = ''
    ARCHIVE = 256  # best scored architectures kept

    def __init__(self, space: SearchSpace, search, seed: int):
        self.space, self.settings = space, search
        self.band = band_sampler(space, search.budget_macs, search.min_budget_fraction)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch = search.controller.samples_per_update
        self.archive: List[List] = []  # [choices, score], best first, at most ``ARCHIVE`` entries

    def band_arch(self) -> Arch:
        """An architecture drawn uniformly from the band."""
        return self.band.sample(self.generator)

    def _uniform(self) -> float:
        """A draw from U[0, 1) of the strategy's generator."""
        return float(torch.rand((), generator=self.generator))

    def train_arch(self) -> Arch:
        """The architecture of the next supernet step after warm-up (default: a band sample)."""
        return self.band_arch()

    def ask(self) -> List[Arch]:
        """Architectures to score for the next update."""
        raise NotImplementedError

    def tell(self, archs: Sequence[Arch], scores: Sequence[float]) -> Dict[str, float]:
        """Learn from the scores of what :meth:`ask` returned; returns log fields."""
        self._remember(archs, scores)
        return {}

    def _remember(self, archs: Sequence[Arch], scores: Sequence[float]) -> None:
        known = {tuple(a) for a, _ in self.archive}
        self.archive += [[list(a), float(s)] for a, s in zip(archs, scores) if tuple(a) not in known]
        self.archive.sort(key=lambda e: -e[1])
        del self.archive[self.ARCHIVE:]

    def best(self) -> Arch:
        """The strategy's current pick (logged each epoch as the greedy architecture)."""
        return list(self.archive[0][0]) if self.archive else self.band_arch()

    def propose(self, count: int) -> List[Arch]:
        """Up to ``count`` distinct architectures for decoding: the archive's best, then band samples."""
        return _fill([a for a, _ in self.archive], count, self.band_arch)

    def state_dict(self) -> Dict:
        """Plain state for a checkpoint."""
        return {'generator': self.generator.get_state(), 'archive': [list(e) for e in self.archive]}

    def load_state_dict(self, state: Dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.generator.set_state(state['generator'])
        self.archive = [[list(a), float(s)] for a, s in state['archive']]


DECODERS = ('beam', 'sample')  # search.decode: the reinforce policy's proposals at decoding


class ReinforceStrategy(SearchStrategy):
    """The paper's: an LSTM policy over the band, REINFORCE on batches of ``samples_per_update``."""
    name = 'reinforce'

    def __init__(self, space: SearchSpace, search, seed: int):
        super().__init__(space, search, seed)
        c = search.controller
        with torch.random.fork_rng(devices=[]):  # the policy's initial weights follow ``seed``, not the global RNG
            torch.manual_seed(seed)
            self.controller = Controller(space, search.budget_macs, c.hidden_size, search.min_budget_fraction)
        self.reinforce = Reinforce(self.controller, policy_lr(search), c.entropy_weight, c.baseline_decay, c.grad_clip)

    @torch.no_grad()
    def train_arch(self) -> Arch:
        """The policy's sample, or with probability ``search.band_train_fraction`` a band sample: the supernet
        keeps training the whole band (as SPOS), so it can still rank what the policy has stopped sampling."""
        if self._uniform() < self.settings.band_train_fraction:
            return self.band_arch()
        return self.controller.sample(self.generator)[0]

    def ask(self) -> List[Arch]:
        return self.controller.sample_many(self.batch, self.generator)

    def tell(self, archs: Sequence[Arch], scores: Sequence[float]) -> Dict[str, float]:
        self._remember(archs, scores)
        stats = self.reinforce.update(archs, scores)
        return {'baseline': stats.baseline, 'entropy': stats.entropy}

    @torch.no_grad()
    def best(self) -> Arch:
        return self.controller.sample(greedy=True)[0]

    @torch.no_grad()
    def propose(self, count: int) -> List[Arch]:
        """The policy's top architectures: beam search (``search.decode: beam``) or its greedy pick then
        samples (``sample``)."""
        if self.settings.decode == 'beam':
            return [a for a, _ in self.controller.beam_search(count)]
        return _fill([self.best()], count, self.train_arch)

    def state_dict(self) -> Dict:
        return {**super().state_dict(), 'reinforce': self.reinforce.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.reinforce.load_state_dict(state['reinforce'])


class RandomStrategy(SearchStrategy):
    """Random search over the band: every proposal is a band sample; the best scored are kept."""
    name = 'random'

    def ask(self) -> List[Arch]:
        return [self.band_arch() for _ in range(self.batch)]


class EvolutionStrategy(SearchStrategy):
    """Aging evolution inside the band with tournament selection, mutation and crossover."""
    name = 'evolution'

    def __init__(self, space: SearchSpace, search, seed: int):
        super().__init__(space, search, seed)
        self.evo = search.evolution
        self.population: List[List] = []  # [choices, score], oldest first

    def _winner(self) -> Arch:
        picks = torch.randint(len(self.population), (min(self.evo.tournament, len(self.population)),),
                              generator=self.generator).tolist()
        return list(max((self.population[i] for i in picks), key=lambda e: e[1])[0])

    def _mutate(self, arch: Arch) -> Arch:
        child = list(arch)
        for d in range(len(child)):
            if self._uniform() < self.evo.mutation_prob:
                child[d] = int(torch.randint(self.space.num_options(d), (), generator=self.generator))
        return child

    def _child(self) -> Arch:
        """A mutated tournament winner, or a crossover of two; inside the band (else a band sample)."""
        for _ in range(MAX_TRIES):
            parent = self._winner()
            if self._uniform() < self.evo.crossover_prob:
                other = self._winner()
                parent = [a if self._uniform() < 0.5 else b for a, b in zip(parent, other)]
            child = self._mutate(parent)
            if child != parent or self.evo.mutation_prob == 0:
                if self.band.contains(child):
                    return child
        return self.band_arch()

    def ask(self) -> List[Arch]:
        if len(self.population) < self.evo.population:
            return [self.band_arch() for _ in range(self.batch)]
        return [self._child() for _ in range(self.batch)]

    def tell(self, archs: Sequence[Arch], scores: Sequence[float]) -> Dict[str, float]:
        self._remember(archs, scores)
        self.population += [[list(a), float(s)] for a, s in zip(archs, scores)]
        del self.population[:max(0, len(self.population) - self.evo.population)]
        return {'population_best': max(s for _, s in self.population)}

    def best(self) -> Arch:
        if not self.population:
            return self.band_arch()
        return list(max(self.population, key=lambda e: e[1])[0])

    def propose(self, count: int) -> List[Arch]:
        """The population, best first, then the archive, then children of the population."""
        ranked = [a for a, _ in sorted(self.population, key=lambda e: -e[1])] + [a for a, _ in self.archive]
        return _fill(ranked, count, self._child if self.population else self.band_arch)

    def state_dict(self) -> Dict:
        return {**super().state_dict(), 'population': [list(e) for e in self.population]}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.population = [[list(a), float(s)] for a, s in state['population']]


def _fill(first: Sequence[Arch], count: int, draw) -> List[Arch]:
    """Up to ``count`` distinct architectures: ``first`` in order, then draws (a bounded number of tries)."""
    out, seen = [], set()
    for arch in first:
        if len(out) < count and tuple(arch) not in seen:
            out.append(list(arch))
            seen.add(tuple(arch))
    for _ in range(20 * count):
        if len(out) >= count:
            break
        arch = draw()
        if tuple(arch) not in seen:
            out.append(arch)
            seen.add(tuple(arch))
    return out


STRATEGIES: Dict[str, Type[SearchStrategy]] = {s.name: s for s in (ReinforceStrategy, RandomStrategy,
                                                                    EvolutionStrategy)}


def create_strategy(name: str, space: SearchSpace, search, seed: int) -> SearchStrategy:
    """The strategy ``name`` (``search.strategy``) for ``space`` under a recipe's ``search`` section."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown search strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, search, seed)
