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
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from .. import __version__
from .._io import atomic_write_text
from .._memory import check_supernet_memory
from ..aps import (add_orthogonality_grad_, attach_projections, orthogonality_loss, renormalize_projections,
                   sharing_levels)
from ..aps.sharing import PROJECTION_MOMENTUM, REFERENCE_PROJECTION_LR, transition_projection_lr
from ..channels import ChannelConfig
from ..data import build_loaders
from ..prefetch import device_loaders, steps_per_epoch
from ..flops import count_macs, count_params, uniform_like
from ..plots import plot_curves, plot_sharing, plot_widths
from ..recipe import Recipe
from ..runs import RUN_CONFIG, RUN_RECIPE, Run, check_finite, make_accelerator
from ..inherited import inherited_model, write_inherited
from ..spaces import space_from_recipe
from ..spaces.inherit import supernet_for
from ..spaces.supernet import keep_projections_out_of_ddp
from . import evaluation
from .controller import Controller, Reinforce, budget_reward

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
    decoded: List[Dict] = field(default_factory=list)  # the decoded candidates (choices, repaired, MACs, val_acc), best first


class _Searcher:
    """State of one search run (the loop itself is :func:`search`; its lifecycle is a :class:`~aps_zoo.runs.Run`)."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator, out_dir: Path):
        self.recipe, self.acc, self.out_dir = recipe, accelerator, out_dir
        s = recipe.search
        self.data = build_loaders(recipe.data, seed=recipe.seed, holdout=True)
        space = space_from_recipe(recipe, self.data.num_classes, self.data.input_size)
        space.check_budget(s.budget_macs)
        check_supernet_memory(space, recipe.data.batch_size, accelerator.device)
        self.space, self.supernet, self.parent = supernet_for(space, recipe.space.init_from,
                                                              recipe.space.init_importance)
        self.optimizer = torch.optim.SGD(
            [{'params': self.supernet.meta_parameters(), 'lr': s.lr, 'weight_decay': s.weight_decay},
             {'params': self.supernet.projection_parameters(), 'lr': 0.0, 'weight_decay': 0.0,
              'momentum': PROJECTION_MOMENTUM, 'nesterov': False}],
            lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)
        self.controller = Controller(self.space, s.budget_macs, s.controller.hidden_size,
                                     s.min_budget_fraction).to(accelerator.device)
        self.reinforce = Reinforce(self.controller, s.controller.lr, s.controller.entropy_weight,
                                   s.controller.baseline_decay, s.controller.grad_clip)
        self.arch_rng = torch.Generator().manual_seed(recipe.seed)
        val, test = self.data.val, self.data.test
        if s.evaluation == 'shuffle':
            val, test = evaluation.shuffled(val, recipe.seed), evaluation.shuffled(test, recipe.seed)
        keep_projections_out_of_ddp(self.supernet, s.projection_grad, s.learn_projections)  # (issue 23)
        self.model, self.optimizer = accelerator.prepare(self.supernet, self.optimizer)
        self.train_loader, self.val_loader, self.test_loader = device_loaders(accelerator, self.data, recipe.seed,
                                                                              val=val, test=test)
        self.calibration = evaluation.calibration_batches(self.data.train, s.calibration_batches, recipe.seed) \
            if s.evaluation == 'recalibrate' else None
        self.projection_lr = self._projection_lr()
        self.step = 0

    # -- architecture sampling (main process samples, every rank gets the same) -----------------
    def _shared(self, choices: Optional[List[int]]) -> List[int]:
        box = [choices]
        if self.acc.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        return box[0]

    def uniform_arch(self) -> List[int]:
        """A uniformly random feasible architecture, the same on every rank (warm-up)."""
        return self._shared(self.controller.uniform(self.arch_rng) if self.acc.is_main_process else None)

    def controller_arch(self):
        """The controller's sample, the same on every rank: (choices, log-prob, entropy)."""
        sample = self.controller.sample(self.arch_rng) if self.acc.is_main_process else (None, None, None)
        return self._shared(sample[0]), sample[1], sample[2]

    # -- supernet ------------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        """Supernet steps of one epoch: the loader's length, or ``search.steps_per_epoch`` if smaller."""
        return steps_per_epoch(self.train_loader, self.recipe.search.steps_per_epoch, 'search.steps_per_epoch')

    def _projection_lr(self) -> float:
        """``search.projection_lr`` when set; under ``projection_grad: task_and_penalty`` the reference's
        lr (the transition law is for penalty-only updates: the derived lr, applied to the task gradient
        too, wrecks the supernet); else the lr that completes the sharing transition after
        ``search.sharing_transition`` of the post-warm-up projection updates (0 without a penalty:
        nothing moves the projections then)."""
        s = self.recipe.search
        if s.projection_lr is not None:
            return s.projection_lr
        if s.projection_grad == 'task_and_penalty':
            return REFERENCE_PROJECTION_LR
        if s.orthogonal_weight == 0:
            return 0.0
        updates = (s.epochs - s.warmup_epochs) * self._steps_per_epoch() // s.orthogonal_every
        return transition_projection_lr(s.sharing_transition, updates, s.orthogonal_weight)

    def set_schedule(self, epoch: int, warm: bool) -> float:
        """Set this epoch's meta-weight lr (cosine), projection lr and projection gradients; returns the lr."""
        s = self.recipe.search
        lr = 0.5 * s.lr * (1 + math.cos(math.pi * epoch / s.epochs))
        learn = s.learn_projections and not warm
        self.optimizer.param_groups[0]['lr'] = lr
        self.optimizer.param_groups[1]['lr'] = self.projection_lr if learn else 0.0
        attach_projections(self.supernet, learn and s.projection_grad == 'task_and_penalty')
        return lr

    def train_epoch(self, epoch: int, warm: bool) -> Dict[str, float]:
        """One epoch of supernet training on sampled architectures; returns its log fields."""
        s = self.recipe.search
        self.model.train()
        self.train_loader.set_epoch(epoch)
        total = self._steps_per_epoch()
        losses, correct, seen = [], 0.0, 0
        bar = tqdm(self.train_loader, desc=f'epoch {epoch} {"warm-up" if warm else "search"}', leave=False,
                   disable=not self.acc.is_local_main_process, total=total)
        learn = s.learn_projections and not warm
        digest, start = 0, time.perf_counter()
        for i, (x, y) in enumerate(bar):
            if i >= total:
                break
            choices = self.uniform_arch() if warm else self.controller_arch()[0]
            digest = zlib.crc32(json.dumps(choices).encode(), digest)
            self.step += 1
            # the grouped penalty (and so the projections' update under projection_grad: penalty) every k-th step
            penalised = learn and s.orthogonal_weight > 0 and self.step % s.orthogonal_every == 0
            logits = self.model(x, self.space.widths(choices))
            loss = F.cross_entropy(logits, y)
            if not check_finite(loss, self.step, s.on_nonfinite_loss):
                self.optimizer.zero_grad()
                continue
            self.acc.backward(loss)
            if penalised:  # added to the task's (synchronised, fp16-unscaled) gradient: the same on every rank
                self.acc.unscale_gradients()
                add_orthogonality_grad_(self.supernet, s.orthogonal_weight)
            self.optimizer.step()
            if learn and s.renormalize_projections:
                renormalize_projections(self.supernet, only_updated=True)
            self.optimizer.zero_grad()
            losses.append(loss.item())  # the task loss: the penalty is logged per epoch ('orthogonality')
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
        """Accuracy of one subnet over a loader, summed across ranks; under ``search.evaluation:
        recalibrate`` its BN statistics are first recomputed on the calibration batches."""
        widths = self.space.widths(choices)
        if self.calibration is not None:
            evaluation.recalibrate(self.supernet, widths, self.calibration)
        self.model.eval()
        correct = torch.zeros(2, device=self.acc.device)
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            pred = self.model(x, widths).argmax(-1)
            correct += torch.stack([(pred == y).sum(), torch.tensor(y.numel(), device=y.device)]).float()
        correct = self.acc.reduce(correct, 'sum')
        return (correct[0] / correct[1].clamp_min(1)).item()

    def controller_epoch(self) -> Dict[str, float]:
        """REINFORCE steps rewarded by held-out accuracy under the budget; returns their log fields."""
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
            batch_acc = self.accuracy(choices, [batch])  # (self.acc is the Accelerator)
            reward = budget_reward(batch_acc, self.space.macs(choices), s.budget_macs, s.under_budget_exponent,
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
        """Search state beyond what Accelerate saves: epoch, step, controller and sampling RNG."""
        return {'epoch': epoch, 'step': self.step, 'reinforce': self.reinforce.state_dict(),
                'arch_rng': self.arch_rng.get_state(), 'recipe': self.recipe.to_dict()}

    def restore(self, run: Run) -> int:
        """Continue from the newest good checkpoint of ``run``; returns the first epoch still to train."""
        epoch, extra = run.resume()
        if extra.get('recipe', {}).get('space') != self.recipe.to_dict()['space']:
            raise ValueError(f"checkpoint in {self.out_dir} was written for another search space; "
                             f"start a new run or use the recipe it was made with")
        self.reinforce.load_state_dict(extra['reinforce'])
        self.arch_rng.set_state(extra['arch_rng'])
        self.step = extra['step']
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
        fitted = space.fit_to_budget(choices, limit)  # a fallback: the masked policy decodes within budget
        if fitted != list(choices):
            logger.warning("decoded architecture at %.4g MACs is over the limit %.4g: repaired to %.4g",
                           space.macs(choices), limit, space.macs(fitted))
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
             f"- uniform network at the same MACs: multiplier {uniform.provenance['multiplier']}, "
             f"{count_macs(uniform):,} MACs",
             f"- band of the controller: [{searcher.controller.lower:.4g}, {searcher.recipe.search.budget_macs:.4g}] "
             f"MACs; repaired: {sum(r['repaired'] for r in rows)} of {len(rows)} decoded candidates",
             f"- held-out accuracy (supernet weights, evaluation {searcher.recipe.search.evaluation}): "
             f"{rows[0]['val_acc']:.4f}; test accuracy: {test_acc:.4f}",
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


def _plots(searcher: _Searcher, records: List[Dict], config: ChannelConfig) -> None:
    name = searcher.recipe.name
    plot_curves(records, 'epoch', {'accuracy': ['val_acc', 'train_acc'], 'reward': ['reward', 'baseline'],
                                   'sharing level': ['sharing_mean']},
                searcher.out_dir / 'search_curves.png', title=f'APS search {name}: accuracy, reward and sharing')
    if any(r.get('sharing') for r in records):
        plot_sharing(records, searcher.out_dir / 'sharing_layers.png', title=f'APS search {name}: sharing per layer')
    plot_widths(config, searcher.out_dir / 'widths.png',
                title=f'{config.name} searched on {name}: output channels per width entry')


def search(recipe: Recipe, *, resume: bool = False, accelerator: Optional[Accelerator] = None,
           cpu: Optional[bool] = None) -> SearchResult:
    """Run the APS search of ``recipe``; writes ``<run_dir>/search/`` and returns the searched config."""
    accelerator = accelerator or make_accelerator(cpu=cpu if cpu is not None else not torch.cuda.is_available(),
                                                  gpu_mixed_precision='bf16',
                                                  seedable_sampler=True, find_unused_parameters=True)
    out_dir = recipe.run_dir / 'search'
    run = Run(recipe, out_dir, accelerator, resume=resume)  # device check and seeding
    searcher = _Searcher(recipe, accelerator, out_dir)  # validates data, space and budget before writing
    with run:  # owns the folder from here on
        return _search(searcher, run)


def _search(searcher: _Searcher, run: Run) -> SearchResult:
    """The epochs, decoding and outputs of :func:`search`, inside its run."""
    recipe, accelerator, out_dir = searcher.recipe, searcher.acc, searcher.out_dir
    searcher.log = run.log
    start = searcher.restore(run) if run.resuming else 0
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
            record['orthogonality'] = orthogonality_loss(searcher.supernet).item()  # the grouped penalty
        record['projection_lr'] = searcher.optimizer.param_groups[1]['lr']
        record.update(val_acc=searcher.accuracy(greedy, searcher.val_loader), greedy_macs=searcher.space.macs(greedy),
                      greedy_widths=searcher.space.widths(greedy),
                      sharing_mean=sum(levels.values()) / max(1, len(levels)), sharing=levels)
        searcher.log.write(**record)
        epochs.set_postfix(val_acc=f"{record['val_acc']:.3f}", reward=f"{record.get('reward', float('nan')):.3f}")
        run.save(epoch, searcher.extra_state(epoch))

    rows = _decode(searcher)
    best = rows[0]
    test_acc = searcher.accuracy(best['choices'], searcher.test_loader)
    provenance = {'source': 'search', 'method': 'APS (NeurIPS 2020)', 'dataset': searcher.data.dataset_name,
                  'recipe': recipe.name, 'budget_macs': s.budget_macs, 'overlap': recipe.space.overlap,
                  'learn_projections': s.learn_projections, 'seed': recipe.seed,
                  'supernet_val_acc': round(best['val_acc'], 4), 'supernet_test_acc': round(test_acc, 4),
                  'aps_zoo_version': __version__, **(searcher.parent.provenance() if searcher.parent else {})}
    config = searcher.space.config(best['choices'], provenance)
    config_path = out_dir / RUN_CONFIG
    report_path = out_dir / 'search_report.md'
    if accelerator.is_main_process:
        config.save(config_path)
        if searcher.parent is not None:  # the child's inherited weights, BN statistics re-estimated
            write_inherited(inherited_model(searcher.supernet, config, islice(searcher.data.train, BN_BATCHES)),
                            out_dir)
        records = searcher.log.read()
        uniform = uniform_like(config)  # the same reference as widths.png
        atomic_write_text(report_path, _report(searcher, records, rows, config, uniform, test_acc, time.time() - t0))
        atomic_write_text(out_dir / RUN_RECIPE, recipe.to_yaml())
        _plots(searcher, records, config)
    accelerator.wait_for_everyone()
    return SearchResult(config, config_path, report_path, out_dir, best['val_acc'], test_acc, rows)
