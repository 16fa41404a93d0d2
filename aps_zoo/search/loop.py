"""The APS search loop through Accelerate.

Warm-up epochs sample widths uniformly and train only the meta weights; then each epoch trains the
supernet on controller-sampled architectures and ends with REINFORCE steps whose reward is the
accuracy of a sampled subnet on a batch of the held-out split, under the soft MACs budget. Decoding
evaluates the controller's top architectures on the held-out split; the test split is only used
for the final report. The only distributed code is ``accelerator.prepare``/``backward``, plus
broadcasting each sampled architecture from the main process so every rank trains the same one.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from .. import __version__
from .._io import atomic_write_text
from .._memory import check_supernet_memory
from ..aps import orthogonality_loss, renormalize_projections, set_projections_trainable, sharing_levels
from ..channels import ChannelConfig
from ..data import build_loaders
from ..flops import count_macs, count_params, uniform_at_budget
from ..plots import plot_curves, plot_widths
from ..recipe import Recipe, check_devices
from ..runs import MetricsLog, check_finite, check_fresh_run, load_latest_checkpoint, save_checkpoint
from ..spaces import APSSupernet, SearchSpace, space_from_recipe
from .controller import Controller, Reinforce, budget_reward


@dataclass
class SearchResult:
    """What a search wrote: the searched config, its report and where the run lives."""
    config: ChannelConfig
    config_path: Path
    report_path: Path
    out_dir: Path
    val_accuracy: float
    test_accuracy: float


def make_accelerator(cpu: Optional[bool] = None, mixed_precision: Optional[str] = None) -> Accelerator:
    """An Accelerator for supernet training: unused-parameter detection on (only one candidate per
    layer is used per step) and a seedable sampler so data order depends on (seed, epoch) only."""
    return Accelerator(cpu=bool(cpu), mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


class _Searcher:
    """State of one search run (kept small: the loop itself is in :meth:`run`)."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator, out_dir: Path):
        self.recipe, self.acc, self.out_dir = recipe, accelerator, out_dir
        s = recipe.search
        self.data = build_loaders(recipe.data, seed=recipe.seed, holdout=True)
        self.space = space_from_recipe(recipe, self.data.num_classes, self.data.input_size)
        self.space.check_budget(s.budget_macs)
        check_supernet_memory(self.space, recipe.data.batch_size, accelerator.device)
        self.supernet = APSSupernet(self.space)
        self.optimizer = torch.optim.SGD(
            [{'params': self.supernet.meta_parameters(), 'lr': s.lr, 'weight_decay': s.weight_decay},
             {'params': self.supernet.projection_parameters(), 'lr': 0.0, 'weight_decay': 0.0}],
            lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)
        self.controller = Controller(self.space, s.budget_macs, s.controller.hidden_size).to(accelerator.device)
        self.reinforce = Reinforce(self.controller, s.controller.lr, s.controller.entropy_weight,
                                   s.controller.baseline_decay, s.controller.grad_clip)
        self.arch_rng = torch.Generator().manual_seed(recipe.seed)
        self.model, self.optimizer, self.train_loader, self.val_loader = accelerator.prepare(
            self.supernet, self.optimizer, self.data.train, self.data.val)
        self.test_loader = accelerator.prepare(self.data.test)
        self.log = MetricsLog(out_dir / 'metrics.jsonl', enabled=accelerator.is_main_process)
        self.step = 0

    # -- architecture sampling (main process samples, every rank gets the same) -----------------
    def _shared(self, choices: Optional[List[int]]) -> List[int]:
        box = [choices]
        if self.acc.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        return box[0]

    def uniform_arch(self) -> List[int]:
        choices = None
        if self.acc.is_main_process:
            choices = [int(torch.randint(self.space.num_options(d), (1,), generator=self.arch_rng))
                       for d in range(self.space.num_decisions)]
        return self._shared(choices)

    def controller_arch(self):
        sample = self.controller.sample(self.arch_rng) if self.acc.is_main_process else (None, None, None)
        return self._shared(sample[0]), sample[1], sample[2]

    # -- supernet ------------------------------------------------------------------------------
    def set_schedule(self, epoch: int, warm: bool) -> float:
        s = self.recipe.search
        lr = 0.5 * s.lr * (1 + math.cos(math.pi * epoch / s.epochs))
        learn = s.learn_projections and not warm
        self.optimizer.param_groups[0]['lr'] = lr
        self.optimizer.param_groups[1]['lr'] = s.projection_lr if learn else 0.0
        set_projections_trainable(self.supernet, learn)
        return lr

    def train_epoch(self, epoch: int, warm: bool) -> Dict[str, float]:
        s = self.recipe.search
        self.model.train()
        self.train_loader.set_epoch(epoch)
        total = math.inf if s.steps_per_epoch is None else s.steps_per_epoch
        losses, correct, seen = [], 0.0, 0
        bar = tqdm(self.train_loader, desc=f'epoch {epoch} {"warm-up" if warm else "search"}', leave=False,
                   disable=not self.acc.is_local_main_process, total=min(len(self.train_loader), total))
        learn = s.learn_projections and not warm
        digest, start = 0, time.perf_counter()
        for i, (x, y) in enumerate(bar):
            if i >= total:
                break
            choices = self.uniform_arch() if warm else self.controller_arch()[0]
            digest = zlib.crc32(json.dumps(choices).encode(), digest)
            self.step += 1
            # lazy regularisation (as StyleGAN2's): the penalty every k-th step, weighted k times
            penalised = learn and self.step % s.orthogonal_every == 0
            widths = self.space.widths(choices)
            if penalised:
                logits, penalty = self.model(x, widths, return_penalty=True)
                loss = F.cross_entropy(logits, y) + s.orthogonal_every * s.orthogonal_weight * penalty
            else:
                logits = self.model(x, widths)
                loss = F.cross_entropy(logits, y)
            if not check_finite(loss, self.step, s.on_nonfinite_loss):
                self.optimizer.zero_grad()
                continue
            self.acc.backward(loss)
            self.optimizer.step()
            if learn and s.renormalize_projections:
                renormalize_projections(self.supernet, only_updated=True)
            self.optimizer.zero_grad()
            losses.append(loss.item())
            correct += (logits.argmax(-1) == y).sum().item()
            seen += y.numel()
            bar.set_postfix(loss=f'{losses[-1]:.3f}')
        # every rank's digest of the architectures it trained: they must all be equal
        digests = self.acc.gather(torch.tensor([digest], device=self.acc.device)).tolist()
        return {'train_loss': sum(losses) / max(1, len(losses)), 'train_acc': correct / max(1, seen),
                'arch_digests': digests,
                'images_per_s': seen * self.acc.num_processes / max(1e-9, time.perf_counter() - start)}

    @torch.no_grad()
    def accuracy(self, choices: Sequence[int], loader, max_batches: Optional[int] = None) -> float:
        """Accuracy of one subnet over a loader, summed across ranks."""
        self.model.eval()
        widths = self.space.widths(choices)
        correct = torch.zeros(2, device=self.acc.device)
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            pred = self.model(x, widths).argmax(-1)
            correct += torch.stack([(pred == y).sum(), torch.tensor(y.numel(), device=y.device)]).float()
        correct = self.acc.reduce(correct, 'sum')
        return (correct[0] / correct[1].clamp_min(1)).item()

    def controller_epoch(self) -> Dict[str, float]:
        s = self.recipe.search
        stats, update_s = [], 0.0
        val_iter = iter(self.val_loader)
        for _ in range(s.controller.steps_per_epoch):
            choices, log_prob, entropy = self.controller_arch()
            try:
                batch = next(val_iter)
            except StopIteration:
                val_iter = iter(self.val_loader)
                batch = next(val_iter)
            acc = self.accuracy(choices, [batch])
            reward = budget_reward(acc, self.space.macs(choices), s.budget_macs, s.under_budget_exponent,
                                   s.over_budget_exponent)
            if self.acc.is_main_process:
                t = time.perf_counter()
                stats.append(self.reinforce.step(log_prob, entropy, reward))
                update_s += time.perf_counter() - t
        if not stats:
            return {}
        return {'reward': sum(x.reward for x in stats) / len(stats), 'baseline': stats[-1].baseline,
                'entropy': sum(x.entropy for x in stats) / len(stats),
                'controller_update_ms': 1e3 * update_s / len(stats)}

    # -- checkpoints ---------------------------------------------------------------------------
    def extra_state(self, epoch: int) -> Dict:
        return {'epoch': epoch, 'step': self.step, 'reinforce': self.reinforce.state_dict(),
                'arch_rng': self.arch_rng.get_state(), 'recipe': self.recipe.to_dict()}

    def restore(self) -> int:
        epoch, extra = load_latest_checkpoint(self.acc, self.out_dir)
        if extra.get('recipe', {}).get('space') != self.recipe.to_dict()['space']:
            raise ValueError(f"checkpoint in {self.out_dir} was written for another search space; "
                             f"start a new run or use the recipe it was made with")
        self.reinforce.load_state_dict(extra['reinforce'])
        self.arch_rng.set_state(extra['arch_rng'])
        self.step = extra['step']
        self.log.truncate_after(epoch)
        return epoch + 1


def _decode(searcher: _Searcher) -> List[Dict]:
    """Top architectures of the controller, evaluated on the held-out split, best first."""
    s, space = searcher.recipe.search, searcher.space
    if s.decode == 'beam':
        archs = [c for c, _ in searcher.controller.beam_search(s.decode_top_k)] if searcher.acc.is_main_process \
            else None
    else:
        archs = [searcher.controller.sample(searcher.arch_rng)[0] for _ in range(s.decode_top_k)] \
            if searcher.acc.is_main_process else None
    archs = searcher._shared(archs)
    limit = s.max_over_budget * s.budget_macs
    rows = []
    for choices in archs:
        fitted = space.fit_to_budget(choices, limit)
        rows.append({'choices': fitted, 'repaired': fitted != list(choices), 'macs': space.macs(fitted),
                     'val_acc': searcher.accuracy(fitted, searcher.val_loader)})
    rows.sort(key=lambda r: (-r['val_acc'], r['macs']))
    return rows


def _mean(records: List[Dict], key: str) -> float:
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) / len(values) if values else float('nan')


def _report(searcher: _Searcher, records: List[Dict], rows: List[Dict], config: ChannelConfig,
            uniform: ChannelConfig, test_acc: float, seconds: float) -> str:
    lines = [f"# APS search: {searcher.recipe.name}", "",
             f"- data: {searcher.data.dataset_name}",
             f"- space: {config.name}, {searcher.space.num_decisions} decisions, overlap {searcher.space.overlap}",
             f"- budget: {searcher.recipe.search.budget_macs:.4g} MACs; searched config: {count_macs(config):,} MACs, "
             f"{count_params(config):,} params",
             f"- uniform network at the budget: multiplier {uniform.provenance['multiplier']}, "
             f"{count_macs(uniform):,} MACs",
             f"- held-out accuracy (supernet weights): {rows[0]['val_acc']:.4f}; test accuracy: {test_acc:.4f}",
             f"- processes: {searcher.acc.num_processes} x {searcher.acc.device.type}, mixed precision "
             f"{searcher.acc.mixed_precision}",
             f"- search wall time: {seconds:.1f} s; supernet training throughput "
             f"{_mean(records, 'images_per_s'):.0f} images/s; controller update {_mean(records, 'controller_update_ms'):.1f} ms",
             "",
             "| rank | MACs | val acc | repaired | widths |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i + 1} | {r['macs']:,} | {r['val_acc']:.4f} | {r['repaired']} | "
                     f"{','.join(map(str, searcher.space.widths(r['choices'])))} |")
    return '\n'.join(lines) + '\n'


def _plots(searcher: _Searcher, records: List[Dict], config: ChannelConfig, uniform: ChannelConfig) -> None:
    plot_curves(records, 'epoch', {'held-out accuracy': ['val_acc', 'train_acc'], 'reward': ['reward', 'baseline'],
                                   'sharing level': ['sharing_mean']},
                searcher.out_dir / 'search_curves.png', title=f'APS search: {searcher.recipe.name}')
    layers = sorted({k for r in records for k in r.get('sharing', {})})
    if layers:
        per_layer = [{'epoch': r['epoch'], **r.get('sharing', {})} for r in records]
        plot_curves(per_layer, 'epoch', {'sharing level per layer': layers}, searcher.out_dir / 'sharing_layers.png')
    plot_widths(config.widths, searcher.out_dir / 'widths.png', reference=uniform.widths,
                reference_label=f'uniform x{uniform.provenance["multiplier"]} (same budget)',
                title=f'{config.name}: searched widths, {count_macs(config) / 1e6:.2f}M MACs')


def search(recipe: Recipe, *, resume: bool = False, accelerator: Optional[Accelerator] = None,
           cpu: Optional[bool] = None) -> SearchResult:
    """Run the APS search of ``recipe``; writes ``<run_dir>/search/`` and returns the searched config."""
    accelerator = accelerator or make_accelerator(cpu=cpu if cpu is not None else not torch.cuda.is_available())
    set_seed(recipe.seed)
    check_devices(recipe, accelerator.num_processes, accelerator.device.type == 'cuda')
    out_dir = recipe.run_dir / 'search'
    check_fresh_run(out_dir, resume)
    searcher = _Searcher(recipe, accelerator, out_dir)  # validates data, space and budget before writing
    start = searcher.restore() if resume else 0
    if not resume and accelerator.is_main_process and searcher.log.path.exists():
        searcher.log.path.unlink()  # a log without checkpoints: an earlier run that never finished an epoch
    s = recipe.search
    t0 = time.time()
    epochs = tqdm(range(start, s.epochs), desc='APS search', disable=not accelerator.is_main_process,
                  initial=start, total=s.epochs)
    for epoch in epochs:
        warm = epoch < s.warmup_epochs
        lr = searcher.set_schedule(epoch, warm)
        record = {'epoch': epoch, 'phase': 'warmup' if warm else 'search', 'lr': lr,
                  **searcher.train_epoch(epoch, warm)}
        if not warm:
            record.update(searcher.controller_epoch())
        greedy = searcher.controller.sample(greedy=True)[0]
        levels = sharing_levels(searcher.supernet)
        with torch.no_grad():
            record['orthogonality'] = orthogonality_loss(searcher.supernet).item()  # over every projection
        record.update(val_acc=searcher.accuracy(greedy, searcher.val_loader), greedy_macs=searcher.space.macs(greedy),
                      greedy_widths=searcher.space.widths(greedy),
                      sharing_mean=sum(levels.values()) / max(1, len(levels)), sharing=levels)
        searcher.log.write(**record)
        epochs.set_postfix(val_acc=f"{record['val_acc']:.3f}", reward=f"{record.get('reward', float('nan')):.3f}")
        save_checkpoint(accelerator, out_dir, epoch, searcher.extra_state(epoch))

    rows = _decode(searcher)
    best = rows[0]
    test_acc = searcher.accuracy(best['choices'], searcher.test_loader)
    provenance = {'source': 'search', 'method': 'APS (NeurIPS 2020)', 'dataset': searcher.data.dataset_name,
                  'recipe': recipe.name, 'budget_macs': s.budget_macs, 'overlap': s.overlap,
                  'learn_projections': s.learn_projections, 'seed': recipe.seed,
                  'supernet_val_acc': round(best['val_acc'], 4), 'supernet_test_acc': round(test_acc, 4),
                  'aps_zoo_version': __version__}
    config = searcher.space.config(best['choices'], provenance)
    config_path = out_dir / 'channel_config.json'
    report_path = out_dir / 'search_report.md'
    if accelerator.is_main_process:
        config.save(config_path)
        records = searcher.log.read()
        uniform = uniform_at_budget(config.family, config.depth, s.budget_macs, num_classes=config.num_classes,
                                    input_size=config.input_size)
        atomic_write_text(report_path, _report(searcher, records, rows, config, uniform, test_acc, time.time() - t0))
        atomic_write_text(out_dir / 'recipe.yaml', recipe.to_yaml())
        _plots(searcher, records, config, uniform)
    accelerator.wait_for_everyone()
    return SearchResult(config, config_path, report_path, out_dir, best['val_acc'], test_acc)
