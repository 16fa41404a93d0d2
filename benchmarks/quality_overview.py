"""Every searched network of a set of search_quality reports against uniform width in its setting, with the paired
bootstrap of that benchmark: how often a search beat shrinking every layer uniformly, and whether the networks'
parameters or the share of the budget they use go with the difference. For the Fashion-MNIST study:

    python benchmarks/quality_overview.py docs/results/quality_resnet20_fashion_mnist_*.json \\
        --plot docs/results/quality_overview_fashion_mnist.png

A network's setting is its test data, budget and retraining epochs. It is compared with the uniform network of its
own report, or, where its report has none (a method run in a recipe of its own), with the uniform network of the
same setting that has the most retraining seeds. Prints a Markdown table of the comparisons, the count of verdicts
and rank correlations with bootstrap CIs; ``--plot PATH`` draws every difference with its CI.
"""
from __future__ import annotations
import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_quality import CompareError, network_of, read_report  # noqa: E402  (sibling benchmarks)
from ranking import rank_agreement  # noqa: E402
from search_quality import paired_bootstrap, per_image  # noqa: E402
from aps_zoo.plots import plt  # noqa: E402

REFERENCES = ('uniform', 'standard')  # not searched: uniform is the baseline, standard the over-budget capacity check
FEATURES = {'params_ratio': "parameters relative to uniform's", 'budget_used': 'share of the budget used'}


def load_reports(paths: Sequence[Path]) -> List[Dict]:
    """Every retrained network of the reports, in their order (each report read once)."""
    networks = []
    for path in map(str, paths):
        report = read_report(path)
        networks += [network_of(report, path, method) for method in report['methods']]
    return networks


def setting(network: Dict) -> tuple:
    return network['data'], network['budget_macs'], network['train_epochs']


def uniform_for(network: Dict, networks: List[Dict]) -> Optional[Dict]:
    """The uniform network ``network`` is compared with: its own report's, else its setting's with most seeds."""
    same = [n for n in networks if n['method'] == 'uniform' and setting(n) == setting(network)]
    own = [n for n in same if n['report'] == network['report']]
    return own[0] if own else max(same, key=lambda n: len(n['seeds']), default=None)


def compare_all(networks: List[Dict]) -> List[Dict]:
    """One row per searched network that has a uniform network in its setting."""
    rows = []
    for n in networks:
        uniform = None if n['method'] in REFERENCES else uniform_for(n, networks)
        if uniform is not None:
            rows.append({'report': n['report'], 'method': n['method'], 'uniform_report': uniform['report'],
                         'params_ratio': n['params'] / uniform['params'], 'budget_used': n['macs'] / n['budget_macs'],
                         'seeds': len(n['seeds']), **paired_bootstrap(per_image(n), per_image(uniform))})
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = ['| report | method | against uniform of | params / uniform\'s | MACs / budget | seeds | '
             'difference (points) | 95% CI | verdict |', '|---|---|---|---:|---:|---:|---:|---|---|']
    lines += [f"| {r['report']} | {r['method']} | {r['uniform_report']} | {r['params_ratio']:.2f} | "
              f"{r['budget_used']:.3f} | {r['seeds']} | {r['diff']:+.2f} | [{r['lo']:+.2f}, {r['hi']:+.2f}] | "
              f"{r['verdict']} |" for r in rows]
    verdicts = Counter(r['verdict'].split(' ')[0] for r in rows)
    lines += ['', f"{len(rows)} searched networks against uniform width: {verdicts['better']} better, "
              f"{verdicts['tie']} tie, {verdicts['worse']} worse (95% CI); mean above uniform's: "
              f"{sum(r['diff'] > 0 for r in rows)}."]
    if len(rows) >= 3:
        for key, name in FEATURES.items():
            values = [r[key] for r in rows]
            if len(set(values)) == 1:
                lines.append(f"{name}: the same for every network, so no rank correlation.")
                continue
            a = rank_agreement(values, [r['diff'] for r in rows])
            lines.append(f"{name} vs the difference: Spearman rho {a['rho']:+.2f} [{a['rho_lo']:+.2f}, "
                         f"{a['rho_hi']:+.2f}], Kendall tau {a['tau']:+.2f} [{a['tau_lo']:+.2f}, {a['tau_hi']:+.2f}].")
    return '\n'.join(lines)


def plot(rows: List[Dict], path: Path) -> None:
    """Each network's difference from uniform with its 95% CI, one row per network, one marker per method."""
    methods = list(dict.fromkeys(r['method'] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.24 * len(rows) + 1.6))
    for marker, color, method in zip('osD^vP', plt.get_cmap('tab10').colors, methods):
        idx = [i for i, r in enumerate(rows) if r['method'] == method]
        ax.errorbar([rows[i]['diff'] for i in idx], idx, xerr=[[rows[i]['diff'] - rows[i]['lo'] for i in idx],
                                                               [rows[i]['hi'] - rows[i]['diff'] for i in idx]],
                    fmt=marker, color=color, mfc='none', ms=5, capsize=2, lw=1, label=method)
    ax.axvline(0, color='gray', lw=1, ls='--')
    prefix = os.path.commonprefix([r['report'] for r in rows])
    ax.set_yticks(range(len(rows)), [f"{r['report'][len(prefix):] or r['report']}: {r['method']}" for r in rows],
                  fontsize=7)
    ax.set_title(f'{prefix.strip("_") or "searched networks"}: every searched network against uniform width',
                 fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel('test top-1 minus uniform width at the same budget (points, 95% CI)')
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('reports', nargs='+', type=Path, help='search_quality reports (JSON)')
    parser.add_argument('--plot', type=Path, default=None, help='also draw every difference with its CI (a PNG)')
    args = parser.parse_args(argv)
    try:
        rows = compare_all(load_reports(args.reports))
        if not rows:
            raise CompareError('no searched network with a uniform network in its setting among these reports')
    except CompareError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
