"""Plots: the numbers each figure draws (bars, heatmap cells, ticks, labels), not its pixels."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from aps_zoo import plots
from aps_zoo.channels import ChannelConfig
from aps_zoo.flops import count_macs, uniform_like

SEARCHED = ChannelConfig('resnet_cifar', [16, 8, 16, 8, 16, 32, 16, 32, 24, 64, 32, 48, 64],
                         14, num_classes=10, input_size=(3, 32, 32))


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save (kept open for inspection), by file name."""
    kept = {}

    def keep(fig, path):
        kept[path.name] = fig
        fig.savefig(path, format='png')
        return path
    monkeypatch.setattr(plots, '_save', keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def test_uniform_like_has_integer_widths_within_the_macs():
    ref = uniform_like(SEARCHED)
    macs, budget = count_macs(ref), count_macs(SEARCHED)
    assert all(type(w) is int and w > 0 for w in ref.widths)
    assert 0.9 * budget <= macs <= budget
    label = plots.reference_label(ref)
    assert label == f"uniform x{ref.provenance['multiplier']:.2f}, same MACs ({macs / 1e6:.2f}M)"


def test_widths_plot_draws_the_searched_and_reference_widths(tmp_path, figures):
    path = plots.plot_widths(SEARCHED, tmp_path / 'widths.png', title='a title')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    ax = figures['widths.png'].axes[0]
    searched, reference = ax.containers
    ref = uniform_like(SEARCHED)
    assert [b.get_height() for b in searched] == list(SEARCHED.widths)
    assert [b.get_height() for b in reference] == list(ref.widths)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f'searched ({count_macs(SEARCHED) / 1e6:.2f}M MACs)', plots.reference_label(ref)]
    assert ax.get_ylabel() == 'output channels' and ax.get_xlabel().startswith('width entry')
    assert all(float(t).is_integer() for t in ax.get_yticks())
    assert [t.get_text() for t in ax.texts] == ['stage 1', 'stage 2', 'stage 3']


def _records(epochs=6, warmup=2, layers=('stem.conv', 'blocks.0.convs.0.conv', 'blocks.0.shortcut.conv', 'fc')):
    return [{'epoch': e, 'phase': 'warmup' if e < warmup else 'search', 'val_acc': 0.1 * e, 'train_acc': 0.05 * e,
             'sharing': {name: 1 - 0.01 * e * i for i, name in enumerate(layers)}} for e in range(epochs)]


def test_sharing_heatmap_is_layers_by_epochs_with_readable_names(tmp_path, figures):
    records = _records()
    plots.plot_sharing(records, tmp_path / 'sharing.png')
    ax = figures['sharing.png'].axes[0]
    cells = ax.images[0].get_array()
    assert cells.shape == (4, 6)
    assert cells[2, 5] == pytest.approx(1 - 0.01 * 5 * 2)  # layer 2 at epoch 5
    assert [t.get_text() for t in ax.get_yticklabels()] == ['stem', 'block 0 conv 1', 'block 0 shortcut', 'fc']
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert ax.get_xlabel() == 'epoch' and ax.get_ylabel() == 'layer (forward order)'
    assert len(figures['sharing.png'].axes) == 2  # the colorbar


def test_curves_have_integer_epoch_ticks_labels_and_a_wrapped_title(tmp_path, figures):
    title = 'APS search of a long experiment name on a dataset described at length: ' * 3
    plots.plot_curves(_records(), 'epoch', {'accuracy': ['val_acc', 'train_acc']}, tmp_path / 'c.png', title=title)
    fig = figures['c.png']
    ax = fig.axes[0]
    assert ax.get_ylabel() == 'accuracy' and ax.get_xlabel() == 'epoch'
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "held-out, strategy's pick", 'train, sampled subnets', 'warm-up']
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1 * e for e in range(6)])
    lines = fig._suptitle.get_text().splitlines()
    assert len(lines) > 1 and max(len(line) for line in lines) <= 4.2 * 11
