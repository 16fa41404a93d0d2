"""Search quality at equal MACs: APS against its sharing ablations, uniform scaling and random search.

For one recipe (space, data, budget) it runs, in one process and one after another:

    aps          APS-T: the APS search as the recipe sets it (projections learned from the penalty)
    ordinal      the same search with projections frozen at overlap 1 (slimmable/AutoSlim sharing)
    independent  the same search with projections frozen at overlap 0 (no sharing)
    task_and_penalty  APS with projections learning from the task loss and the penalty
    uniform      the family's standard network with every width scaled to fit the budget
    standard     the family's standard network itself, over the budget: not a competitor but the capacity
                 check of the setting (the retraining must separate it from uniform, or no allocation of
                 channels can show)
    random       N random configs drawn uniformly from the band [min_budget_fraction x budget, budget]
                 (the library's ``random`` strategy), the best one by a short proxy training scored on
                 the held-out split (never the test split); the uniform network gets the same proxy
                 training, and the report says where it would rank among the draws
    evolution    the APS-T search with ``search.strategy: evolution`` (aging evolution inside the band,
                 scored by the supernet)

then retrains every resulting config from scratch once per seed and reports test top-1 (mean ± std),
MACs, params and search wall time as Markdown and a bar chart, plus the sharing level through the
searches. Methods are compared with APS by a paired bootstrap over the same test images and the
retraining seeds (per-image correctness of every trained network). The recipe is a normal aps-zoo
recipe with one extra section, ``quality``:

    quality:
      seeds: [0, 1, 2]          # retraining seeds (at least 2)
      budget_fraction: 0.25     # budget = fraction x MACs of the widest uniform member of the space (every
                                # width at its largest candidate); omit to use search.budget_macs
      random_samples: 8         # configs drawn for random search
      random_proxy_epochs: 4    # proxy training epochs per random config
      methods: [aps, ordinal, independent, uniform, random]   # optional subset

    OMP_NUM_THREADS=1 python benchmarks/search_quality.py recipes/quality_resnet20_digits_10.yaml --out docs/results

Runs live under ``--runs`` (default ``runs/quality/<recipe>``); a rerun reuses finished searches and
trainings and resumes interrupted ones. After every method the outputs are rewritten, so a run cut short
leaves a report that says what is missing; its ``<setting>.json`` is rewritten after every retraining, so a
part stopped at its time limit still records what it ran.
The report lists the invocations that worked in its runs folder (one on another folder starts a new list).
``<out>.md`` collects every setting in ``--out``.
``--methods`` and ``--seeds`` run a part of the recipe, so that several processes can share one runs folder
(``benchmarks/gpu_quality.sh`` runs such parts side by side on one GPU). Without ``--out``, a part writes its
report to ``<runs>/parts/<methods>_<seeds>``; a run of the whole recipe (or of the seeds it reports,
``--seeds 0,1,2``) on that folder then reuses their runs, and its report lists the parts' invocations too.
``--searches-from RUNS`` takes the searches (and the random search) finished in another runs folder: a recipe
that retrains the same searched networks differently (``train.epochs``) does not search again.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from aps_zoo._io import atomic_write_text
from aps_zoo.filenames import CHANNEL_CONFIG_FILE, METRICS_FILE, RESULTS_FILE, WEIGHTS_FILE
from aps_zoo.channels import ChannelConfig, uniform_widths
from aps_zoo.data import build_loaders
from aps_zoo.flops import count_macs, count_params, uniform_at_budget
from aps_zoo.models import create_model_from_config
from aps_zoo.plots import plt
from aps_zoo._schema import Schema, build, check
from aps_zoo.recipe import Recipe, RecipeError, read_recipe_data, recipe_from_dict
from aps_zoo.cli import PREEMPTED
from aps_zoo.runs import Preempted, RunLock, list_checkpoints
from aps_zoo.search.loop import search
from aps_zoo.search.strategies import create_strategy
from aps_zoo.spaces import space_from_recipe
from aps_zoo.train import train

METHODS = ('aps', 'ordinal', 'independent', 'task_and_penalty', 'uniform', 'random', 'evolution', 'standard')
SEARCHES = {'aps': {}, 'ordinal': {'overlap': 1.0, 'learn_projections': False},
            'independent': {'overlap': 0.0, 'learn_projections': False},
            'task_and_penalty': {'projection_grad': 'task_and_penalty'}, 'evolution': {'strategy': 'evolution'}}
LABELS = {'aps': 'APS-T (learned sharing, penalty gradients)', 'ordinal': 'ordinal sharing (overlap 1, frozen)',
          'independent': 'independent (overlap 0, frozen)',
          'task_and_penalty': 'APS, projections from task loss + penalty', 'uniform': 'uniform width',
          'random': 'random search (best of N)', 'evolution': 'APS-T supernet, evolution strategy',
          'standard': 'standard network (capacity reference, over budget)'}
BOOTSTRAP = 4000
BOOTSTRAP_BLOCK = 250  # replicates per matrix product (250 x 10,000 test images: 20 MB)
SHARING_TOL = 0.01
DEFAULT_OUT = Path('docs/results')
PARTS = 'parts'  # <runs>/parts/<part>: the reports of a recipe's parts (--methods/--seeds)


class QualityError(ValueError):
    """Settings of the ``quality`` section that cannot be run."""


def _distinct_seeds(seeds: List[int]) -> bool:
    return len(seeds) >= 2 and len(set(seeds)) == len(seeds)


def _distinct_methods(methods: List[str]) -> bool:
    return bool(methods) and set(methods) <= set(METHODS) and len(set(methods)) == len(methods)


POSITIVE = check(lambda v: v >= 1, 'a positive integer')


@dataclasses.dataclass
class Quality:
    """The ``quality`` section of a quality recipe (validated by aps_zoo's schema, as the recipe is)."""
    seeds: List[int] = dataclasses.field(metadata=check(_distinct_seeds, 'a list of at least 2 distinct integers'))
    budget_fraction: Optional[float] = dataclasses.field(default=None, metadata=check(lambda v: 0 < v <= 1,
                                                                                      'in (0, 1]'))
    random_samples: int = dataclasses.field(default=8, metadata=POSITIVE)
    random_proxy_epochs: int = dataclasses.field(default=4, metadata=POSITIVE)
    methods: List[str] = dataclasses.field(default_factory=lambda: list(METHODS), metadata=check(
        _distinct_methods, f"a non-empty list of distinct names from {', '.join(METHODS)}"))
    # the overlap-0 supernet's own warm-up (its search epochs stay); None: the recipe's own
    independent_warmup_epochs: Optional[int] = dataclasses.field(default=None, metadata=POSITIVE)


SCHEMA = Schema(QualityError, noun='recipe')


def parse_quality(section) -> Quality:
    """Validate the ``quality`` section of a recipe."""
    if section is None:
        raise QualityError("the recipe needs a 'quality' section (a mapping with at least 'seeds')")
    q = build(Quality, section, SCHEMA, ('quality',))
    q.methods = [m for m in METHODS if m in q.methods]
    return q


def load_quality_recipe(path) -> tuple:
    """(Recipe, Quality) of a quality recipe file (with its ``base:``, repeated keys refused, as for every
    recipe); errors name the file."""
    try:
        data = read_recipe_data(path)  # its errors name the file
    except RecipeError as e:
        raise QualityError(str(e)) from None
    try:
        quality = parse_quality(data.pop('quality', None))
        return recipe_from_dict(data, source=str(path)), quality
    except (QualityError, RecipeError) as e:
        raise QualityError(f"{path}: {e}") from None


def mean_std(values: Sequence[float]) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_bootstrap(a, b, reps: int = BOOTSTRAP, seed: int = 0) -> Dict[str, float]:
    """Difference of mean top-1 (points) of ``a`` - ``b`` with a 95% CI, where ``a`` and ``b`` are per-image
    correctness (retraining seeds x test images, the same images in the same order). Each replicate
    resamples the test images (the same draw for both: the comparison is paired) and each method's seeds;
    the verdict is 'better'/'worse' when the CI excludes 0, else a tie. A replicate's draws are counts of how
    often each seed and image was drawn, so a block of replicates is two matrix products."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    (sa, n), sb = a.shape, len(b)
    diffs = []
    for start in range(0, reps, BOOTSTRAP_BLOCK):
        block = range(start, min(reps, start + BOOTSTRAP_BLOCK))
        draws = [(np.bincount(rng.integers(0, sa, sa), minlength=sa), np.bincount(rng.integers(0, sb, sb),
                  minlength=sb), np.bincount(rng.integers(0, n, n), minlength=n)) for _ in block]
        seeds_a, seeds_b, images = (np.array(d, float).T for d in zip(*draws))
        diffs.append(((seeds_a * (a @ images)).sum(0) / sa - (seeds_b * (b @ images)).sum(0) / sb) / n)
    diff = 100 * (a.mean() - b.mean())
    lo, hi = (100 * v for v in np.percentile(np.concatenate(diffs), [2.5, 97.5]))
    verdict = 'better' if lo > 0 else 'worse' if hi < 0 else 'tie (95% CI includes 0)'
    return {'diff': diff, 'lo': lo, 'hi': hi, 'half_width': (hi - lo) / 2, 'verdict': verdict}


def sharing_trend(records: List[Dict]) -> Dict:
    """Mean sharing at the end of warm-up, its extremes during the search and at the end; whether it fell."""
    pts = [(r['epoch'], r['phase'], r['sharing_mean']) for r in records if r.get('sharing_mean') is not None]
    if not pts:
        return {}
    warm = [v for _, phase, v in pts if phase == 'warmup']
    start = warm[-1] if warm else pts[0][2]
    later = [v for _, phase, v in pts if phase == 'search'] or [start]
    end = pts[-1][2]
    if end < start - SHARING_TOL:
        held = 'held: sharing fell from {:.3f} after warm-up to {:.3f} at the end'.format(start, end)
    elif end > start + SHARING_TOL:
        held = 'did not hold: sharing rose from {:.3f} after warm-up to {:.3f} at the end'.format(start, end)
    else:
        held = ('not observed: sharing stayed within {} of its warm-up value ({:.3f} -> {:.3f}) over this short '
                'search').format(SHARING_TOL, start, end)
    return {'after_warmup': start, 'min': min(later), 'max': max(later), 'end': end, 'verdict': held}


# -- running -------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[Dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data) -> None:
    """Written whole or not at all: parts of a recipe read one another's search results while they run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + '\n')


def method_recipe(recipe: Recipe, method: str, runs: Path, independent_warmup: Optional[int] = None) -> Recipe:
    """The recipe of one search method: its sharing settings, run folder ``<runs>/<method>``; the independent
    search gets ``independent_warmup`` epochs of warm-up when set (``quality.independent_warmup_epochs``),
    then the recipe's search epochs."""
    sharing = dict(SEARCHES[method])
    space = dataclasses.replace(recipe.space, **{k: sharing.pop(k) for k in ('overlap',) if k in sharing})
    s = recipe.search
    if method == 'independent' and independent_warmup:
        sharing.update(warmup_epochs=independent_warmup, epochs=independent_warmup + s.epochs - s.warmup_epochs)
    return dataclasses.replace(recipe, name=method, output_dir=str(runs), space=space,
                               search=dataclasses.replace(s, **sharing))


class PartClaim(RunLock):
    """``<run_dir>/.claim``, held by a part of the recipe from its check for a finished result through the run
    that makes it and the writing of that result. Parts of one method that start together take turns here, and
    the later one reuses what the first finished: the run's own lock comes only after its data load."""
    NAME = '.claim'


def search_result_file(runs: Path, method: str) -> Path:
    """Where a finished search (or the random search) of ``method`` records its config in a runs folder."""
    return runs / method / 'search_result.json'


def claimed_result(claim_dir: Path, done: Path, make) -> Dict:
    """The record in ``done`` when a part of the recipe finished it, else ``make()``'s, written there; under
    ``claim_dir``'s claim, so that parts started together make it once."""
    with PartClaim(claim_dir):
        if done.is_file():
            return {**_read_json(done), 'reused': True}
        out = make()
        _write_json(done, out)
    return {**out, 'reused': False}


def run_search(recipe: Recipe, method: str, runs: Path, cpu: bool, independent_warmup: Optional[int] = None) -> Dict:
    """Search with the method's sharing settings (reused when done, resumed when interrupted)."""
    r = method_recipe(recipe, method, runs, independent_warmup)
    return claimed_result(r.run_dir / 'search', search_result_file(runs, method), lambda: searched(r, cpu))


def searched(r: Recipe, cpu: bool) -> Dict:
    """Run (or resume) the search of the method recipe ``r``; its config, time and scores."""
    t0 = time.time()
    result = search(r, resume=bool(list_checkpoints(r.run_dir / 'search')), cpu=cpu)
    return {'config': result.config.to_dict(), 'search_s': time.time() - t0, 'val_acc': result.val_accuracy,
            'metrics': str(result.out_dir / METRICS_FILE),
            'repaired': [sum(d['repaired'] for d in result.decoded), len(result.decoded)]}


def train_run(recipe: Recipe, config: ChannelConfig, out_dir: Path, cpu: bool) -> Dict:
    """``train``'s results.json for ``config`` in ``out_dir`` (reused when done, resumed when interrupted)."""
    with PartClaim(out_dir):
        results = _read_json(out_dir / RESULTS_FILE)
        reused = results is not None
        if not reused:
            results = train(recipe, config, out_dir=out_dir, resume=bool(list_checkpoints(out_dir)), cpu=cpu).results
    records = [json.loads(line) for line in (out_dir / METRICS_FILE).read_text().splitlines()]
    return {**results, 'reused': reused, 'train_s': sum(r['time_s'] for r in records),
            'best_val_top1': 100 * max(r['eval_top1'] for r in records if r['eval_split'] == 'val')  # percent
            if records[0]['eval_split'] == 'val' else None}


@torch.no_grad()
def test_correctness(out_dir: Path, test_loader) -> List[int]:
    """1/0 per test image (in the loader's fixed order) for the weights ``train`` wrote to ``out_dir``; cached."""
    cache = out_dir / 'test_correct.json'
    if cache.is_file():
        return json.loads(cache.read_text())
    model = create_model_from_config(ChannelConfig.load(out_dir / CHANNEL_CONFIG_FILE))
    model.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)))
    model.eval()
    correct = [int(v) for x, y in test_loader for v in (model(x).argmax(-1) == y).tolist()]
    cache.write_text(json.dumps(correct) + '\n')
    return correct


def run_random(recipe: Recipe, q: Quality, space, runs: Path, cpu: bool) -> Dict:
    """Best of N random configs of the band (the library's random strategy) by held-out top-1 after a short
    proxy training."""
    return claimed_result(runs / 'random', search_result_file(runs, 'random'),
                          lambda: random_search(recipe, q, space, runs, cpu))


def random_search(recipe: Recipe, q: Quality, space, runs: Path, cpu: bool) -> Dict:
    """Train and score ``quality.random_samples`` band draws; the best one's config, with every draw's score."""
    draws = create_strategy('random', space, recipe.search, recipe.seed).propose(q.random_samples)
    proxy = proxy_recipe(recipe, q)
    t0 = time.time()
    tried = []
    for i, choices in enumerate(tqdm(draws, desc='random search (proxy training)', leave=False)):
        out_dir = runs / 'random' / f'proxy{i}'
        res = train_run(proxy, space.config(choices, {'source': 'random', 'draw': i}), out_dir, cpu)
        tried.append({'choices': choices, 'val_top1': res['best_val_top1']})
    best = max(tried, key=lambda t: t['val_top1'])
    config = space.config(best['choices'], {'source': 'random search', 'samples': q.random_samples,
                                            'proxy_epochs': q.random_proxy_epochs, 'proxy_val_top1': best['val_top1']})
    return {'config': config.to_dict(), 'search_s': time.time() - t0, 'val_acc': best['val_top1'] / 100,
            'tried': tried}


def proxy_recipe(recipe: Recipe, q: Quality) -> Recipe:
    """The random search's proxy training: ``quality.random_proxy_epochs`` epochs, scored on the held-out split."""
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=q.random_proxy_epochs,
                                                                 select_best=True))


def proxy_scores(recipe: Recipe, q: Quality, found: Dict, uniform: ChannelConfig, runs: Path, cpu: bool) -> Dict:
    """The random search's draws' held-out top-1 after the proxy training, and the uniform network's at the
    budget trained the same way (seed and epochs): where uniform width stands among the draws."""
    res = train_run(proxy_recipe(recipe, q), uniform, runs / 'random' / 'proxy_uniform', cpu)
    return {'draws': [t['val_top1'] for t in found['tried']], 'uniform': res['best_val_top1']}


def select_part(q: Quality, methods: Optional[List[str]], seeds: Optional[List[int]]) -> Quality:
    """``q`` cut to a part of its methods and seeds (``--methods``, ``--seeds``): one of several processes that
    share a runs folder; a later run of the whole recipe on that folder reuses what the parts finished."""
    for key, part, whole in (('methods', methods, q.methods), ('seeds', seeds, q.seeds)):
        if part is not None and (not part or not set(part) <= set(whole)):
            raise QualityError(f"--{key} {','.join(map(str, part))}: not a part of the recipe's quality.{key} "
                               f"({', '.join(map(str, whole))})")
    return dataclasses.replace(q, methods=[m for m in q.methods if m in (methods or q.methods)],
                               seeds=[s for s in q.seeds if s in (seeds or q.seeds)])


def part_folder(runs: Path, methods: Optional[List[str]], seeds: Optional[List[int]]) -> Path:
    """Where a part's own report goes when ``--out`` is not given: ``<runs>/parts/<methods>_<seeds>``."""
    return runs / PARTS / '_'.join(['-'.join(methods or ['all'])] + ([] if seeds is None else
                                                                     ['-'.join(map(str, seeds))]))


def part_invocations(runs: Path, stem: str, out: Path) -> List[Dict]:
    """The invocations recorded by the parts' reports in ``<runs>/parts`` (none when ``out`` is itself one of
    them): the report of the whole says where and how its runs were made."""
    if out.resolve().parent == (runs / PARTS).resolve():
        return []
    return [{**i, 'part': p.parent.name} for p in sorted((runs / PARTS).glob(f'*/{stem}.json'))
            for i in _read_json(p)['invocations']]


def _space_of(config: ChannelConfig) -> tuple:
    return config.family, config.depth, config.num_classes, tuple(config.input_size)


def check_searches_from(searches: Path, methods: List[str], reference: ChannelConfig, limit: float) -> None:
    """``--searches-from``: every search of ``methods`` (and the random search) finished in that runs folder,
    with a network of this recipe's space (``reference``'s family, depth, classes, input size) within ``limit``
    MACs."""
    for method in (m for m in methods if m in SEARCHES or m == 'random'):
        done = search_result_file(searches, method)
        if not done.is_file():
            raise QualityError(f"--searches-from {searches}: no {done.relative_to(searches)} (the {method} search "
                               f"has not finished there; run the recipe the searches belong to first)")
        c = ChannelConfig.from_dict(_read_json(done)['config'])
        macs = count_macs(c)
        if _space_of(c) != _space_of(reference) or macs > limit:
            raise QualityError(f"--searches-from {searches}: the {method} network ({c.family}{c.depth}, "
                               f"{c.num_classes} classes, input {tuple(c.input_size)}, {macs / 1e6:.4g}M "
                               f"MACs) is not of this recipe's space and budget ({reference.family}"
                               f"{reference.depth}, {reference.num_classes} classes, input "
                               f"{tuple(reference.input_size)}, at most {limit / 1e6:.4g}M MACs)")


def run_setting(recipe_path: Path, out: Optional[Path], runs: Optional[Path], cpu: bool, command: str,
                methods: Optional[List[str]] = None, seeds: Optional[List[int]] = None,
                searches_from: Optional[Path] = None) -> Dict:
    """Every method of one quality recipe (or the part ``methods`` x ``seeds``); the summary is rewritten after
    each retraining, the report after each method, and printed with its reading at the end. Without ``out``,
    a part reports to its ``part_folder`` and the whole to docs/results. With ``searches_from``, the searches
    are those finished in that runs folder (the same space, data and budget: another retraining of the same
    searched networks)."""
    recipe, q = load_quality_recipe(recipe_path)
    planned = q.methods  # the whole recipe's: a part's report says what the setting still lacks
    q = select_part(q, methods, seeds)
    stem = recipe_path.stem
    runs = runs or Path('runs') / 'quality' / stem
    searches = searches_from or runs
    part = (methods, seeds) != (None, None)
    out = out or (part_folder(runs, methods, seeds) if part else DEFAULT_OUT)
    data = build_loaders(recipe.data, recipe.seed, holdout=True)
    sp = recipe.space
    reference = ChannelConfig(sp.family, uniform_widths(sp.family, sp.depth), sp.depth, data.num_classes,
                              data.input_size, {})
    space = space_from_recipe(recipe, data.num_classes, data.input_size)
    widest = space.macs(space.largest())
    budget = recipe.search.budget_macs if q.budget_fraction is None else float(round(q.budget_fraction * widest))
    recipe = dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, budget_macs=budget))
    space.check_budget(budget)
    limit = recipe.search.max_over_budget * budget
    uniform = uniform_at_budget(sp.family, sp.depth, budget, num_classes=data.num_classes,
                                input_size=data.input_size)
    if searches_from is not None:
        check_searches_from(searches_from, q.methods, reference, limit)
    previous = _read_json(out / f'{stem}.json') or {}
    if previous.get('runs', str(runs)) != str(runs):
        previous = {}  # its invocations built other runs
    summary = {'setting': stem, 'recipe': str(recipe_path), 'runs': str(runs),
               'searches_from': None if searches_from is None else str(searches_from), 'dataset': data.description,
               'test_images': data.sizes['test'],
               'space': f"{sp.family}{sp.depth}, candidates {sp.candidates}, meta width {sp.meta_width}",
               'reference_macs': count_macs(reference), 'widest_macs': widest, 'budget_macs': budget, 'budget_fraction': q.budget_fraction,
               'limit_macs': limit, 'search_epochs': recipe.search.epochs, 'warmup_epochs': recipe.search.warmup_epochs,
               'search_seed': recipe.seed, 'aps_overlap': recipe.space.overlap, 'train_epochs': recipe.train.epochs,
               'seeds': q.seeds,
               'random_samples': q.random_samples, 'random_proxy_epochs': q.random_proxy_epochs,
               'independent_warmup_epochs': q.independent_warmup_epochs,
               'methods_planned': planned, 'methods': {}, 'sharing': {}}
    now = {'command': command, 'started': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
           'device': 'cpu' if cpu else torch.cuda.get_device_name(), 'cpu_count': os.cpu_count(),
           'torch_threads': torch.get_num_threads(), 'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
           'load_start': os.getloadavg()[0], 'ran': 0, 'reused': 0}
    summary['invocations'] = previous.get('invocations', []) + [now]
    summary['part_invocations'] = part_invocations(runs, stem, out)
    t0, cpu0 = time.time(), time.process_time()
    judged = None  # the setting's bootstraps, from its last write_outputs
    jobs = tqdm(q.methods, desc=stem)
    for method in jobs:
        jobs.set_postfix(method=method)
        if method in SEARCHES:
            found = run_search(recipe, method, searches, cpu, q.independent_warmup_epochs)
            records = [json.loads(line) for line in Path(found['metrics']).read_text().splitlines()]
            keep = ('epoch', 'phase', 'sharing_mean', 'sharing')
            summary['sharing'][method] = {'records': [{k: r[k] for k in keep} for r in records],
                                          'trend': sharing_trend(records)}
        elif method == 'standard':
            found = {'config': reference.to_dict(), 'search_s': 0.0}
        elif method == 'uniform':
            found = {'config': uniform.to_dict(), 'search_s': 0.0}
        else:
            found = run_random(recipe, q, space, searches, cpu)
            if searches_from is None:  # else the draws were scored by another recipe's proxy training
                found['proxy'] = proxy_scores(recipe, q, found, uniform, runs, cpu)
        if 'reused' in found:
            now['reused' if found['reused'] else 'ran'] += 1
        config = ChannelConfig.from_dict(found['config'])
        seeds = {}
        summary['methods'][method] = {'widths': list(config.widths), 'macs': count_macs(config),
                                      'params': count_params(config), 'search_s': found['search_s'],
                                      'search_val_acc': found.get('val_acc'), 'repaired': found.get('repaired'),
                                      'seeds': seeds, **({'proxy': found['proxy']} if 'proxy' in found else {})}
        for seed in tqdm(q.seeds, desc=f'{method}: retrain', leave=False):
            out_dir = runs / method / f'train_seed{seed}'
            res = train_run(dataclasses.replace(recipe, seed=seed), config, out_dir, cpu)
            seeds[seed] = {'top1': res['top1'], 'top5': res['top5'], 'train_s': res['train_s'],
                           'mixed_precision': res['mixed_precision'],
                           'correct': ''.join(map(str, test_correctness(out_dir, data.test)))}  # '0'/'1' per image
            now['reused' if res['reused'] else 'ran'] += 1
            now.update(wall_s=time.time() - t0, cpu_s=time.process_time() - cpu0, load_end=os.getloadavg()[0])
            summary['complete'] = list(summary['methods']) == planned and len(seeds) == len(q.seeds)
            _write_json(out / f'{stem}.json', summary)  # a part stopped at its time limit still records its runs
        judged = write_outputs(summary, out)  # tables, bootstrap CIs and plots: after each method (they take a while)
    print(f"\n{stem} ({now.get('wall_s', 0.0) / 60:.1f} min)\n{table_markdown(summary)}")
    print('\n'.join(reading(summary, judged)))
    return summary


# -- outputs -------------------------------------------------------------------------------------------
def method_rows(summary: Dict) -> List[Dict]:
    rows = []
    for method, m in summary['methods'].items():
        top1 = [s['top1'] for s in m['seeds'].values()]
        mean, std = mean_std(top1)
        rows.append({'method': method, 'top1': top1, 'mean': mean, 'std': std, **m})
    return rows


def rows_by_method(summary: Dict) -> Dict[str, Dict]:
    """:func:`method_rows` keyed by method name."""
    return {r['method']: r for r in method_rows(summary)}


UNRECORDED = 'not recorded'


def retraining_precision(summary: Dict) -> str:
    """The retrainings' mixed precision: one for all, or each with the runs that had it."""
    runs = {}
    for method, m in summary['methods'].items():
        for seed, r in m['seeds'].items():  # settings written before the key was recorded did not say
            runs.setdefault(r.get('mixed_precision', UNRECORDED), []).append(f'{method}:{seed}')
    if list(runs) == [UNRECORDED]:
        return f"mixed precision: {UNRECORDED} (the runs are older than the record)"
    if len(runs) == 1:
        return f"mixed precision: {next(iter(runs))} in every retraining"
    return 'mixed precision: ' + '; '.join(f"{p} in {', '.join(names)}" for p, names in runs.items())


def table_markdown(summary: Dict) -> str:
    lines = ['| method | MACs | % of budget | params | test top-1 (mean ± std) | per seed | search wall time | '
             'retraining time (all seeds) |', '|---|---:|---:|---:|---:|---|---:|---:|']
    for r in method_rows(summary):
        share = 100 * r['macs'] / summary['budget_macs']
        lines.append(f"| {LABELS[r['method']]} | {r['macs'] / 1e6:.3f}M | {share:.1f} "
                     f"| {r['params'] / 1e3:.1f}k | {r['mean']:.2f} ± {r['std']:.2f} (n={len(r['top1'])}) | "
                     f"{', '.join(f'{v:.2f}' for v in r['top1'])} | {r['search_s']:.0f} s | "
                     f"{sum(v['train_s'] for v in r['seeds'].values()):.0f} s |")
    return '\n'.join(lines)


ACROSS_REPORTS = "`benchmarks/compare_quality.py` compares networks of several reports on the same test images."


def without_aps(summary: Dict) -> str:
    """Why a report without APS's retrained network compares nothing with it."""
    if 'aps' not in summary.get('methods_planned', ['aps']):
        return f"APS is not among this recipe's methods; {ACROSS_REPORTS}"
    return 'APS has not finished in this run, so it is not compared.'


def aps_alone(summary: Dict) -> str:
    """Why APS-T's retrained network is compared with nothing in a report that has it."""
    if not set(summary.get('methods_planned', ['aps'])) - {'aps', 'standard'}:
        return f"APS-T is this recipe's only method under the budget; {ACROSS_REPORTS}"
    return 'No other method under the budget has finished in this run, so APS-T is not compared.'


@dataclasses.dataclass
class Verdicts:
    """A setting's paired bootstraps, run once for its report and the overview: APS-T against every other
    method, and the capacity check."""
    comparisons: Dict[str, Dict[str, float]]
    capacity: Optional[str]


def verdicts(summary: Dict) -> Verdicts:
    """Run the paired bootstraps of one setting."""
    return Verdicts(comparisons(summary), capacity_check(summary))


def reading(summary: Dict, judged: Optional[Verdicts] = None) -> List[str]:
    """Plain-language comparison of APS with every other method, relative to the seed spread."""
    judged = judged or verdicts(summary)
    rows = rows_by_method(summary)
    lines = []
    others = competitors(rows)
    if others:
        best = max(others, key=lambda r: r['mean'])
        lines.append(f"Highest mean test top-1: {LABELS[best['method']]} ({best['mean']:.2f}).")
    lines += [judged.capacity] if judged.capacity else []
    if 'aps' not in rows:
        return lines + [without_aps(summary)]
    comps = judged.comparisons
    if not comps:
        return lines + [aps_alone(summary)]
    for method, c in comps.items():
        lines.append(f"APS-T vs {LABELS[method]}: {c['diff']:+.2f} points, 95% CI [{c['lo']:+.2f}, {c['hi']:+.2f}] "
                     f"(paired bootstrap over the {summary['test_images']} test images and the seeds): {c['verdict']}.")
    return lines + [f"One test image is {100 / summary['test_images']:.2f} points of top-1 "
                    f"({summary['test_images']} test images)."]


def comparisons(summary: Dict) -> Dict[str, Dict[str, float]]:
    """APS-T against every other finished method: paired bootstrap over test images and retraining seeds."""
    rows = rows_by_method(summary)
    if 'aps' not in rows:
        return {}
    return {r['method']: paired_bootstrap(per_image(rows['aps']), per_image(r)) for r in competitors(rows)
            if r['method'] != 'aps'}


def competitors(rows: Dict[str, Dict]) -> List[Dict]:
    """The rows of the methods that meet the budget (all but the standard network)."""
    return [r for m, r in rows.items() if m != 'standard']


def per_image(row: Dict) -> List[List[int]]:
    """Per-image correctness of one method: retraining seeds x test images."""
    return [[int(c) for c in v['correct']] for v in row['seeds'].values()]


def capacity_check(summary: Dict) -> Optional[str]:
    """Standard network vs uniform at the budget (the setting's capacity gate), when both have finished."""
    rows = rows_by_method(summary)
    if not {'standard', 'uniform'} <= set(rows):
        return None
    c = paired_bootstrap(per_image(rows['standard']), per_image(rows['uniform']))
    verdict = ('capacity decides the retraining' if c['lo'] > 0 else
               'the retraining does NOT separate them, so no allocation of channels can show here')
    return (f"Capacity check: the standard network ({rows['standard']['macs'] / 1e6:.3g}M MACs) vs uniform at the "
            f"budget ({rows['uniform']['macs'] / 1e6:.3g}M): {c['diff']:+.2f} points, 95% CI [{c['lo']:+.2f}, "
            f"{c['hi']:+.2f}]: {verdict}.")


def plot_bars(summary: Dict, path: Path) -> None:
    rows = method_rows(summary)
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 1.5, 3.6))
    x = range(len(rows))
    ax.bar(x, [r['mean'] for r in rows], yerr=[r['std'] for r in rows], capsize=5, color='tab:blue', alpha=0.8)
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r['top1']), r['top1'], color='black', s=10, zorder=3)
    names = [r['method'].replace('_and_', ' +\n') for r in rows]
    ax.set_xticks(list(x), [f"{name}\n{r['macs'] / 1e6:.2f}M" for name, r in zip(names, rows)])
    lows = [min(r['top1']) for r in rows]
    ax.set_ylim(max(0.0, min(lows) - 3), min(100.0, max(max(r['top1']) for r in rows) + 1.5))
    ax.set_ylabel('test top-1 (%)')
    fewest, most = min(len(r['top1']) for r in rows), max(len(r['top1']) for r in rows)
    seeds = str(most) if fewest == most else f'{fewest}-{most}'  # the methods' seed counts can differ
    ax.set_title(f"{summary['setting']}: budget {summary['budget_macs'] / 1e6:.3g}M MACs, "
                 f"mean ± std over {seeds} seeds")
    ax.grid(axis='y', alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


def per_layer_search(sharing: Dict) -> str:
    """The search whose per-layer sharing is drawn: APS, or in a report without APS the search whose mean sharing
    moved most (in the evolution reports, the evolution strategy's APS-T supernet; ordinal and independent stay flat)."""
    def moved(method: str) -> float:
        levels = [p['sharing_mean'] for p in sharing[method]['records']]
        return max(levels) - min(levels)
    return 'aps' if 'aps' in sharing else max(sharing, key=moved)


def plot_sharing(summary: Dict, path: Path) -> None:
    """Against the epoch: the mean sharing of every search (left) and the per-layer sharing of one
    (:func:`per_layer_search`, right)."""
    sharing = summary['sharing']
    layered = per_layer_search(sharing)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={'wspace': 0.35})
    # open markers, one shape per method: curves that coincide stay visible
    for marker, (method, s) in zip(itertools.cycle('osx^'), sharing.items()):
        # a longer warm-up (quality.independent_warmup_epochs) is aligned on its end; its start is cut off
        shift = sum(p['phase'] == 'warmup' for p in s['records']) - summary['warmup_epochs']
        pts = [p for p in s['records'] if p['epoch'] >= shift]
        label = LABELS[method] + (f" (last {summary['warmup_epochs']} of {summary['warmup_epochs'] + shift} "
                                  "warm-up epochs)" if shift else '')
        axes[0].plot([p['epoch'] - shift for p in pts], [p['sharing_mean'] for p in pts], marker=marker, ms=5,
                     mfc='none', lw=1, label=label)
    axes[0].axvline(summary['warmup_epochs'] - 0.5, color='gray', ls='--', lw=1, label='end of warm-up')
    axes[0].set_title('mean sharing level')
    axes[0].legend(fontsize=8, loc='upper left', bbox_to_anchor=(0, -0.17))
    pts = sharing[layered]['records']
    layers = list(pts[-1]['sharing'])
    roles = {}  # a layer's role is its name with the block/position indices replaced by '#'
    for layer in layers:
        roles.setdefault('.'.join('#' if part.isdigit() else part for part in layer.split('.')), []).append(layer)
    for color, (role, members) in zip(plt.get_cmap('tab10').colors, roles.items()):
        for j, layer in enumerate(members):
            axes[1].plot([p['epoch'] for p in pts], [p['sharing'].get(layer) for p in pts], lw=0.8, alpha=0.7,
                         color=color, label=f'{role} ({len(members)})' if j == 0 else None)
    axes[1].axvline(summary['warmup_epochs'] - 0.5, color='gray', ls='--', lw=1)
    axes[1].set_title(f"{LABELS[layered].split(' (')[0]}: sharing per layer ({len(layers)} layers)")
    axes[1].legend(fontsize=8, title='layer (count)', title_fontsize=8)
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)  # the level's whole range: one that barely moves is not magnified into a spread
        ax.set_xlabel('search epoch')
        ax.set_ylabel('sharing level (1 = ordinal, 0 = disjoint)')
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


def compute_s(summary: Dict) -> float:
    return sum(m['search_s'] + sum(v['train_s'] for v in m['seeds'].values()) for m in summary['methods'].values())


def setting_markdown(summary: Dict, link_prefix: str, judged: Optional[Verdicts] = None) -> str:
    s, stem = summary, summary['setting']
    status = 'complete' if s['complete'] else f"INCOMPLETE: {unfinished(s)}"
    budget = f"{s['budget_macs'] / 1e6:.4g}M MACs"
    if s['budget_fraction'] is not None:
        budget += (f" ({s['budget_fraction']:.0%} of the widest uniform member of the space, "
                   f"{s['widest_macs'] / 1e6:.4g}M; the standard uniform network is {s['reference_macs'] / 1e6:.4g}M)")
    search_seed = s.get('search_seed', 0)  # settings written before the key was recorded ran seed 0
    out = [f"## {stem}", "",
           f"- status: {status}",
           f"- recipe: `{s['recipe']}`",
           f"- data: {s['dataset']}",
           f"- space: {s['space']}; budget {budget}; searched/random configs may use up to "
           f"{s['limit_macs'] / 1e6:.4g}M (the decoder's limit)",
           f"- search: {s['search_epochs']} epochs ({s['warmup_epochs']} warm-up), one search per method (seed {search_seed}); "
           f"APS starts at overlap {s['aps_overlap']}; random: best of {s['random_samples']} draws after "
           f"{s['random_proxy_epochs']} proxy epochs each, scored on the held-out split" + independent_schedule(s)
           + (f"; the searches are those of the runs folder {s['searches_from']} (reused, not rerun)"
              if s.get('searches_from') else ''),
           f"- retraining: {s['train_epochs']} epochs per config, seeds {s['seeds']}; {retraining_precision(s)}",
           f"- time in the runs: {compute_s(s) / 60:.1f} min (searches' wall time + retraining epochs, summed)",
           "- invocations (a load average above the threads used means the machine was shared):"]
    out += [f"  - {invocation_line(i)}" for i in s['invocations']]
    if s.get('part_invocations'):  # settings written before parts were recorded have none
        out.append(f"- parts of it, run in processes side by side (`{PARTS}/` in the runs folder):")
        out += [f"  - {i['part']}: {invocation_line(i)}" for i in s['part_invocations']]
    out += ["", table_markdown(s), "", f"![test top-1 per method]({link_prefix}{stem}.png)", "",
            "Widths of each config (forward order):", ""]
    out += [f"- {m}: {','.join(map(str, v['widths']))}"
            + (f" (decoded candidates repaired to fit: {v['repaired'][0]} of {v['repaired'][1]})" if v.get('repaired')
               else '') for m, v in s['methods'].items()]
    out += [random_proxy(s['methods']['random'], s['random_proxy_epochs'])] if 'proxy' in s['methods'].get(
        'random', {}) else []
    out += ["", "### Sharing level through the search", ""]
    if s['sharing']:
        out.append(f"![sharing level]({link_prefix}{stem}_sharing.png)")
        out.append("")
        for method, sh in s['sharing'].items():
            t = sh['trend']
            out.append(f"- {method}: after warm-up {t['after_warmup']:.4f}, during search min {t['min']:.4f} / max "
                       f"{t['max']:.4f}, end {t['end']:.4f}")
        if 'aps' in s['sharing']:
            out += ["", f"Paper's observation (high sharing early, lower later) for APS: "
                        f"{s['sharing']['aps']['trend']['verdict']}."]
    else:
        out.append("No search has finished yet." if set(s['methods_planned']) & set(SEARCHES) else
                   "This recipe has no supernet search, so no sharing level.")
    out += ["", "### Reading", ""] + [f"- {line}" for line in reading(s, judged)]
    return '\n'.join(out) + '\n'


def random_proxy(row: Dict, epochs: int) -> str:
    """Where the uniform network stands among the random search's draws, by the search's own proxy score."""
    draws, u = row['proxy']['draws'], row['proxy']['uniform']
    return (f"- random search's proxy ({epochs} epoch{'s' * (epochs != 1)}, held-out top-1): the {len(draws)} draws "
            f"scored {min(draws):.2f}-{max(draws):.2f} (median {statistics.median(draws):.2f}; the chosen one "
            f"{max(draws):.2f}); the uniform network at the budget, trained the same way, {u:.2f}, which would rank "
            f"{1 + sum(d > u for d in draws)} of {len(draws) + 1}")


def unfinished(summary: Dict) -> str:
    """What an incomplete setting lacks: methods not started, and methods with only some of their seeds."""
    planned, n = summary['methods_planned'], len(summary['seeds'])
    partial = [f"{m} ({len(v['seeds'])} of {n} seeds)" for m, v in summary['methods'].items() if len(v['seeds']) < n]
    finished = [m for m, v in summary['methods'].items() if len(v['seeds']) == n]
    missing = [m for m in planned if m not in summary['methods']]
    return (f"{len(finished)} of {len(planned)} methods finished; missing: {', '.join(missing) or 'none'}"
            + (f"; partly retrained: {', '.join(partial)}" if partial else ''))


def invocation_line(i: Dict) -> str:
    """One invocation of the benchmark: command, time, machine, what it ran and reused."""
    return (f"`{i['command']}` ({i['started']}): {i['wall_s'] / 60:.1f} min wall"
            + (f", {i['cpu_s'] / 60:.1f} min process CPU time" if 'cpu_s' in i else '')
            + f", on {i['device']} ({i['cpu_count']} CPUs, torch threads {i['torch_threads']}, "
            f"OMP_NUM_THREADS={i['omp_num_threads']}); ran {i['ran']} searches/trainings, reused {i['reused']} "
            f"finished ones; load average {i['load_start']:.2f} at start, {i['load_end']:.2f} at end")


def independent_schedule(summary: Dict) -> str:
    """The independent search's own warm-up, when the recipe gives it one, and why."""
    w = summary.get('independent_warmup_epochs')
    if not w:
        return ''
    search_epochs = summary['search_epochs'] - summary['warmup_epochs']
    return (f"; independent: {w} warm-up epochs, then the same {search_epochs} search epochs (its overlap-0 "
            f"supernet, every candidate pair with its own weights, is near chance after {summary['warmup_epochs']} "
            f"warm-up epochs: quality.independent_warmup_epochs)")


def overview(settings: List[Dict], judged: Optional[List[Verdicts]] = None) -> List[str]:
    """One line per setting: APS's verdicts against the other methods, the best method, the sharing verdict."""
    lines = []
    for s, v in zip(settings, judged or map(verdicts, settings)):
        rows = rows_by_method(s)
        if 'aps' not in rows:
            lines.append(f"- {s['setting']}: {without_aps(s)}")
            continue
        comps = v.comparisons
        if not comps:
            aps = rows['aps']
            lines.append(f"- {s['setting']}: APS-T {aps['mean']:.2f} ± {aps['std']:.2f} over {len(aps['top1'])} "
                         f"seeds; {aps_alone(s)}")
            continue
        outcomes = [c['verdict'].split()[0] for c in comps.values()]
        best = max(competitors(rows), key=lambda r: r['mean'])
        widths = [c['half_width'] for c in comps.values()]
        resolved = 'resolves' if max(widths) < 0.5 else 'does not resolve'
        capacity = v.capacity
        lines.append(f"- {s['setting']}: APS-T is better than {outcomes.count('better')}, tied with "
                     f"{outcomes.count('tie')} and worse than {outcomes.count('worse')} of {len(outcomes)} other "
                     f"methods; best mean {best['mean']:.2f} ({best['method']}), spread of the means "
                     f"{best['mean'] - min(r['mean'] for r in competitors(rows)):.2f} points; 95% CI half-widths "
                     f"{min(widths):.2f}-{max(widths):.2f} points, so this setting {resolved} a "
                     f"0.5-point difference; sharing: "
                     f"{s['sharing'].get('aps', {}).get('trend', {}).get('verdict', 'no APS search log')}."
                     + (f" {capacity}" if capacity else ''))
    total = sum(compute_s(s) for s in settings)
    return lines + [f"- time in the runs of all settings above: {total / 60:.1f} min (searches' wall time + "
                    f"retraining epochs)"]


def write_outputs(summary: Dict, out: Path) -> Verdicts:
    """``<out>/<setting>.{json,md,png}``, the sharing plot, and ``<out>.md`` over every setting in ``out``;
    returns the setting's verdicts."""
    out.mkdir(parents=True, exist_ok=True)
    stem = summary['setting']
    _write_json(out / f'{stem}.json', summary)
    settings = [json.loads(p.read_text()) for p in sorted(out.glob('*.json'))]
    judged = [verdicts(s) for s in settings]
    own = next(v for s, v in zip(settings, judged) if s['setting'] == stem)
    (out / f'{stem}.md').write_text(setting_markdown(summary, '', own))
    if summary['methods']:
        plot_bars(summary, out / f'{stem}.png')
    if summary['sharing']:
        plot_sharing(summary, out / f'{stem}_sharing.png')
    text = ["# Search quality: APS against its sharing ablations and baselines at equal MACs", "",
            "Generated by `benchmarks/search_quality.py` (do not edit by hand; rerun the commands below). "
            "Each method yields one config under the budget; every config is retrained from scratch with "
            "several seeds and tested on the same test split. The ± is the sample standard deviation over "
            "retraining seeds; each search ran once, so search-to-search variation is not included. "
            "APS-T is compared with every other method by a paired bootstrap over the same test images "
            "(resampled jointly for both methods) and each method's retraining seeds; 'tie' means the 95% CI of "
            "the difference includes 0.", ""]
    text += ["## Overview", ""] + overview(settings, judged) + [""]
    text += [setting_markdown(s, f'{out.name}/', v) for s, v in zip(settings, judged)]
    out.with_name(out.name + '.md').write_text('\n'.join(text))
    return own


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('recipes', nargs='+', type=Path, help='quality recipes (recipes/quality_*.yaml)')
    parser.add_argument('--out', type=Path, default=None,
                        help=f'folder for tables and plots (default {DEFAULT_OUT}; for a part of the recipe, '
                             f'<runs>/{PARTS}/<methods>_<seeds>)')
    parser.add_argument('--runs', type=Path, default=None,
                        help='folder for the runs (default runs/quality/<recipe>); only with one recipe')
    parser.add_argument('--searches-from', type=Path, default=None,
                        help='reuse the finished searches of this runs folder (the same space, data and budget; '
                             'another retraining of the searched networks); only with one recipe')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1)')
    parser.add_argument('--methods', type=lambda v: v.split(','), default=None,
                        help='run only these of the recipe\'s methods (comma-separated; parallel parts, one recipe)')
    parser.add_argument('--seeds', type=lambda v: [int(s) for s in v.split(',')], default=None,
                        help='retrain only these of the recipe\'s seeds (comma-separated; parallel parts, one recipe)')
    args = parser.parse_args(argv)
    command = ' '.join(['python benchmarks/search_quality.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    if len(args.recipes) > 1 and (args.runs, args.methods, args.seeds, args.searches_from) != (None,) * 4:
        parser.error('--runs, --methods, --seeds and --searches-from take one recipe')
    torch.set_num_threads(args.threads)
    cpu = not torch.cuda.is_available()
    try:
        for path in args.recipes:
            load_quality_recipe(path)  # every recipe is checked before any run starts
        for path in args.recipes:
            run_setting(path, args.out, args.runs, cpu, command, args.methods, args.seeds, args.searches_from)
    except Preempted as e:  # as `aps-zoo` does: one line naming the checkpoint, exit 143
        print(f'stopped: {e}', file=sys.stderr)
        return PREEMPTED
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
