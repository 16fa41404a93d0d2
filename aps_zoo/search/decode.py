"""Decoding a search with its supernet, and what the search writes (config, report, plots).

The strategy proposes ``search.decode_candidates`` (N) distinct architectures; each is scored on the
reward images with recalibrated BN statistics; the ``decode_top_k`` best are re-scored on the whole
held-out split and the best of those is the searched config. The report states N, the chosen one's
rank among the N, and the uniform-width network's score on the same supernet.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Dict, List

from ..filenames import (CHANNEL_CONFIG_FILE, RECIPE_FILE, SEARCH_CURVES_FILE, SEARCH_REPORT_FILE, SHARING_PLOT_FILE,
                         WIDTHS_PLOT_FILE)
from .. import __version__
from .._io import atomic_write_text
from ..channels import ChannelConfig
from ..flops import count_macs, count_params, uniform_like
from ..plots import plot_curves, plot_sharing, plot_widths
from ..inherited import inherited_model, write_inherited
from ..spaces import SearchSpaceError

BN_BATCHES = 20  # training batches that re-estimate an inherited child's BN statistics
logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """What a search wrote: the searched config, its report and where the run lives."""
    config: ChannelConfig
    config_path: Path
    report_path: Path
    out_dir: Path
    val_accuracy: float
    test_accuracy: float
    decoded: List[Dict] = field(default_factory=list)  # the re-scored top candidates, best first
    candidates: int = 0  # N: architectures the strategy proposed and the supernet scored
    uniform: Dict = field(default_factory=dict)  # the uniform-width reference scored on the same supernet


def decode(searcher) -> Dict:
    """Score the strategy's N proposals, re-score the best ``decode_top_k`` on the held-out split; returns
    {'rows': the re-scored rows best first, 'candidates': N}. Rows: choices, repaired, macs, score (reward
    images), rank (by score among the N), val_acc."""
    s, space = searcher.recipe.search, searcher.space
    proposals = searcher.propose(lambda: searcher.strategy.propose(s.decode_candidates))
    limit = s.max_over_budget * s.budget_macs
    rows, seen = [], set()
    for choices in proposals:
        fitted = space.fit_to_budget(choices, limit)  # a fallback: every strategy proposes inside the band
        if fitted != list(choices):
            logger.warning("decoded architecture at %.4g MACs is over the limit %.4g: repaired to %.4g",
                           space.macs(choices), limit, space.macs(fitted))
        if tuple(fitted) not in seen:
            seen.add(tuple(fitted))
            rows.append({'choices': fitted, 'repaired': fitted != list(choices), 'macs': space.macs(fitted),
                         'score': searcher.score(fitted)})
    rows.sort(key=lambda r: (-r['score'], r['macs']))
    for rank, row in enumerate(rows, start=1):
        row['rank'] = rank
    top = rows[:s.decode_top_k]
    for row in top:
        row['val_acc'] = searcher.accuracy(row['choices'], searcher.val_loader)
    top.sort(key=lambda r: (-r['val_acc'], r['rank']))
    return {'rows': top, 'candidates': len(rows)}


def uniform_reference(searcher, config: ChannelConfig) -> Dict:
    """The uniform-width network at the searched config's MACs (:func:`aps_zoo.flops.uniform_like`) scored
    on the same supernet: itself when its widths are candidates, else the nearest architecture of the space
    within its MACs (:func:`nearest_choices`)."""
    space, uniform = searcher.space, uniform_like(config)
    try:
        choices, how = space.choices_for(uniform.widths), 'the uniform network itself'
    except SearchSpaceError:
        choices = nearest_choices(space, uniform.widths, count_macs(uniform))
        how = ('its widths are not candidates: the nearest architecture of the space within its MACs (each '
               'width rounded down to a candidate, then up where closest, while the MACs stay within)')
    return {'multiplier': uniform.provenance['multiplier'], 'uniform_macs': count_macs(uniform), 'how': how,
            'choices': choices, 'widths': space.widths(choices), 'macs': space.macs(choices),
            'score': searcher.score(choices), 'val_acc': searcher.accuracy(choices, searcher.val_loader)}


def nearest_choices(space, widths, limit: float) -> List[int]:
    """The space's architecture closest to per-entry ``widths`` within ``limit`` MACs: every decision at the
    largest candidate not above its width, then, the decisions whose width is closest (ratio) to the next
    candidate first, each rounded up when the MACs stay within ``limit``."""
    firsts = [entries[0] for entries in space.decisions]
    choices = [max([c for c, w in enumerate(space.candidates[e]) if w <= widths[e]], default=0) for e in firsts]
    upgradable = [d for d, e in enumerate(firsts) if choices[d] + 1 < space.num_options(d)]
    for d in sorted(upgradable, key=lambda d: -widths[firsts[d]] / space.candidates[firsts[d]][choices[d] + 1]):
        bigger = choices[:d] + [choices[d] + 1] + choices[d + 1:]
        if space.macs(bigger) <= limit:
            choices = bigger
    return choices


def finish(searcher, decoded: Dict, seconds: float):
    """Write the searched config, its report, plots (and inherited weights); returns the SearchResult."""
    recipe, s, out_dir = searcher.recipe, searcher.recipe.search, searcher.out_dir
    rows = decoded['rows']
    best = rows[0]
    test_acc = searcher.accuracy(best['choices'], searcher.test_loader)
    provenance = {'source': 'search', 'method': 'APS (NeurIPS 2020)', 'strategy': s.strategy,
                  'dataset': searcher.data.description, 'recipe': recipe.name, 'budget_macs': s.budget_macs,
                  'overlap': recipe.space.overlap, 'learn_projections': s.learn_projections, 'seed': recipe.seed,
                  'supernet_val_acc': round(best['val_acc'], 4), 'supernet_test_acc': round(test_acc, 4),
                  'aps_zoo_version': __version__, **(searcher.parent.provenance() if searcher.parent else {})}
    config = searcher.space.config(best['choices'], provenance)
    uniform = uniform_reference(searcher, config)
    config_path, report_path = out_dir / CHANNEL_CONFIG_FILE, out_dir / SEARCH_REPORT_FILE
    if searcher.accelerator.is_main_process:
        config.save(config_path)
        if searcher.parent is not None:  # the child's inherited weights, BN statistics re-estimated
            write_inherited(inherited_model(searcher.supernet, config, islice(searcher.data.train, BN_BATCHES)),
                            out_dir)
        records = searcher.log.read()
        atomic_write_text(report_path, _report(searcher, records, decoded, config, uniform, test_acc, seconds))
        atomic_write_text(out_dir / RECIPE_FILE, recipe.to_yaml())
        _plots(searcher, records, config)
    searcher.accelerator.wait_for_everyone()
    return SearchResult(config, config_path, report_path, out_dir, best['val_acc'], test_acc, rows,
                        decoded['candidates'], uniform)


def _mean(records: List[Dict], key: str) -> float:
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) / len(values) if values else float('nan')


def _report(searcher, records: List[Dict], decoded: Dict, config: ChannelConfig, uniform: Dict,
            test_acc: float, seconds: float) -> str:
    s, rows = searcher.recipe.search, decoded['rows']
    band = searcher.strategy.band
    last = next((r for r in reversed(records) if 'reward' in r), {})
    lines = [f"# APS search: {searcher.recipe.name}", "",
             f"- data: {searcher.data.description}",
             f"- space: {config.name}, {searcher.space.num_decisions} decisions, overlap {searcher.space.overlap}",
             f"- budget: {s.budget_macs:.4g} MACs; searched config: {count_macs(config):,} MACs, "
             f"{count_params(config):,} params",
             f"- strategy: {s.strategy}; band [{band.lower:.4g}, {s.budget_macs:.4g}] MACs; last search epoch: "
             f"mean reward {last.get('reward', math.nan):.4f} of the strategy's samples, "
             f"{last.get('band_reward', math.nan):.4f} of band samples on the same supernet",
             f"- decoding: N = {decoded['candidates']} candidates proposed by the strategy and scored on "
             f"{searcher.reward_images} held-out images (recalibrated BN, evaluation {s.evaluation}); the "
             f"best {len(rows)} re-scored on the whole held-out split; the chosen one ranked {rows[0]['rank']} of "
             f"{decoded['candidates']}; repaired: {sum(r['repaired'] for r in rows)} of {len(rows)} re-scored "
             f"candidates",
             f"- held-out accuracy (supernet weights): {rows[0]['val_acc']:.4f}; test accuracy: {test_acc:.4f}",
             f"- uniform-width reference on the same supernet (multiplier {uniform['multiplier']}, "
             f"{uniform['uniform_macs']:,} MACs; scored: {uniform['how']}: widths "
             f"{','.join(map(str, uniform['widths']))}, {uniform['macs']:,} MACs): reward-image accuracy "
             f"{uniform['score']:.4f}, held-out accuracy {uniform['val_acc']:.4f}",
             f"- processes: {searcher.accelerator.num_processes} x {searcher.accelerator.device.type}, mixed precision "
             f"{searcher.accelerator.mixed_precision}",
             f"- search wall time: {seconds:.1f} s; supernet training throughput "
             f"{_mean(records, 'images_per_s'):.0f} images/s; strategy update "
             f"{_mean(records, 'controller_update_ms'):.1f} ms",
             "",
             f"| rank of {decoded['candidates']} | MACs | reward-image acc | held-out acc | repaired | widths |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['macs']:,} | {r['score']:.4f} | {r['val_acc']:.4f} | {r['repaired']} | "
                     f"{','.join(map(str, searcher.space.widths(r['choices'])))} |")
    return '\n'.join(lines) + '\n'


def _plots(searcher, records: List[Dict], config: ChannelConfig) -> None:
    name = searcher.recipe.name
    panels = {'accuracy': ['val_acc', 'train_acc'], 'reward': ['reward', 'band_reward']}
    if any('entropy' in r for r in records):
        panels['policy entropy (nats)'] = ['entropy']
    panels['sharing level'] = ['sharing_mean']
    plot_curves(records, 'epoch', panels, searcher.out_dir / SEARCH_CURVES_FILE,
                title=f'APS search {name} ({searcher.recipe.search.strategy}): accuracy, reward, entropy and sharing')
    if any(r.get('sharing') for r in records):
        plot_sharing(records, searcher.out_dir / SHARING_PLOT_FILE, title=f'APS search {name}: sharing per layer')
    plot_widths(config, searcher.out_dir / WIDTHS_PLOT_FILE,
                title=f'{config.name} searched on {name}: output channels per width entry')
