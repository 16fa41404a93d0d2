"""Does the supernet rank subnets as standalone training does? APS-T against frozen ordinal and independent sharing.

N distinct architectures are drawn uniformly from the band [search.min_budget_fraction x budget, budget]
(the library's ``random`` strategy, seeded). Each is

- scored by three supernets trained for the same steps with the recipe's search schedule: APS-T (the
  recipe's learned projections), ordinal (overlap 1, frozen) and independent (overlap 0, frozen); the
  score is held-out accuracy under both subnet evaluations (``recalibrate``: BN statistics recomputed
  on fixed training batches; ``shuffle``: batch statistics on seeded shuffled batches), and
- trained standalone with one short fixed schedule (``--train-epochs``, the recipe's ``train`` section
  otherwise, the same seed for all) through ``aps_zoo.train``, scored on the test split.

Kendall's tau and Spearman's rho between the two, with percentile bootstrap CIs over architectures,
go to ``<out>/ranking.md`` (+ ``ranking.png`` scatter, ``ranking.json``). Runs are cached under
``--runs`` (a rerun reuses finished searches and trainings); ``--workers N`` runs the supernets and the
standalone trainings in N processes at once (each with ``--threads`` torch threads). ``--supernets`` picks
some of the three; ``--standalone-from <earlier ranking.json>`` reuses the standalone accuracies an earlier
run measured for the same architectures, trained the same way, so another supernet setting (a ``--set
search.*`` override) is ranked against the same ground truth without retraining it:

    OMP_NUM_THREADS=1 python benchmarks/ranking.py recipes/search_resnet20_digits.yaml --out docs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from aps_zoo.filenames import CHANNEL_CONFIG_FILE
from aps_zoo.channels import ChannelConfig
from aps_zoo.data import build_loaders
from aps_zoo.plots import plt
from aps_zoo.recipe import Recipe, RecipeError, SearchSection, load_recipe
from aps_zoo.search import evaluation
from aps_zoo.runs import Run, make_accelerator
from aps_zoo.search.loop import Searcher
from aps_zoo.search.strategies import create_strategy
from aps_zoo.spaces import space_from_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import LABELS, method_recipe, run_search, train_run  # noqa: E402  (sibling benchmark)

SUPERNETS = ('aps', 'ordinal', 'independent')
EVALUATIONS = ('recalibrate', 'shuffle')


def sample_archs(space, budget: float, min_fraction: float, count: int, seed: int) -> List[List[int]]:
    """``count`` distinct architectures drawn uniformly from the band (the library's random strategy)."""
    band = SearchSection(budget_macs=budget, min_budget_fraction=min_fraction)
    archs = create_strategy('random', space, band, seed).propose(count)
    if len(archs) < count:
        raise ValueError(f"the band holds fewer than {count} distinct architectures")
    return archs


def standalone_top1(recipe: Recipe, config: ChannelConfig, out_dir: Path, cpu: bool) -> float:
    """Test top-1 of ``config`` trained standalone in ``out_dir`` (reused when done there)."""
    cached = out_dir / CHANNEL_CONFIG_FILE
    if cached.is_file() and ChannelConfig.load(cached).widths != config.widths:
        raise ValueError(f"{out_dir} holds another architecture (other recipe or seed): use another --runs")
    return train_run(recipe, config, out_dir, cpu)['top1']


def reused_standalone(path: Path, recipe: Recipe, archs: List[List[int]], dataset: str) -> List[float]:
    """The standalone accuracies in an earlier ``ranking.json``, when it ranked the same architectures on the
    same data, trained as ``recipe`` trains (seed and ``train`` section); a ValueError names what differs."""
    if not path.is_file():
        raise ValueError(f"--standalone-from {path}: no such file")
    previous = json.loads(path.read_text())
    try:
        trained = load_recipe(Path(previous['recipe']), previous['overrides'])
        trained = dataclasses.replace(trained, train=dataclasses.replace(trained.train, epochs=previous['train_epochs']))
        measured = {'archs': previous['archs'], 'dataset': previous['dataset'], 'seed': previous['seed'],
                    'train': trained.train}
        standalone = previous['standalone']
    except (KeyError, TypeError) as e:
        raise ValueError(f"--standalone-from {path}: not a ranking.json ({type(e).__name__} {e})") from None
    wanted = {'archs': archs, 'dataset': dataset, 'seed': recipe.seed, 'train': recipe.train}
    differ = [k for k in wanted if measured[k] != wanted[k]]
    if differ:
        raise ValueError(f"--standalone-from {path}: its {', '.join(differ)} differ from this run's; "
                         f"rank the same architectures trained the same way, or drop --standalone-from")
    return standalone


def run_jobs(jobs: Sequence[Tuple[Callable, tuple]], workers: int, threads: int) -> List:
    """``fn(*args)`` of every ``(fn, args)`` job, in order: here, or in ``workers`` spawned processes with
    ``threads`` torch threads each (longest jobs first gives the best packing)."""
    if workers == 1:
        return [fn(*args) for fn, args in tqdm(jobs, desc='runs')]
    context = multiprocessing.get_context('spawn')  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        for future in tqdm(as_completed(futures), total=len(futures), desc=f'runs ({workers} processes)'):
            future.result()  # the first failure stops the benchmark
        return [future.result() for future in futures]


def supernet_scores(recipe: Recipe, method: str, archs: Sequence[Sequence[int]], runs: Path, cpu: bool) -> Dict:
    """Train (or reuse) the method's supernet with the recipe's search, then score every architecture on
    the held-out split under each evaluation."""
    done = runs / method / 'scores.json'
    if done.is_file():
        return json.loads(done.read_text())
    found = run_search(recipe, method, runs, cpu)
    r = method_recipe(recipe, method, runs)
    accelerator = make_accelerator(cpu=cpu, seedable_sampler=True, find_unused_parameters=True)
    run = Run(r, runs / method / 'search', accelerator, resume=True)
    searcher = Searcher(r, accelerator, runs / method / 'search')
    with run:  # the finished search's newest checkpoint: its supernet weights
        searcher.restore(run)
    records = [json.loads(line) for line in Path(found['metrics']).read_text().splitlines()]
    warm = [x for x in records if x['phase'] == 'warmup']
    out = {'search_s': found['search_s'], 'warmup_val_acc': warm[-1]['val_acc'] if warm else None,
           'final_val_acc': records[-1]['val_acc'], 'sharing_end': records[-1]['sharing_mean']}
    out['recalibrate'] = [searcher.accuracy(a, searcher.val_loader) for a in tqdm(archs, desc=f'{method}: score')]
    searcher.calibration = None
    for m in evaluation.norms(searcher.supernet):
        m.use_running_stats = False
    shuffled = searcher.accelerator.prepare(evaluation.shuffled(searcher.data.val, recipe.seed))
    out['shuffle'] = [searcher.accuracy(a, shuffled) for a in archs]
    done.write_text(json.dumps(out, indent=2) + '\n')
    return out


def rank_agreement(x: Sequence[float], y: Sequence[float], reps: int = 2000, seed: int = 0) -> Dict[str, float]:
    """Kendall's tau-b and Spearman's rho of x vs y with 95% percentile bootstrap CIs over the pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    out = {'tau': stats.kendalltau(x, y).statistic, 'rho': stats.spearmanr(x, y).statistic}
    boot = {'tau': [], 'rho': []}
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            continue  # a resample without spread has no rank correlation
        boot['tau'].append(stats.kendalltau(x[i], y[i]).statistic)
        boot['rho'].append(stats.spearmanr(x[i], y[i]).statistic)
    for k, values in boot.items():  # no CI (nan) when no resample has spread
        lo_hi = np.nanpercentile(values, [2.5, 97.5]) if values else (np.nan, np.nan)
        out[f'{k}_lo'], out[f'{k}_hi'] = (float(v) for v in lo_hi)
    return out


def markdown(summary: Dict) -> str:
    s = summary
    lines = ["# Ranking: does the supernet order subnets as standalone training does?", "",
             "Generated by `benchmarks/ranking.py` (do not edit by hand). Command:", "",
             f"    {s['command']}", "",
             f"- recipe: `{s['recipe']}` with {s['overrides'] or 'no overrides'}; data: {s['dataset']}; space: {s['space']}",
             f"- {len(s['archs'])} architectures drawn uniformly from the band (seed "
             f"{s['seed']}) in [{s['band'][0] / 1e6:.3f}M, {s['band'][1] / 1e6:.3f}M] MACs "
             f"(measured range {min(s['macs']) / 1e6:.3f}M - {max(s['macs']) / 1e6:.3f}M)",
             f"- supernets: {s['search_epochs']} search epochs ({s['warmup_epochs']} warm-up) each, same steps; "
             f"scored on the held-out split ({s['val_images']} images)",
             f"- standalone: {s['train_epochs']} epochs each, seed {s['seed']}, test split ({s['test_images']} images); "
             f"standalone test top-1 ranges {min(s['standalone']):.2f} - {max(s['standalone']):.2f}"
             + (f" (reused from `{s['standalone_from']}`, measured by an earlier run)" if s['standalone_from'] else ''),
             f"- on {s['device']} ({s['cpu_count']} CPUs, shared with other jobs); invocations (later ones reuse the "
             f"cached runs):"]
    lines += [f"  - `{i['command']}`: {i['wall_s'] / 60:.1f} min wall, load average {i['load'][0]:.1f} at start, "
              f"{i['load'][1]:.1f} at end" for i in s['invocations']]
    lines += ["",
             "| supernet | evaluation | held-out acc, end of warm-up | Kendall tau [95% CI] | Spearman rho [95% CI] |"
             " sharing at end | supernet time |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for method, sc in s['supernets'].items():
        for ev in EVALUATIONS:
            a = sc['agreement'][ev]
            warm = 'n/a' if sc['warmup_val_acc'] is None else f"{sc['warmup_val_acc']:.3f}"
            lines.append(f"| {LABELS[method]} | {ev} | {warm} | {a['tau']:+.3f} [{a['tau_lo']:+.2f}, {a['tau_hi']:+.2f}] | "
                         f"{a['rho']:+.3f} [{a['rho_lo']:+.2f}, {a['rho_hi']:+.2f}] | {sc['sharing_end']:.3f} | "
                         f"{sc['search_s']:.0f} s |")
    lines += ["", "![supernet score vs standalone accuracy](ranking.png)", "", "## Reading", ""]
    lines += [f"- {line}" for line in s['reading']]
    return '\n'.join(lines) + '\n'


def reading(summary: Dict) -> List[str]:
    """Which evaluation ranks better (the search's default follows it) and how the supernets compare."""
    sn = summary['supernets']
    lines = []
    for ev in EVALUATIONS:
        taus = ', '.join(f"{m} {sc['agreement'][ev]['tau']:+.3f}" for m, sc in sn.items())
        lines.append(f"{ev}: Kendall tau {taus}.")
    mean_tau = {ev: np.mean([sc['agreement'][ev]['tau'] for sc in sn.values()]) for ev in EVALUATIONS}
    best = max(mean_tau, key=mean_tau.get)
    lines.append(f"Mean tau over the supernets: recalibrate {mean_tau['recalibrate']:+.3f}, shuffle "
                 f"{mean_tau['shuffle']:+.3f}: {best} ranks better here.")
    for m, sc in sn.items():
        a = sc['agreement'][best]
        sig = 'above 0' if a['tau_lo'] > 0 else 'below 0' if a['tau_hi'] < 0 else 'not distinguishable from 0'
        lines.append(f"{LABELS[m]} ({best}): tau {a['tau']:+.3f}, 95% CI [{a['tau_lo']:+.2f}, {a['tau_hi']:+.2f}], "
                     f"{sig}.")
    warm = ', '.join(f"{m} {sc['warmup_val_acc']:.3f}" for m, sc in sn.items() if sc['warmup_val_acc'] is not None)
    lines.append(f"Held-out accuracy of the controller's greedy subnet at the end of warm-up: {warm} (chance "
                 f"{1 / summary['num_classes']:.2f}); at the end: "
                 + ', '.join(f"{m} {sc['final_val_acc']:.3f}" for m, sc in sn.items()) + '.')
    lines.append(f"The standalone accuracies span {max(summary['standalone']) - min(summary['standalone']):.2f} points "
                 f"over {summary['test_images']} test images (one image = {100 / summary['test_images']:.2f} points), "
                 f"one seed each: their own noise bounds how well any supernet can agree with them.")
    return lines


def plot(summary: Dict, path: Path) -> None:
    sn = summary['supernets']
    fig, axes = plt.subplots(1, len(sn), figsize=(4.2 * len(sn), 3.8), sharey=True)
    for ax, (method, sc) in zip(np.atleast_1d(axes), sn.items()):
        for ev, marker in zip(EVALUATIONS, ('o', 'x')):
            a = sc['agreement'][ev]
            ax.scatter([100 * v for v in sc[ev]], summary['standalone'], marker=marker, s=22,
                       label=f"{ev} (tau {a['tau']:+.2f})")
        ax.set_title(LABELS[method], fontsize=10)
        ax.set_xlabel('supernet held-out accuracy (%)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='best')
    np.atleast_1d(axes)[0].set_ylabel(f"standalone test top-1 (%), {summary['train_epochs']} epochs")
    overrides = f" ({', '.join(summary['overrides'])})" if summary['overrides'] else ''
    fig.suptitle(f"{len(summary['archs'])} architectures near {summary['band'][1] / 1e6:.2f}M MACs{overrides}", fontsize=11)
    fig.savefig(path, dpi=130, bbox_inches='tight')
    plt.close(fig)


def _previous_invocations(path: Path, archs) -> List[Dict]:
    """The invocations recorded by an earlier run over the same architectures (their runs are reused)."""
    if not path.is_file():
        return []
    previous = json.loads(path.read_text())
    if previous.get('archs') != archs:
        return []
    return previous.get('invocations') or [{k: previous[k] for k in ('command', 'wall_s', 'load')}]


def run(recipe_path: Path, overrides: List[str], out: Path, runs: Path, count: int, train_epochs: Optional[int],
        cpu: bool, command: str, workers: int = 1, threads: int = 1, methods: Sequence[str] = SUPERNETS,
        standalone_from: Optional[Path] = None) -> Dict:
    """Every step of the benchmark for the ``methods`` supernets; writes ranking.{md,json,png} into ``out``."""
    t0, load0 = time.time(), os.getloadavg()[0]
    recipe = load_recipe(recipe_path, overrides)
    if train_epochs is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=train_epochs))
    s = recipe.search
    data = build_loaders(recipe.data, recipe.seed, holdout=True)
    space = space_from_recipe(recipe, data.num_classes, data.input_size)
    archs = sample_archs(space, s.budget_macs, s.min_budget_fraction, count, recipe.seed)
    reused = reused_standalone(standalone_from, recipe, archs, data.description) if standalone_from else None
    jobs = [(supernet_scores, (recipe, method, archs, runs, cpu)) for method in methods]
    if reused is None:
        jobs += [(standalone_top1, (recipe, space.config(arch, {'source': 'ranking', 'draw': i}),
                                    runs / 'standalone' / f'arch{i}', cpu)) for i, arch in enumerate(archs)]
    results = run_jobs(jobs, workers, threads)
    supernets = dict(zip(methods, results))
    standalone = results[len(methods):] if reused is None else reused
    for sc in supernets.values():
        sc['agreement'] = {ev: rank_agreement(sc[ev], standalone) for ev in EVALUATIONS}
    summary = {'command': command, 'recipe': str(recipe_path), 'overrides': overrides, 'dataset': data.description,
               'space': f"{recipe.space.family}{recipe.space.depth}, candidates {recipe.space.candidates}",
               'seed': recipe.seed, 'band': [s.min_budget_fraction * s.budget_macs, s.budget_macs],
               'standalone_from': str(standalone_from) if standalone_from else None,
               'archs': archs, 'macs': [space.macs(a) for a in archs], 'standalone': standalone,
               'search_epochs': s.epochs, 'warmup_epochs': s.warmup_epochs, 'train_epochs': recipe.train.epochs,
               'val_images': data.sizes['val'], 'num_classes': data.num_classes, 'test_images': data.sizes['test'], 'supernets': supernets,
               'device': 'cpu' if cpu else torch.cuda.get_device_name(), 'cpu_count': os.cpu_count(),
               'invocations': _previous_invocations(out / 'ranking.json', archs)
               + [{'command': command, 'wall_s': time.time() - t0, 'load': [load0, os.getloadavg()[0]],
                   'workers': workers}]}
    summary['reading'] = reading(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'ranking.json').write_text(json.dumps(summary, indent=2) + '\n')
    (out / 'ranking.md').write_text(markdown(summary))
    plot(summary, out / 'ranking.png')
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('recipe', type=Path, nargs='?', default=Path('recipes/search_resnet20_digits.yaml'))
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                        help='recipe overrides, e.g. search.epochs=20 search.warmup_epochs=10')
    parser.add_argument('--out', type=Path, default=Path('docs'), help='folder for ranking.{md,json,png}')
    parser.add_argument('--runs', type=Path, default=Path('runs/ranking'), help='folder for the cached runs')
    parser.add_argument('--archs', type=int, default=20, help='architectures to rank (default 20)')
    parser.add_argument('--train-epochs', type=int, default=None, help='standalone epochs (default: the recipe)')
    parser.add_argument('--supernets', nargs='+', choices=SUPERNETS, default=list(SUPERNETS),
                        help='supernets to train and score (default: all three)')
    parser.add_argument('--standalone-from', type=Path, default=None, metavar='RANKING_JSON',
                        help="reuse the standalone accuracies of an earlier run's ranking.json (same architectures "
                             "and training)")
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads per process (default 1)')
    parser.add_argument('--workers', type=int, default=1, help='processes running supernets and trainings (default 1)')
    args = parser.parse_args(argv)
    if args.archs < 3:
        parser.error('--archs must be at least 3')
    if args.workers < 1 or args.threads < 1:
        parser.error('--workers and --threads must be at least 1')
    torch.set_num_threads(args.threads)
    command = ' '.join(['python benchmarks/ranking.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    try:
        summary = run(args.recipe, args.set, args.out, args.runs, args.archs, args.train_epochs,
                      not torch.cuda.is_available(), command, args.workers, args.threads,
                      list(dict.fromkeys(args.supernets)), args.standalone_from)
    except (ValueError, RecipeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print('\n'.join(summary['reading']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
