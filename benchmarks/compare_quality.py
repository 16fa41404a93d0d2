"""Compare retrained networks of different search_quality reports with that benchmark's paired bootstrap (the
same test images, each report's retraining seeds): a method run in one recipe against methods of another, e.g.
random search of recipes/quality_resnet20_fashion_mnist_25_fine_random.yaml against APS-T and uniform width of
recipes/quality_resnet20_fashion_mnist_25_fine_floor.yaml, which share the data and the budget:

    python benchmarks/compare_quality.py docs/results/quality_resnet20_fashion_mnist_25_fine_random.json:random \\
        docs/results/quality_resnet20_fashion_mnist_25_fine_floor.json:aps \\
        docs/results/quality_resnet20_fashion_mnist_25_fine_floor.json:uniform

Prints a Markdown table of the networks and one of every pair (the first named against each later one, and so
on); ``--plot PATH`` draws them side by side. Reports of other test data cannot be paired and are refused.
``--common-seeds`` keeps only the retraining seeds every named network has, so that a method retrained with fewer
seeds is compared on the same seeds, not against the others' later ones.
"""
from __future__ import annotations
import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import LABELS, mean_std, paired_bootstrap, per_image, plot_bars  # noqa: E402  (sibling benchmark)


class CompareError(ValueError):
    """A named network that cannot be read or paired."""


def read_report(path: str) -> Dict:
    """A search_quality report (a JSON object), its ``methods`` a mapping ({} where it has none)."""
    try:
        report = json.loads(Path(path).read_text())
        if not isinstance(report, dict):
            raise ValueError('not a JSON object')
    except (OSError, ValueError) as e:
        raise CompareError(f"{path}: not a readable search_quality report ({e})") from None
    methods = report.get('methods')
    return {**report, 'methods': methods if isinstance(methods, dict) else {}}


def network_of(report: Dict, path: str, method: str) -> Dict:
    """``method``'s row of ``report`` (read from ``path``), with the report's name and test data."""
    methods = report['methods']
    if method not in methods:
        raise CompareError(f"{path} has no retrained method {method!r} (it has: {', '.join(methods) or 'none'})")
    images = report.get('test_images')
    for seed, run in methods[method].get('seeds', {}).items():
        if len(run.get('correct', '')) != images:
            raise CompareError(f"{path}: {method} seed {seed} has no per-image results for its {images} test images")
    return {**methods[method], 'spec': f'{path}:{method}', 'method': method, 'report': Path(path).stem,
            'data': (report.get('dataset'), images), 'budget_macs': report.get('budget_macs'),
            'train_epochs': report.get('train_epochs')}


def load_network(spec: str) -> Dict:
    """``REPORT.json:METHOD`` -> that method's row of the report (:func:`network_of`)."""
    path, sep, method = spec.rpartition(':')
    if not sep or not path or not method:
        raise CompareError(f"{spec}: name a network as REPORT.json:METHOD")
    return network_of(read_report(path), path, method)


def check_pairable(networks: List[Dict]) -> None:
    """Every network was tested on the same images (the same data, the same count)."""
    first = networks[0]
    for other in networks[1:]:
        if other['data'] != first['data']:
            raise CompareError(f"{other['spec']} was tested on {other['data'][0]} ({other['data'][1]} images), "
                               f"{first['spec']} on {first['data'][0]} ({first['data'][1]}): not the same test "
                               f"images, so they cannot be paired")


def keep_common_seeds(networks: List[Dict]) -> List[Dict]:
    """The networks with only the retraining seeds all of them have (refused when they share none)."""
    common = set.intersection(*(set(n['seeds']) for n in networks))
    if not common:
        raise CompareError(f"{', '.join(n['spec'] for n in networks)} share no retraining seed; "
                           f"compare them without --common-seeds")
    return [{**n, 'seeds': {s: run for s, run in n['seeds'].items() if s in common}} for n in networks]


def networks_markdown(networks: List[Dict]) -> str:
    rows = ['| network | report | MACs | budget | params | test top-1, mean ± std | seeds |',
            '|---|---|---:|---:|---:|---:|---:|']
    for n in networks:
        mean, std = mean_std([s['top1'] for s in n['seeds'].values()])
        rows.append(f"| {LABELS.get(n['method'], n['method'])} | {n['report']} | {n['macs'] / 1e6:.3f}M | "
                    f"{n['budget_macs'] / 1e6:.3f}M | {n['params'] / 1e3:.1f}k | {mean:.2f} ± {std:.2f} | "
                    f"{len(n['seeds'])} |")
    return '\n'.join(rows)


def pairs_markdown(networks: List[Dict]) -> str:
    rows = ['| comparison | difference (points) | 95% CI | verdict |', '|---|---:|---|---|']
    for a, b in itertools.combinations(networks, 2):
        c = paired_bootstrap(per_image(a), per_image(b))
        rows.append(f"| {a['report']}:{a['method']} vs {b['report']}:{b['method']} | {c['diff']:+.2f} | [{c['lo']:+.2f}, {c['hi']:+.2f}] | "
                    f"{c['verdict']} |")
    return '\n'.join(rows)


def short_report(network: Dict, prefix: str) -> str:
    """The report's name without the ``prefix`` all compared reports share (its last word if nothing is left)."""
    return network['report'][len(prefix):].strip('_') or network['report'].rsplit('_', 1)[-1]


def plot(networks: List[Dict], path: Path) -> None:
    """The networks' bars (mean ± std, each seed a dot) as search_quality draws a setting's; titled by the file's
    name and the first network's budget."""
    methods = [n['method'] for n in networks]
    prefix = os.path.commonprefix([n['report'] for n in networks])
    rows = {(n['method'] if methods.count(n['method']) == 1 else f"{n['method']}\n({short_report(n, prefix)})"):
            {'seeds': n['seeds'], 'macs': n['macs']} for n in networks}
    plot_bars({'setting': path.stem, 'budget_macs': networks[0]['budget_macs'], 'methods': rows}, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('networks', nargs='+', help='REPORT.json:METHOD, at least two')
    parser.add_argument('--plot', type=Path, default=None, help='also draw the networks side by side (a PNG)')
    parser.add_argument('--common-seeds', action='store_true',
                        help='compare on the retraining seeds every named network has')
    args = parser.parse_args(argv)
    try:
        if len(args.networks) < 2:
            raise CompareError('name at least two networks (REPORT.json:METHOD) to compare')
        networks = [load_network(spec) for spec in args.networks]
        check_pairable(networks)
        if args.common_seeds:
            networks = keep_common_seeds(networks)
    except CompareError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(networks_markdown(networks) + '\n\n' + pairs_markdown(networks))
    if args.plot:
        plot(networks, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
