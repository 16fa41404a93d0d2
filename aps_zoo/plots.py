"""PNG plots of runs (matplotlib, Agg): metric curves, per-layer sharing, searched widths against uniform.

Every figure has labelled axes, integer ticks where the axis is discrete (epochs, layers, channels) and
titles wrapped to the figure's width. The widths plot always compares with one reference: the family's
standard network scaled by one multiplier to the MACs of the plotted network, widths rounded to integers
(:func:`aps_zoo.flops.uniform_like`), labelled the same way wherever it is drawn (search folder, exported card).
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ._io import atomic_write  # noqa: E402
from .channels import ChannelConfig  # noqa: E402
from .flops import count_macs, uniform_like  # noqa: E402

DPI = 150
# legend names of the metric keys the search and training logs write
LABELS = {'val_acc': "held-out, strategy's pick", 'train_acc': 'train, sampled subnets',
          'reward': "strategy's samples", 'band_reward': 'band samples, same supernet', 'entropy': 'policy',
          'baseline': 'REINFORCE baseline', 'sharing_mean': 'mean over layers', 'train_loss': 'train',
          'eval_loss': 'evaluation', 'eval_top1': 'model', 'ema_eval_top1': 'EMA of weights'}


def _save(fig, path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches='tight', format='png'))
    plt.close(fig)
    return path


def _title(fig, text: str, width_in: float) -> None:
    """A figure title wrapped to the figure's width (about 11 characters per inch at 11 pt)."""
    if text:
        fig.suptitle(textwrap.fill(text, width=max(30, int(width_in * 11))), fontsize=11)


def _warmup_end(records: List[Dict], x: str):
    """The x at which the search leaves warm-up (records with ``phase``), or None."""
    warm = [r[x] for r in records if r.get('phase') == 'warmup' and x in r]
    return max(warm) + 0.5 if warm and len(warm) < len(records) else None


def plot_curves(records: List[Dict], x: str, panels: Dict[str, Sequence[str]], path, title: str = '') -> Path:
    """One panel per entry of ``panels`` (y-axis label -> metric keys), each metric against ``x`` (integer
    ticks); a search log's warm-up epochs are shaded."""
    width = 4.2 * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.4), squeeze=False, layout='constrained')
    warm_end = _warmup_end(records, x)
    for ax, (ylabel, keys) in zip(axes[0], panels.items()):
        for key in keys:
            pts = [(r[x], r[key]) for r in records if r.get(key) is not None and x in r]
            if pts:
                ax.plot(*zip(*pts), marker='.' if len(pts) < 40 else None, label=LABELS.get(key, key))
        if warm_end is not None:
            ax.axvspan(min(r[x] for r in records) - 0.5, warm_end, color='0.9', zorder=0, label='warm-up')
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis='y', useOffset=False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _title(fig, title, width)
    return _save(fig, path)


def short_layer_name(name: str) -> str:
    """'blocks.3.convs.0.conv' -> 'block 3 conv 1', 'blocks.3.shortcut.conv' -> 'block 3 shortcut'."""
    name = re.sub(r'\.conv$', '', name)
    name = re.sub(r'^blocks\.(\d+)\.convs\.(\d+)$', lambda m: f'block {m[1]} conv {int(m[2]) + 1}', name)
    return re.sub(r'^blocks\.(\d+)\.', r'block \1 ', name)


def plot_sharing(records: List[Dict], path, title: str = '') -> Path:
    """Heatmap of every layer's sharing level (rows, forward order) over the search epochs (columns)."""
    layers = list(next(r['sharing'] for r in records if r.get('sharing')))
    rows = [r for r in records if r.get('sharing')]
    levels = np.array([[r['sharing'].get(layer, np.nan) for r in rows] for layer in layers])
    epochs = [r['epoch'] for r in rows]
    width, height = min(10.0, 5.5 + 0.08 * len(epochs)), 1.2 + 0.17 * len(layers)
    fig, ax = plt.subplots(figsize=(width, height), layout='constrained')
    image = ax.imshow(levels, aspect='auto', interpolation='nearest', cmap='viridis',
                      extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(layers) - 0.5, -0.5))
    bar = fig.colorbar(image, ax=ax, label='sharing level (1: candidates share all weights)')
    bar.formatter.set_useOffset(False)
    bar.update_ticks()
    ax.set_yticks(range(len(layers)), [short_layer_name(layer) for layer in layers], fontsize=7)
    ax.set_ylabel('layer (forward order)')
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    warm_end = _warmup_end(records, 'epoch')
    if warm_end is not None:
        ax.axvline(warm_end, color='white', linestyle='--', linewidth=1)
        ax.text(warm_end, -0.7, ' warm-up ends', fontsize=7, va='bottom')
    _title(fig, title, width)
    return _save(fig, path)


def reference_label(reference: ChannelConfig) -> str:
    """Legend text of the uniform reference (the same in every widths plot)."""
    return f"uniform x{reference.provenance['multiplier']:.2f}, same MACs ({count_macs(reference) / 1e6:.2f}M)"


def plot_widths(config: ChannelConfig, path, title: str = '', label: str = 'searched') -> Path:
    """Grouped bars of the output channels of every width entry of ``config`` and of its uniform
    reference at the same MACs; stage boundaries dotted."""
    reference = uniform_like(config)
    n = len(config.widths)
    width = max(6.0, 0.28 * n + 2)
    fig, ax = plt.subplots(figsize=(width, 3.6), layout='constrained')
    idx = np.arange(n)
    ax.bar(idx - 0.2, config.widths, width=0.4, color='tab:blue',
           label=f'{label} ({count_macs(config) / 1e6:.2f}M MACs)')
    ax.bar(idx + 0.2, reference.widths, width=0.4, color='tab:orange', label=reference_label(reference))
    starts = _stage_starts(config)
    for stage, (start, end) in enumerate(zip(starts, [*starts[1:], n])):
        if stage:
            ax.axvline(start - 0.5, color='0.5', linestyle=':', linewidth=1)
        ax.text((start + end - 1) / 2, 1.01, f'stage {stage + 1}', transform=ax.get_xaxis_transform(),
                ha='center', va='bottom', fontsize=8, color='0.3')
    ax.set_xlabel('width entry (forward order; 0: stem)')
    ax.set_ylabel('output channels')
    ax.set_xticks(idx if n <= 40 else idx[::5])
    ax.set_xlim(-0.7, n - 0.3)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 4, 5, 8, 10]))
    ax.legend(fontsize=8, loc='upper left', framealpha=0.95)
    ax.grid(axis='y', alpha=0.3)
    _title(fig, title, width)
    return _save(fig, path)


def _stage_starts(config: ChannelConfig) -> List[int]:
    """First width entry of each stage (entries of the blocks' convs, in forward order)."""
    starts, stage = [], None
    for b in config.layout.blocks:
        if b.stage != stage:
            stage = b.stage
            starts.append(min(b.entries))
    return starts
