"""Search spaces: candidate widths per layer, how layers group into controller decisions, budgets."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import Dict, List, Optional, Sequence, Tuple

from ..aps.projection import required_meta_width
from ..channels import ChannelConfig, NetworkLayout, network_layout, tied_entries, uniform_widths
from ..flops import count_macs, layer_table
from .timm_backbones import check_layout_matches_timm


class SearchSpaceError(ValueError):
    """A space that cannot be built or a budget it cannot meet."""


@dataclass(frozen=True)
class SearchSpace:
    """Candidate widths of every config entry and the decisions the controller makes.

    ``decisions[d]`` lists the entries set by decision ``d``; all of them take the candidate
    at the same index of their own candidate list (so a blockwise decision can widen a
    bottleneck's 1x1 output by 4x while it sets the 3x3 width).
    """
    family: str
    depth: int
    candidates: Tuple[Tuple[int, ...], ...]
    decisions: Tuple[Tuple[int, ...], ...]
    meta_widths: Tuple[int, ...]
    num_classes: int
    input_size: Tuple[int, int, int]
    overlap: float = 1.0

    @property
    def layout(self):
        """The family's NetworkLayout."""
        return network_layout(self.family, self.depth)

    @property
    def num_decisions(self) -> int:
        """How many width choices an architecture makes."""
        return len(self.decisions)

    def num_options(self, decision: int) -> int:
        """How many candidate widths decision ``decision`` has."""
        return len(self.candidates[self.decisions[decision][0]])

    def widths(self, choices: Sequence[int]) -> List[int]:
        """Per-entry widths of the architecture given one candidate index per decision."""
        if len(choices) != self.num_decisions:
            raise SearchSpaceError(f"expected {self.num_decisions} choices, got {len(choices)}")
        widths = [0] * len(self.candidates)
        for d, c in enumerate(choices):
            if not 0 <= c < self.num_options(d):
                raise SearchSpaceError(f"choice {c} of decision {d} is out of range 0..{self.num_options(d) - 1}")
            for e in self.decisions[d]:
                widths[e] = self.candidates[e][c]
        return widths

    def choices_for(self, widths: Sequence[int]) -> List[int]:
        """Inverse of :meth:`widths`; raises naming the entry whose width is not a candidate."""
        choices = []
        for d, entries in enumerate(self.decisions):
            e = entries[0]
            if widths[e] not in self.candidates[e]:
                raise SearchSpaceError(f"width {widths[e]} of entry {e} is not a candidate {self.candidates[e]}")
            c = self.candidates[e].index(widths[e])
            bad = [j for j in entries if widths[j] != self.candidates[j][c]]
            if bad:
                raise SearchSpaceError(f"entries {entries} are one decision; widths {[widths[j] for j in entries]} "
                                       f"do not pick the same candidate")
            choices.append(c)
        return choices

    def config(self, choices: Sequence[int], provenance: Optional[Dict] = None) -> ChannelConfig:
        """The ChannelConfig of an architecture of this space."""
        return ChannelConfig(self.family, self.widths(choices), self.depth, self.num_classes, self.input_size,
                             provenance or {})

    def macs(self, choices: Sequence[int]) -> int:
        """Analytic MACs of the architecture ``choices`` (cached)."""
        return _macs(self, tuple(choices))

    def macs_table(self) -> 'MacsTable':
        """The space's MACs as per-decision and per-decision-pair tables (exact, analytic)."""
        return _macs_table(self)

    def smallest(self) -> List[int]:
        """The architecture with the smallest candidate at every decision."""
        return [0] * self.num_decisions

    def largest(self) -> List[int]:
        """The architecture with the largest candidate at every decision."""
        return [self.num_options(d) - 1 for d in range(self.num_decisions)]

    def random_choices(self, rng: random.Random) -> List[int]:
        """A uniformly random architecture."""
        return [rng.randrange(self.num_options(d)) for d in range(self.num_decisions)]

    def fit_to_budget(self, choices: Sequence[int], limit: float) -> List[int]:
        """Shrink an architecture until its MACs are within ``limit``, each time stepping down the
        decision whose step saves the most MACs."""
        choices = list(choices)
        while self.macs(choices) > limit and any(choices):
            def saving(d):
                return self.macs(choices) - self.macs(choices[:d] + [choices[d] - 1] + choices[d + 1:])
            best = max((d for d, c in enumerate(choices) if c > 0), key=saving)
            choices[best] -= 1
        return choices

    def check_budget(self, budget_macs: float) -> None:
        """Raise if no architecture of the space fits ``budget_macs``."""
        low = self.macs(self.smallest())
        if budget_macs < low:
            raise SearchSpaceError(f"budget {budget_macs:.4g} MACs is below the smallest network of the space "
                                   f"({low:.4g} MACs at input {self.input_size[1]}x{self.input_size[2]}); "
                                   f"raise search.budget_macs or add smaller candidates")


@lru_cache(maxsize=65536)
def _macs(space: SearchSpace, choices: Tuple[int, ...]) -> int:
    return count_macs(space.config(choices))


class MacsTable:
    """MACs of every architecture of a space as ``sum_d unary[d][c_d] + sum_(a,b) pair[a,b][c_a][c_b]``.

    Built from :func:`aps_zoo.flops.layer_table`: each conv reads one entry and writes one, so its
    MACs depend on at most two decisions (a stride-1 shortcut costs nothing where the two widths are
    equal). On top of the tables, an exact dynamic programme over the decisions in order gives the
    smallest and the largest MACs of any completion of a prefix of choices: the state of decision d is
    the assignment of the earlier decisions that a term with a later decision still reads (at most
    two for the families here), so a bound costs one table lookup per remaining state.
    """

    def __init__(self, space: SearchSpace):
        self.num_options = [space.num_options(d) for d in range(space.num_decisions)]
        n = len(self.num_options)
        self.unary = [[0] * k for k in self.num_options]
        self.pair: Dict[Tuple[int, int], List[List[int]]] = {}
        for (da, db), cost in _layer_terms(space):
            if da is None or db is None or da == db:  # reads the image, writes the logits, or a tied width
                d = da if db is None else db
                for c in range(self.num_options[d]):
                    self.unary[d][c] += cost(c, c)
                continue
            (a, b), swap = sorted((da, db)), da > db
            table = self.pair.setdefault((a, b), [[0] * self.num_options[b] for _ in range(self.num_options[a])])
            for ca, cb in product(range(self.num_options[a]), range(self.num_options[b])):
                table[ca][cb] += cost(cb, ca) if swap else cost(ca, cb)
        self.readers = [[a for (a, b) in self.pair if b == d] for d in range(n)]  # earlier decisions term d reads
        self.frontier = [tuple(sorted({a for (a, b) in self.pair if a < d <= b})) for d in range(n + 1)]
        self.lowest = self._cost_to_go(min)
        self.highest = self._cost_to_go(max)

    def local(self, d: int, c: int, choices: Sequence[int]) -> int:
        """MACs of the terms whose last decision is ``d``, with ``c`` at ``d`` and ``choices`` before it."""
        return self.unary[d][c] + sum(self.pair[a, d][choices[a]][c] for a in self.readers[d])

    def total(self, choices: Sequence[int]) -> int:
        """MACs of a complete architecture."""
        return sum(self.local(d, c, choices) for d, c in enumerate(choices))

    def _cost_to_go(self, pick) -> List[Dict[Tuple[int, ...], int]]:
        """``table[d][state]``: the ``pick`` (min or max) over decisions d.. of their MACs, given the
        choices of ``frontier[d]`` (``state``)."""
        n = len(self.num_options)
        tables: List[Dict[Tuple[int, ...], int]] = [{} for _ in range(n)] + [{(): 0}]
        for d in range(n - 1, -1, -1):
            front, nxt = self.frontier[d], self.frontier[d + 1]
            for state in product(*(range(self.num_options[a]) for a in front)):
                choices = dict(zip(front, state))
                best = []
                for c in range(self.num_options[d]):
                    choices[d] = c
                    best.append(self.local(d, c, choices) + tables[d + 1][tuple(choices[a] for a in nxt)])
                tables[d][state] = pick(best)
        return tables

    def option_bounds(self, prefix: Sequence[int]) -> List[Tuple[int, int]]:
        """(smallest, largest) MACs over every completion of ``prefix + [c]``, for each option ``c`` of the
        next decision."""
        d = len(prefix)
        done = sum(self.local(i, c, prefix) for i, c in enumerate(prefix))
        choices = dict(enumerate(prefix))
        bounds = []
        for c in range(self.num_options[d]):
            choices[d] = c
            key = tuple(choices[a] for a in self.frontier[d + 1])
            here = done + self.local(d, c, choices)
            bounds.append((here + self.lowest[d + 1][key], here + self.highest[d + 1][key]))
        return bounds


def _layer_terms(space: SearchSpace):
    """((decision read, decision written), MACs(c_in option, c_out option)) for every conv and the classifier
    of the layer table (each row names the entries it reads and writes): the stem reads no decision, the
    classifier writes none. The table is built once at widths that differ between untied entries, so every
    shortcut that any architecture can have is in it."""
    decision_of = {e: d for d, entries in enumerate(space.decisions) for e in entries}
    distinct = list(range(1, len(space.candidates) + 1))
    for a, b in tied_entries(space.layout):
        distinct[b] = distinct[a]
    tagged = ChannelConfig(space.family, distinct, space.depth, space.num_classes, space.input_size)
    for row in layer_table(tagged):
        layer = row.layer
        e_in, e_out = layer.in_entry, layer.out_entry
        cin = (lambda c: space.input_size[0]) if e_in is None else space.candidates[e_in].__getitem__
        cout = (lambda c: space.num_classes) if e_out is None else space.candidates[e_out].__getitem__
        skip_equal = layer.role == 'shortcut' and row.batchnorm  # stride 1: identity where widths match

        def cost(ci, co, row=row, layer=layer, cin=cin, cout=cout, skip_equal=skip_equal):
            w_in, w_out = layer.channels(cin(ci), cout(co))
            if skip_equal and w_in == w_out:
                return 0
            return dataclasses.replace(row, c_in=w_in, c_out=w_out, groups=layer.spec.groups(w_in)).macs
        yield (decision_of.get(e_in), decision_of.get(e_out)), cost


@lru_cache(maxsize=64)
def _macs_table(space: SearchSpace) -> MacsTable:
    return MacsTable(space)


def entry_stages(family: str, depth: int) -> List[int]:
    """Stage of every config entry (stem = 0; MobileNetV2's last conv = number of stages)."""
    layout = network_layout(family, depth)
    stages = [0] * layout.num_entries
    for b in layout.blocks:
        for e in b.entries:
            stages[e] = b.stage
    if layout.head_entry is not None:
        stages[layout.head_entry] = layout.blocks[-1].stage + 1
    return stages


def _entry_scale(family: str, depth: int) -> List[float]:
    """Width of each entry relative to its stage's base width, as in the family's standard network (bottleneck
    out x4; an inverted residual's expansion over the width feeding it: MobileNetV2 x6)."""
    layout, standard = network_layout(family, depth), uniform_widths(family, depth)
    scale = [1.0] * layout.num_entries
    for b in layout.blocks:
        if b.kind == 'bottleneck':
            scale[b.entries[-1]] = standard[b.entries[-1]] / standard[b.entries[-2]]
        elif b.kind == 'inverted_residual' and len(b.entries) == 3:
            scale[b.entries[0]] = scale[b.entries[1]] = standard[b.entries[0]] / standard[b.in_entry]
    return scale


def _entry_candidates(family: str, depth: int, candidates: Sequence[int],
                      stage_multipliers: Optional[Sequence[float]]) -> Tuple[Tuple[int, ...], ...]:
    """Each entry's candidate widths: ``candidates`` x its stage multiplier x its entry scale; expansion
    widths follow the stage of the width feeding their block."""
    layout = network_layout(family, depth)
    stages = entry_stages(family, depth)
    num_stages = max(stages) + 1
    mults = list(stage_multipliers) if stage_multipliers else [1.0] * num_stages
    if len(mults) != num_stages:
        raise SearchSpaceError(f"space.stage_multipliers needs {num_stages} values for {family}{depth or ''} "
                               f"(one per stage{', plus the last conv' if layout.head_entry else ''}), "
                               f"got {len(mults)}")
    scale = _entry_scale(family, depth)
    stage_of = list(stages)
    for b in layout.blocks:
        if b.kind == 'inverted_residual' and len(b.entries) == 3:
            stage_of[b.entries[0]] = stage_of[b.entries[1]] = stages[b.in_entry]
    cands = tuple(tuple(max(1, int(round(c * mults[stage_of[e]] * scale[e]))) for c in candidates)
                  for e in range(layout.num_entries))
    for e, cs in enumerate(cands):
        if len(set(cs)) != len(cs):
            raise SearchSpaceError(f"entry {e}: candidates {cs} collapse to duplicates after scaling")
    return cands


def _decisions(layout: NetworkLayout, cands: Sequence[Sequence[int]], blockwise: bool) -> Tuple[Tuple[int, ...], ...]:
    """The entries each decision sets: one per entry (or per block when ``blockwise``); tied entries share one."""
    groups: List[List[int]] = [[0]]
    for b in layout.blocks:
        if blockwise:
            groups.append(list(b.entries))
        else:
            groups.extend([e] for e in b.entries)
    if layout.head_entry is not None:
        groups.append([layout.head_entry])
    for a, b in tied_entries(layout):
        ga = next(g for g in groups if a in g)
        gb = next(g for g in groups if b in g)
        if ga is not gb:
            ga.extend(gb)
            groups.remove(gb)
    decisions = tuple(tuple(sorted(g)) for g in groups)
    for g in decisions:
        if len({len(cands[e]) for e in g}) != 1:
            raise SearchSpaceError(f"entries {g} form one decision but have different numbers of candidates")
    return decisions


def _meta_widths(cands: Sequence[Sequence[int]], meta_width, overlap: float) -> Tuple[int, ...]:
    """Each entry's meta width ('sum', 'max' or an integer), checked to hold its candidates at ``overlap``."""
    if meta_width == 'sum':
        metas = tuple(sum(cs) for cs in cands)
    elif meta_width == 'max':
        metas = tuple(max(cs) for cs in cands)
    else:
        metas = tuple(int(meta_width) for _ in cands)
    for e, (cs, m) in enumerate(zip(cands, metas)):
        need = required_meta_width(cs, overlap)
        if m < need:
            raise SearchSpaceError(f"meta width {m} of entry {e} cannot hold candidates {cs} at overlap {overlap} "
                                   f"(needs {need}); use space.meta_width: sum")
    return metas


def build_space(family: str, depth: int, candidates: Sequence[int], *, num_classes: int,
                input_size: Tuple[int, int, int], stage_multipliers: Optional[Sequence[float]] = None,
                meta_width='sum', blockwise: bool = False, overlap: float = 1.0) -> SearchSpace:
    """A space where each entry's candidates are ``candidates`` x stage multiplier x entry scale.

    Inverted-residual expand/depthwise entries take the standard expansion (MobileNetV2 6x) times the candidates
    of the stage feeding the block.
    ``meta_width``: 'sum' (room for disjoint candidates at overlap 0), 'max', or an integer.
    ImageNet families are checked against the timm model they stand for (``check_layout_matches_timm``).
    """
    check_layout_matches_timm(family, depth)
    cands = _entry_candidates(family, depth, candidates, stage_multipliers)
    decisions = _decisions(network_layout(family, depth), cands, blockwise)
    metas = _meta_widths(cands, meta_width, overlap)
    return SearchSpace(family, depth, cands, decisions, metas, num_classes, tuple(input_size), overlap)
