"""PNG plots of runs (matplotlib, Agg): metric curves and searched widths against a uniform network."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from ._io import atomic_write  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches='tight', format='png'))
    plt.close(fig)
    return path


def plot_curves(records: List[Dict], x: str, panels: Dict[str, Sequence[str]], path, title: str = '') -> Path:
    """One panel per entry of ``panels`` (panel title -> metric keys), each metric against ``x``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels.items()):
        for key in keys:
            pts = [(r[x], r[key]) for r in records if r.get(key) is not None and x in r]
            if pts:
                ax.plot(*zip(*pts), marker='.' if len(pts) < 40 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis='y', useOffset=False)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.04)
    return _save(fig, path)


def plot_widths(widths: Sequence[int], path, reference: Optional[Sequence[int]] = None,
                label: str = 'searched', reference_label: str = 'uniform', title: str = '') -> Path:
    """Bar chart of per-layer widths, with a reference network (e.g. uniform) as a step line."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(widths) + 2), 3.4))
    idx = list(range(len(widths)))
    ax.bar(idx, widths, color='tab:blue', alpha=0.8, label=label)
    if reference is not None:
        ax.step(idx, reference, where='mid', color='tab:orange', label=reference_label)
    ax.set_xlabel('layer (forward order)')
    ax.set_ylabel('output channels')
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis='y', alpha=0.3)
    return _save(fig, path)
