"""The APS search loop through Accelerate: the supernet trainer, apart from the search strategy.

Warm-up epochs train the meta weights on architectures drawn uniformly from the band
(:class:`aps_zoo.spaces.band.BandSampler`); then each epoch trains the supernet on the strategy's
architectures (:mod:`aps_zoo.search.strategies`) and ends with the strategy's phase: updates of
``search.controller.samples_per_update`` architectures, each scored on ``reward_images`` held-out
images with recalibrated BN statistics under the soft MACs budget (scores cached per architecture within
the phase: the supernet does not change during it), plus ``band_samples`` band architectures scored the
same way as a reference. Decoding: :mod:`aps_zoo.search.decode`. The test split is only used for the
final report.

The strategy lives on the CPU and runs on the main process; each architecture it proposes is broadcast,
so every rank trains and scores the same one, and every evaluation over a whole split counts each image
once across ranks (``gather_for_metrics``).
"""
from __future__ import annotations

import json
import math
import time
import zlib
from itertools import islice
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .._memory import check_supernet_memory
from ..aps import (add_orthogonality_grad_, attach_projections, mean_sharing_level, orthogonality_loss,
                   renormalize_projections, sharing_levels)
from ..aps.sharing import PROJECTION_MOMENTUM, REFERENCE_PROJECTION_LR, transition_projection_lr
from ..data import build_loaders
from ..families import interpolation
from ..prefetch import device_loaders, steps_per_epoch
from ..recipe import Recipe
from ..progress import progress
from ..runs import Run, check_finite, make_accelerator
from ..spaces import space_from_recipe
from ..spaces.inherit import supernet_for
from ..spaces.supernet import keep_projections_out_of_ddp
from . import evaluation
from .controller import budget_reward
from .decode import SearchResult, decode, finish
from .strategies import create_strategy

# Steps between two checks of search.sharing_floor (one check: an orthonormal basis per projection, about 0.5 s
# for the ResNet-20 grid 8..64 of seven candidates on one CPU thread, a few supernet steps).
SHARING_CHECK_EVERY = 10



class Searcher:
    """The supernet trainer of one search run: train steps, recalibration, scoring a subnet; the strategy
    proposes (the loop itself is :func:`search`; its lifecycle is a :class:`~aps_zoo.runs.Run`)."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator, out_dir: Path):
        self.recipe, self.accelerator, self.out_dir = recipe, accelerator, out_dir
        s = recipe.search
        self.data = build_loaders(recipe.data, seed=recipe.seed, holdout=True,
                                  interpolation=interpolation(recipe.space.family))
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
        self.strategy = create_strategy(s.strategy, self.space, s, recipe.seed)  # on the CPU, sampled there
        val, test = self.data.val, self.data.test
        if s.evaluation == 'shuffle':
            val, test = evaluation.shuffled(val, recipe.seed), evaluation.shuffled(test, recipe.seed)
        keep_projections_out_of_ddp(self.supernet, s.projection_grad, s.learn_projections)  # (issue 23)
        self.model, self.optimizer = accelerator.prepare(self.supernet, self.optimizer)
        self.train_loader, self.val_loader, self.test_loader = device_loaders(accelerator, self.data, recipe.seed,
                                                                              val=val, test=test)
        self.calibration = evaluation.calibration_batches(self.data.train, s.calibration_batches, recipe.seed) \
            if s.evaluation == 'recalibrate' else None
        self.reward_batches = self._reward_batches()
        self.reward_images = sum(kept for _, _, kept in self.reward_batches)
        self.projection_lr = self._projection_lr()
        self.step = 0
        self.floor_step: Optional[int] = None  # the step at which sharing reached search.sharing_floor

    # -- architecture sampling (the main process's strategy proposes, every rank gets the same) -----
    def shared(self, value):
        """``value`` of the main process, on every rank (the strategy runs on the main process only)."""
        box = [value]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        return box[0]

    def propose(self, make):
        """``make()`` called by the main process's strategy, the result on every rank."""
        return self.shared(make() if self.accelerator.is_main_process else None)

    def _steps_per_epoch(self) -> int:
        """Supernet steps of one epoch: the loader's length, or ``search.steps_per_epoch`` if smaller."""
        return steps_per_epoch(self.train_loader, self.recipe.search.steps_per_epoch, 'search.steps_per_epoch')

    def _projection_lr(self) -> float:
        """``search.projection_lr`` when set; under ``projection_grad: task_and_penalty`` the reference's
        lr (the transition law is for penalty-only updates: the derived lr, applied to the task gradient
        too, wrecks the supernet); else the lr that completes the sharing transition after
        ``search.sharing_transition`` of the projection updates from :meth:`projection_start` on (0 without a
        penalty: nothing moves the projections then)."""
        s = self.recipe.search
        if s.projection_lr is not None:
            return s.projection_lr
        if s.projection_grad == 'task_and_penalty':
            return REFERENCE_PROJECTION_LR
        if s.orthogonal_weight == 0:
            return 0.0
        updates = (s.epochs - self.projection_start()) * self._steps_per_epoch() // s.orthogonal_every
        return transition_projection_lr(s.sharing_transition, updates, s.orthogonal_weight)

    def projection_start(self) -> int:
        """The first epoch in which the projections learn: ``search.projection_start_epoch``, else the end of
        warm-up."""
        s = self.recipe.search
        return s.warmup_epochs if s.projection_start_epoch is None else s.projection_start_epoch

    def learns_projections(self, epoch: int) -> bool:
        """Whether the projections learn in ``epoch`` (not once sharing has reached ``search.sharing_floor``)."""
        return self.recipe.search.learn_projections and epoch >= self.projection_start() and self.floor_step is None

    def reached_floor(self) -> bool:
        """Whether the mean sharing level is at or below ``search.sharing_floor`` now (checked every
        ``SHARING_CHECK_EVERY`` steps); if so the projections stop learning from this step on."""
        floor = self.recipe.search.sharing_floor
        if floor is None or self.step % SHARING_CHECK_EVERY:
            return False
        if not self.shared(mean_sharing_level(sharing_levels(self.supernet)) <= floor):
            return False
        self.floor_step = self.step
        self.optimizer.param_groups[1]['lr'] = 0.0
        attach_projections(self.supernet, False)
        return True

    def set_schedule(self, epoch: int) -> float:
        """Set this epoch's meta-weight lr (cosine), projection lr and projection gradients; returns the lr."""
        s = self.recipe.search
        lr = 0.5 * s.lr * (1 + math.cos(math.pi * epoch / s.epochs))
        learn = self.learns_projections(epoch)
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
        bar = progress(self.train_loader, desc=f'epoch {epoch} {"warm-up" if warm else "search"}', leave=False,
                   disable=not self.accelerator.is_local_main_process, total=total)
        learn = self.learns_projections(epoch)
        digest, start = 0, time.perf_counter()
        for i, (x, y) in enumerate(bar):
            if i >= total:
                break
            choices = self.propose(self.strategy.band_arch if warm else self.strategy.train_arch)
            digest = zlib.crc32(json.dumps(choices).encode(), digest)
            self.step += 1
            # the grouped penalty (and so the projections' update under projection_grad: penalty) every k-th step
            penalised = learn and s.orthogonal_weight > 0 and self.step % s.orthogonal_every == 0
            logits = self.model(x, self.space.widths(choices))
            loss = F.cross_entropy(logits, y)
            if not check_finite(loss, self.step, s.on_nonfinite_loss):
                self.optimizer.zero_grad()
                continue
            self.accelerator.backward(loss)
            if penalised:  # added to the task's (synchronised, fp16-unscaled) gradient: the same on every rank
                self.accelerator.unscale_gradients()
                add_orthogonality_grad_(self.supernet, s.orthogonal_weight)
            self.optimizer.step()
            if learn and s.renormalize_projections:
                renormalize_projections(self.supernet, only_updated=True)
            self.optimizer.zero_grad()
            learn = learn and not self.reached_floor()
            losses.append(loss.item())  # the task loss: the penalty is logged per epoch ('orthogonality')
            correct += (logits.argmax(-1) == y).sum().item()
            seen += y.numel()
            bar.set_postfix(loss=f'{losses[-1]:.3f}')
        return {'train_loss': sum(losses) / max(1, len(losses)), 'train_acc': correct / max(1, seen),
                'arch_digests': self.digests(digest),
                'images_per_s': seen * self.accelerator.num_processes / max(1e-9, time.perf_counter() - start)}

    def digests(self, digest: int) -> List[int]:
        """Every rank's digest of the architectures it used (a CRC): they must all be equal."""
        return self.accelerator.gather(torch.tensor([digest], device=self.accelerator.device)).tolist()

    @torch.no_grad()
    def accuracy(self, choices: Sequence[int], loader) -> float:
        """Accuracy of one subnet over a prepared loader, each image counted once across ranks; under
        ``search.evaluation: recalibrate`` its BN statistics are first recomputed on the calibration batches."""
        widths = self._prepare_subnet(choices)
        correct, seen = 0.0, 0
        for x, y in loader:
            hits = self.accelerator.gather_for_metrics((self.model(x, widths).argmax(-1) == y).float())
            correct, seen = correct + hits.sum().item(), seen + hits.numel()
        return correct / max(1, seen)

    def _prepare_subnet(self, choices: Sequence[int]) -> List[int]:
        widths = self.space.widths(choices)
        if self.calibration is not None:
            evaluation.recalibrate(self.supernet, widths, self.calibration)
        self.model.eval()
        return widths

    def _reward_batches(self) -> List:
        """The first held-out batches holding ``search.controller.reward_images`` images over all ranks (or the
        whole split), kept on the device as (images, labels, kept): ``kept`` is how many of the batch's
        images gathered over the ranks ``gather_for_metrics`` keeps (a multi-rank loader pads its last batch
        with duplicates), so :meth:`score` counts each image once."""
        per_step = self.data.val.batch_size * self.accelerator.num_processes
        count = -(-self.recipe.search.controller.reward_images // per_step)
        batches = [(x, y, len(self.accelerator.gather_for_metrics(y))) for x, y in islice(self.val_loader, count)]
        if hasattr(self.val_loader, 'end'):  # stopping early skips the loader's own exit from Accelerate's state
            self.val_loader.end()
        return batches

    @torch.no_grad()
    def score(self, choices: Sequence[int]) -> float:
        """Accuracy of a subnet on the reward images (the same images for every architecture)."""
        widths = self._prepare_subnet(choices)
        correct, seen = 0.0, 0
        for x, y, kept in self.reward_batches:
            hits = self.accelerator.gather((self.model(x, widths).argmax(-1) == y).float())[:kept]
            correct, seen = correct + hits.sum().item(), seen + hits.numel()
        return correct / max(1, seen)

    def reward(self, choices: Sequence[int], cache: Dict) -> float:
        """The soft-budget reward of a subnet (:func:`budget_reward` of :meth:`score`), cached in ``cache``."""
        key = tuple(choices)
        if key not in cache:
            s = self.recipe.search
            cache[key] = budget_reward(self.score(choices), self.space.macs(choices), s.budget_macs,
                                       s.under_budget_exponent, s.over_budget_exponent)
        return cache[key]

    def strategy_epoch(self) -> Dict[str, float]:
        """The strategy's phase: ``controller.steps_per_epoch`` updates (ask, score, tell), then the band
        reference on the same supernet; returns their log fields."""
        s = self.recipe.search
        cache: Dict = {}
        rewards, stats, update_s = [], [], 0.0
        for _ in range(s.controller.steps_per_epoch):
            archs = self.propose(self.strategy.ask)
            scores = [self.reward(a, cache) for a in archs]
            rewards += scores
            if self.accelerator.is_main_process:
                t = time.perf_counter()
                stats.append(self.strategy.tell(archs, scores))
                update_s += time.perf_counter() - t
        band = self.propose(lambda: [self.strategy.band_arch() for _ in range(s.band_samples)])
        record = {'reward': sum(rewards) / len(rewards), 'scored': len(cache),
                  'controller_update_ms': 1e3 * update_s / max(1, len(stats))}
        if band:
            record['band_reward'] = sum(self.reward(a, cache) for a in band) / len(band)
        for key in (stats[-1] if stats else {}):
            record[key] = sum(x[key] for x in stats) / len(stats)
        return record

    # -- checkpoints ---------------------------------------------------------------------------
    def extra_state(self, epoch: int) -> Dict:
        """Search state beyond what Accelerate saves: epoch, step, the strategy's state (its RNG included)."""
        return {'epoch': epoch, 'step': self.step, 'floor_step': self.floor_step,
                'strategy': self.strategy.state_dict(), 'recipe': self.recipe.to_dict()}

    def restore(self, run: Run) -> int:
        """Continue from the newest good checkpoint of ``run``; returns the first epoch still to train."""
        epoch, extra = run.resume()
        saved = extra.get('recipe', {})
        if saved.get('space') != self.recipe.to_dict()['space']:
            raise ValueError(f"checkpoint in {self.out_dir} was written for another search space; "
                             f"start a new run or use the recipe it was made with")
        if 'strategy' not in extra or saved.get('search', {}).get('strategy') != self.recipe.search.strategy:
            raise ValueError(f"checkpoint in {self.out_dir} was written for another search strategy (search.strategy "
                             f"{saved.get('search', {}).get('strategy', 'of an older aps-zoo')!r}); start a new run "
                             f"or use the recipe it was made with")
        self.strategy.load_state_dict(extra['strategy'])
        self.step = extra['step']
        self.floor_step = extra.get('floor_step')
        return epoch + 1


def search(recipe: Recipe, *, resume: bool = False, accelerator: Optional[Accelerator] = None,
           cpu: Optional[bool] = None) -> SearchResult:
    """Run the APS search of ``recipe``; writes ``<run_dir>/search/`` and returns the searched config."""
    accelerator = accelerator or make_accelerator(cpu=cpu if cpu is not None else not torch.cuda.is_available(),
                                                  gpu_mixed_precision='bf16',
                                                  seedable_sampler=True, find_unused_parameters=True)
    out_dir = recipe.run_dir / 'search'
    run = Run(recipe, out_dir, accelerator, resume=resume)  # device check and seeding
    searcher = Searcher(recipe, accelerator, out_dir)  # validates data, space and budget before writing
    with run:  # owns the folder from here on
        return _search(searcher, run)


def _search(searcher: Searcher, run: Run) -> SearchResult:
    """The epochs, decoding and outputs of :func:`search`, inside its run."""
    recipe, accelerator = searcher.recipe, searcher.accelerator
    searcher.log = run.log
    start = searcher.restore(run) if run.resuming else 0
    s = recipe.search
    t0 = time.time()
    epochs = progress(range(start, s.epochs), desc='APS search', disable=not accelerator.is_main_process,
                  initial=start, total=s.epochs)
    for epoch in epochs:
        warm = epoch < s.warmup_epochs
        lr = searcher.set_schedule(epoch)
        record = {'epoch': epoch, 'phase': 'warmup' if warm else 'search', 'lr': lr,
                  **searcher.train_epoch(epoch, warm)}
        if not warm:
            record.update(searcher.strategy_epoch())
        greedy = searcher.propose(searcher.strategy.best)  # the main process's pick, on every rank
        record['greedy_digests'] = searcher.digests(zlib.crc32(json.dumps(greedy).encode()))
        levels = sharing_levels(searcher.supernet)
        with torch.no_grad():
            record['orthogonality'] = orthogonality_loss(searcher.supernet).item()  # the grouped penalty
        record.update(projection_lr=searcher.optimizer.param_groups[1]['lr'], floor_step=searcher.floor_step)
        record.update(val_acc=searcher.accuracy(greedy, searcher.val_loader), greedy_macs=searcher.space.macs(greedy),
                      greedy_widths=searcher.space.widths(greedy),
                      sharing_mean=mean_sharing_level(levels), sharing=levels)
        searcher.log.write(**record)
        # warm-up epochs have no reward
        epochs.set_postfix(**{k: f'{record[k]:.3f}' for k in ('val_acc', 'reward') if k in record})
        run.save(epoch, searcher.extra_state(epoch))
    return finish(searcher, decode(searcher), time.time() - t0)
