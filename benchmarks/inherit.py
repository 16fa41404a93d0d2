"""Slimming a trained parent: APS search from its weights + inherited child, against scratch and uniform slimming.

One parent, a full-width CIFAR ResNet-8 (16/32/64), is trained here on scikit-learn digits (8x8, embedded).
For each budget (a fraction of the parent's MACs) and seed:

    aps_inherited      APS search with ``space.init_from: <parent>`` (meta widths = parent widths, overlap 1,
                       BN importance order), then the searched child fine-tuned from its inherited ``P^T W Q``
                       weights (``train --init inherited``)
    aps_scratch        the same searched config trained from random weights with the same recipe and steps
    uniform_inherited  the parent slimmed to the uniform width multiplier that fits the budget (its leading
                       channels, through the same inherited-supernet path, BN re-estimated), same fine-tune

Test top-1 is recorded before fine-tuning (epoch 0) and after every fine-tune epoch; the report is a Markdown
table (mean ± std over seeds), a plot and the raw numbers:

    OMP_NUM_THREADS=1 python benchmarks/inherit.py --out docs/inherit      # docs/inherit.{md,png,json}

(one thread: on a CPU shared with other jobs, two threads per process measured ~20x slower per step).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import load_file

from aps_zoo.filenames import INHERITED_DIR, METRICS_FILE, WEIGHTS_FILE
from aps_zoo.channels import ChannelConfig, uniform_widths
from aps_zoo.data import build_loaders
from aps_zoo.flops import count_macs, uniform_at_budget
from aps_zoo.models import create_model_from_config
from aps_zoo.plots import plt
from aps_zoo.recipe import recipe_from_dict
from aps_zoo.search.decode import BN_BATCHES
from aps_zoo.search.loop import search
from aps_zoo.inherited import inherited_model, write_inherited
from aps_zoo.spaces import SearchSpace
from aps_zoo.spaces.inherit import supernet_for
from aps_zoo.train import train

FINETUNE_STEPS = 20  # batches of 64 per fine-tune epoch
SEARCH_EPOCHS, SEARCH_STEPS = 3, 12  # warm-up epochs = search epochs, steps in each
METHODS = {'aps_inherited': 'APS search + inherited weights', 'aps_scratch': 'same config from scratch',
           'uniform_inherited': 'uniform slimming of the parent'}
DEPTH = 8  # resnet_cifar8: stem + 3 basic blocks (the shared 2-core CPU cannot afford ResNet-20 here)
USAGE = """## Using it

A search recipe names the parent in `space.init_from` and, optionally, an importance order:

```yaml
space:
  family: resnet            # the parent's family and depth
  depth: 50
  candidates: [32, 48, 64]  # x stage multipliers; each must fit the parent's width at the overlap
  stage_multipliers: [1, 2, 4, 8, 8]
  meta_width: max           # replaced by the parent's widths
  init_from: resnet50.a1_in1k           # or hf-hub:org/name[@rev], local-dir:<folder>, a .safetensors file
  init_importance: bn_scale             # none | bn_scale | l1
```

`aps-zoo search` then writes `<run>/search/inherited/` (the child's `P^T W Q` weights, BN statistics
re-estimated); `aps-zoo train <recipe> --config <run>/search/channel_config.json --init inherited` fine-tunes
from it, and `aps-zoo export` of either folder writes a card whose "Initialised from" line names the parent
and its revision (Hub commit, or the sha256 of a local weights file).

Limits: the zoo's own ResNets and MobileNetV2s and timm's MobileNetV2 are carried exactly (tested: logits
equal). timm's plain ResNets downsample with a strided 1x1 conv + BN where the zoo ([design.md](design.md#shortcuts)) uses a 2x2
average pool + 1x1 conv: those shortcuts are carried with the BN folded, an approximation (tested: features
equal up to the first stage-start block, the card notes it). No ImageNet parent was measured here (no network).
"""
DATA = {'dataset': 'digits', 'image_size': 8, 'val_fraction': 0.2, 'batch_size': 64, 'augment': False}


def _recipe(root: Path, name: str, seed: int, budget: float, init_from: str, epochs: int):
    return recipe_from_dict({
        'name': name, 'seed': seed, 'output_dir': str(root), 'data': DATA,
        'space': {'family': 'resnet_cifar', 'depth': DEPTH, 'candidates': [4, 8, 12, 16],
                  'stage_multipliers': [1, 2, 4], 'meta_width': 'max', 'init_from': init_from,
                  'init_importance': 'bn_scale'},
        'search': {'budget_macs': budget, 'epochs': 2 * SEARCH_EPOCHS, 'warmup_epochs': SEARCH_EPOCHS,
                   'steps_per_epoch': SEARCH_STEPS, 'decode_top_k': 4,
                   'controller': {'steps_per_epoch': 8, 'lr': 3e-3}},
        'train': {'epochs': epochs, 'lr': 0.05, 'sched': 'cosine', 'select_best': False,
                  'steps_per_epoch': FINETUNE_STEPS},
    })


@torch.no_grad()
def _test_top1(model, recipe) -> float:
    model.eval()
    correct = total = 0
    for x, y in build_loaders(recipe.data, recipe.seed, holdout=False).test:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / total


def _finetune(recipe, config, init: str, out_dir: Path, start_model) -> List[float]:
    """Test top-1 of ``start_model`` (epoch 0), then after each fine-tune epoch."""
    result = train(recipe, config, cpu=True, init=init, out_dir=out_dir)
    curve = [100 * json.loads(line)['eval_top1']  # the training log's fractions, in percent as _test_top1
             for line in (result.out_dir / METRICS_FILE).read_text().splitlines()]
    return [_test_top1(start_model, recipe)] + curve


def _uniform_child(parent: Path, config: ChannelConfig, recipe):
    """The parent slimmed to ``config`` (leading channels): a one-architecture space through the inherited
    supernet, BN statistics re-estimated as for a searched child."""
    n = len(config.widths)
    space = SearchSpace(config.family, config.depth, tuple((w,) for w in config.widths), tuple((e,) for e in range(n)),
                        tuple(config.widths), config.num_classes, config.input_size, 1.0)
    _, supernet, _ = supernet_for(space, str(parent), 'bn_scale')
    data = build_loaders(recipe.data, recipe.seed, holdout=True)
    return inherited_model(supernet, config, islice(data.train, BN_BATCHES))


def run_setting(root: Path, parent: Path, fraction: float, seed: int, epochs: int) -> Dict:
    """The three methods at one budget fraction and seed."""
    parent_macs = count_macs(ChannelConfig('resnet_cifar', uniform_widths('resnet_cifar', DEPTH), DEPTH, 10,
                                           (3, 8, 8)))
    budget = fraction * parent_macs
    tag = f'{int(fraction * 100)}_s{seed}'
    recipe = _recipe(root, f'aps_{tag}', seed, budget, str(parent), epochs)
    t0 = time.time()
    searched = search(recipe, cpu=True)
    search_s = time.time() - t0
    config = searched.config
    inherited = create_model_from_config(config)
    inherited.load_state_dict(load_file(str(recipe.run_dir / 'search' / INHERITED_DIR / WEIGHTS_FILE)))
    torch.manual_seed(seed)
    scratch = create_model_from_config(config)
    uniform = uniform_at_budget('resnet_cifar', DEPTH, budget, num_classes=10, input_size=(3, 8, 8))
    uniform_recipe = _recipe(root, f'uniform_{tag}', seed, budget, str(parent), epochs)
    slimmed = _uniform_child(parent, uniform, uniform_recipe)
    write_inherited(slimmed, uniform_recipe.run_dir / 'search')
    curves = {
        'aps_inherited': _finetune(recipe, config, 'inherited', recipe.run_dir / 'ft_inherited', inherited),
        'aps_scratch': _finetune(recipe, config, 'random', recipe.run_dir / 'ft_scratch', scratch),
        'uniform_inherited': _finetune(uniform_recipe, uniform, 'inherited', uniform_recipe.run_dir / 'ft', slimmed),
    }
    return {'fraction': fraction, 'seed': seed, 'budget_macs': budget, 'search_s': round(search_s, 1),
            'aps_widths': list(config.widths), 'aps_macs': count_macs(config),
            'uniform_widths': list(uniform.widths), 'uniform_macs': count_macs(uniform), 'curves': curves}


def train_parent(root: Path, epochs: int) -> Dict:
    """The full-width ResNet-8 parent on digits; its weights file and test top-1."""
    recipe = recipe_from_dict({'name': 'parent', 'seed': 0, 'output_dir': str(root), 'data': DATA,
                               'train': {'epochs': epochs, 'lr': 0.1, 'sched': 'cosine', 'select_best': False}})
    config = ChannelConfig('resnet_cifar', uniform_widths('resnet_cifar', DEPTH), DEPTH, 10, (3, 8, 8))
    t0 = time.time()
    result = train(recipe, config, cpu=True)
    return {'weights': str(result.weights), 'top1': result.top1, 'epochs': epochs, 'macs': count_macs(config),
            'train_s': round(time.time() - t0, 1)}


def _stats(values: List[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def report(parent: Dict, rows: List[Dict], command: str, seconds: float) -> str:
    """docs/inherit.md: setup, per-epoch test top-1 (mean ± std over seeds) per budget and method."""
    epochs = len(rows[0]['curves']['aps_inherited']) - 1
    seeds = sorted({r['seed'] for r in rows})
    lines = ["# Slimming a trained parent: inherited APS children vs scratch vs uniform slimming", "",
             f"Command: `{command}` ({seconds / 60:.1f} min on a shared 2-core CPU; timings are indicative).", "",
             f"Parent: full-width CIFAR ResNet-8 (16/32/64, {parent['macs'] / 1e6:.2f}M MACs at 8x8) trained "
             f"{parent['epochs']} epochs on scikit-learn digits: test top-1 {parent['top1']:.1f}%.",
             f"Children at 50% and 25% of its MACs; seeds {seeds}; every fine-tune is the same recipe "
             f"({epochs} epochs of {FINETUNE_STEPS} steps, SGD lr 0.05 cosine, batch 64); the test split "
             "(360 images) is only reported, never selected on. Epoch 0 is the child before any fine-tune step "
             "(inherited children: BN "
             f"statistics re-estimated on {BN_BATCHES} training batches).", "",
             f"- **aps_inherited**: APS search started from the parent (`space.init_from`, meta widths = parent "
             f"widths, overlap 1, `init_importance: bn_scale`; {SEARCH_EPOCHS} warm-up + {SEARCH_EPOCHS} search "
             f"epochs of {SEARCH_STEPS} steps), then `train --init inherited`.",
             "- **aps_scratch**: the same searched config from random weights, same steps.",
             "- **uniform_inherited**: the parent's leading channels at the uniform width multiplier that fits "
             "the budget (same importance order), same fine-tune.", ""]
    for fraction in sorted({r['fraction'] for r in rows}, reverse=True):
        sel = [r for r in rows if r['fraction'] == fraction]
        lines += [f"## {int(fraction * 100)}% of the parent's MACs (budget {sel[0]['budget_macs'] / 1e6:.2f}M)", "",
                  "| method | MACs (mean) | " + ' | '.join(f'ep {e}' for e in range(epochs + 1)) + ' |',
                  '|---|---|' + '---|' * (epochs + 1)]
        for method in METHODS:
            macs = statistics.mean(r['uniform_macs' if method.startswith('uniform') else 'aps_macs'] for r in sel)
            cells = [_stats([r['curves'][method][e] for r in sel]) for e in range(epochs + 1)]
            lines.append(f"| {method} | {macs / 1e6:.2f}M | " + ' | '.join(cells) + ' |')
        lines += ['', 'Searched widths: ' + '; '.join(f"seed {r['seed']}: {','.join(map(str, r['aps_widths']))}"
                                                      for r in sel),
                  f"Uniform widths: {','.join(map(str, sel[0]['uniform_widths']))}", '']
    lines += ["![test top-1 per fine-tune epoch](inherit.png)", "",
              f"Lines: mean over the {len(seeds)} seeds; bands: their min-max.", "", "## Reading", ""]
    lines += [_reading(fraction, [r for r in rows if r['fraction'] == fraction])
              for fraction in sorted({r['fraction'] for r in rows}, reverse=True)]
    return '\n'.join(lines + ['', USAGE])


def _reading(fraction: float, sel: List[Dict]) -> str:
    """One sentence per budget, computed from the numbers: inherited vs uniform at epoch 0 and at the end,
    and how far scratch trails."""
    def mean(method, epoch):
        return statistics.mean(r['curves'][method][epoch] for r in sel)
    macs = statistics.mean(r['aps_macs'] for r in sel) / statistics.mean(r['uniform_macs'] for r in sel)
    return (f"- {int(fraction * 100)}%: before fine-tuning the APS-inherited child is "
            f"{mean('aps_inherited', 0) - mean('uniform_inherited', 0):+.1f} points against the uniformly slimmed "
            f"parent, after the last epoch {mean('aps_inherited', -1) - mean('uniform_inherited', -1):+.1f} "
            f"(the searched configs use {100 * macs:.0f}% of the uniform network's MACs); from scratch the same "
            f"config ends {mean('aps_inherited', -1) - mean('aps_scratch', -1):.1f} points below its inherited "
            f"fine-tune.")


def plot(rows: List[Dict], path: Path) -> None:
    """Test top-1 against fine-tune epoch, one panel per budget, mean over seeds with min-max bands."""
    fractions = sorted({r['fraction'] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(fractions), figsize=(5.2 * len(fractions), 3.8), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        sel = [r for r in rows if r['fraction'] == fraction]
        for method, label in METHODS.items():
            curves = torch.tensor([r['curves'][method] for r in sel])
            x = range(curves.shape[1])
            ax.plot(x, curves.mean(0), marker='o', ms=3, label=label)
            ax.fill_between(x, curves.min(0).values, curves.max(0).values, alpha=0.2)
        ax.set_title(f"{int(fraction * 100)}% of the parent's MACs")
        ax.set_xlabel('fine-tune epoch (0 = before fine-tuning)')
        ax.set_xticks(list(range(curves.shape[1])))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('test top-1 (%)')
    axes[0][-1].legend(loc='lower right', fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches='tight')
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='docs/inherit', help='writes <out>.md, <out>.png and <out>.json')
    parser.add_argument('--runs', default='runs/inherit_bench')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--fractions', type=float, nargs='+', default=[0.5, 0.25])
    parser.add_argument('--parent-epochs', type=int, default=10)
    parser.add_argument('--epochs', type=int, default=6, help='fine-tune epochs')
    parser.add_argument('--from-json', action='store_true', help='rewrite <out>.md and <out>.png from <out>.json')
    args = parser.parse_args(argv)
    root, out = Path(args.runs), Path(args.out)
    if args.from_json:
        saved = json.loads(out.with_suffix('.json').read_text())
        plot(saved['rows'], out.with_suffix('.png'))
        out.with_suffix('.md').write_text(report(saved['parent'], saved['rows'], saved['command'], saved['seconds']))
        return 0
    if root.exists() and any(root.iterdir()):
        print(f"benchmarks/inherit.py: error: {root} is not empty; pass a new --runs folder", file=sys.stderr)
        return 2
    t0 = time.time()
    parent = train_parent(root, args.parent_epochs)
    rows = [run_setting(root, Path(parent['weights']), f, s, args.epochs) for f in args.fractions for s in args.seeds]
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ('python benchmarks/inherit.py ' + ' '.join(argv if argv is not None else sys.argv[1:])).strip()
    seconds = time.time() - t0
    out.with_suffix('.json').write_text(json.dumps({'parent': parent, 'rows': rows, 'command': command,
                                                    'seconds': round(seconds)}, indent=1) + '\n')
    plot(rows, out.with_suffix('.png'))
    out.with_suffix('.md').write_text(report(parent, rows, command, seconds))
    print(f"wrote {out.with_suffix('.md')} ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
