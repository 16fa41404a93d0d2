"""Retraining of a ChannelConfig through Accelerate, with timm's optimizer, scheduler, losses and EMA.

The loop follows Accelerate's examples: ``accelerator.prepare`` and ``accelerator.backward`` are the
only distributed code, so the same function runs on one CPU or under ``accelerate launch``. The
recipe's batch size is per process, as in the search (the global batch is it times the number of
processes). The metrics log uses the search's conventions: epochs from 0, accuracies as fractions.
Outputs, in ``<run_dir>/train``:

    model.safetensors     best weights of the timm model (the exporter's input)
    channel_config.json   the trained network, with the data's classes and input size
    results.json          test top-1/top-5 (percent, as the Hub's model-index and hub configs) of those
                          weights, epochs, best epoch, params, MACs, and the eval preprocessing
                          (``data_config``: input size, mean/std, crop) for the model card
    recipe.yaml  metrics.jsonl  curves.png  checkpoints/

A SIGTERM stops the run after the current step with a checkpoint of the position inside the epoch;
``--resume`` (or ``--resume auto``) continues from there.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_info
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy
from .filenames import CHANNEL_CONFIG_FILE, INHERITED_DIR, RECIPE_FILE, RESULTS_FILE, TRAIN_CURVES_FILE, WEIGHTS_FILE
from ._io import atomic_write_text, write_weights
from ._memory import check_model_memory
from .channels import ChannelConfig, ChannelConfigError
from .data import build_loaders
from .families import interpolation
from .prefetch import device_loaders
from .flops import count_macs
from .models import create_model_from_config, zoo_config, zoo_names
from .plots import plot_curves
from .recipe import Recipe, RecipeError, TrainSection
from .inherited import inherited_weights, load_inherited
from .progress import progress
from .runs import Run, check_finite, make_accelerator


INITS = ('random', 'inherited')  # train.init: fresh weights, or the child a search inherited


class TrainError(ValueError):
    """A training run that cannot start or continue as asked."""


@dataclass
class TrainResult:
    """Where a run wrote its outputs, the network it trained and its ``results.json``."""
    out_dir: Path
    weights: Path
    config: ChannelConfig
    results: Dict[str, Any]

    @property
    def top1(self) -> float:
        """Test top-1 (percent) of the kept weights."""
        return self.results['top1']


def resolve_config(config: Union[ChannelConfig, str, Path, None]) -> Tuple[ChannelConfig, Optional[str]]:
    """A ChannelConfig from itself, a ChannelConfig JSON path or a zoo model name; plus the path or name."""
    if config is None:
        raise ChannelConfigError("no network to train: pass --config (a ChannelConfig JSON or an aps_* model name) "
                                 "or set train.config in the recipe")
    if isinstance(config, ChannelConfig):
        return config, None
    path = Path(config)
    if path.suffix == '.json' or path.exists():
        return ChannelConfig.load(path), str(path)
    if str(config) in zoo_names():
        return zoo_config(str(config)), str(config)
    raise ChannelConfigError(f"unknown config {str(config)!r}: not a ChannelConfig JSON file nor a zoo model "
                             f"({', '.join(zoo_names())})")


def _nesterov(tr: TrainSection) -> Dict[str, bool]:
    """``nesterov`` for optimizers that take it (timm's ``sgd`` defaults it on; the recipe decides)."""
    info = get_optimizer_info(tr.opt.lower().split('_')[-1])  # 'lookahead_sgd' -> 'sgd', as timm parses it
    return {'nesterov': tr.nesterov} if 'nesterov' in (info.defaults or {}) else {}


def _scheduler(optimizer, tr: TrainSection, updates_per_epoch: int):
    """timm's scheduler of the recipe and the number of epochs it runs."""
    return create_scheduler_v2(
        optimizer, sched=tr.sched, num_epochs=tr.epochs, warmup_epochs=tr.warmup_epochs, warmup_lr=tr.warmup_lr,
        min_lr=tr.min_lr, step_on_epochs=not tr.sched_on_updates, updates_per_epoch=updates_per_epoch)


def check_train_section(tr: TrainSection) -> None:
    """Raise RecipeError if timm does not know the optimizer or cannot build the schedule."""
    try:
        opt = create_optimizer_v2([nn.Parameter(torch.zeros(1))], opt=tr.opt, lr=tr.lr, momentum=tr.momentum,
                                  **_nesterov(tr))
    except ValueError as e:
        raise RecipeError(f"recipe key 'train.opt': {e}; see timm.optim.list_optimizers()") from None
    try:
        _scheduler(opt, tr, updates_per_epoch=1)
    except (ValueError, AssertionError) as e:
        raise RecipeError(f"recipe key 'train.sched' ({tr.sched!r}): {e or 'not supported with these settings'}") \
            from None


def make_train_accelerator(tr: TrainSection, cpu: Optional[bool] = None) -> Accelerator:
    """The Accelerator of a training run: the recipe's accumulation, and its mixed precision where the recipe
    sets one (else the launcher's: ``accelerate launch --mixed_precision`` / config)."""
    return make_accelerator(cpu=cpu, mixed_precision=tr.mixed_precision, grad_accum_steps=tr.grad_accum_steps)


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, num_classes: int) -> Dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (fractions) of ``model`` over ``loader`` (gathered over processes,
    each image counted once)."""
    model.eval()
    k = min(5, num_classes)
    loss = top1 = top5 = count = 0.0
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(images)
        logits, labels = accelerator.gather_for_metrics((logits.float(), labels))
        n = labels.numel()
        acc1, acc5 = accuracy(logits, labels, topk=(1, k))
        loss += F.cross_entropy(logits, labels, reduction='sum').item()
        top1 += acc1.item() * n
        top5 += acc5.item() * n
        count += n
    return {'loss': loss / count, 'top1': top1 / count / 100, 'top5': top5 / count / 100}  # timm's are percent


def _save_weights(accelerator: Accelerator, module: nn.Module, path: Path) -> None:
    state = accelerator.get_state_dict(module)
    if accelerator.is_main_process:
        write_weights(state, path)


def _batches_per_epoch(loader, sizes: Dict[str, Optional[int]], batch_size: int, processes: int,
                       tr: TrainSection) -> int:
    try:
        n = len(loader)
    except TypeError:  # a streaming dataset: its size comes from the dataset info
        n = sizes['train'] // (batch_size * processes) if sizes.get('train') else None
    if tr.steps_per_epoch:
        n = min(n, tr.steps_per_epoch) if n else tr.steps_per_epoch
    if not n:
        raise TrainError("the training data has an unknown size or no full batch; set train.steps_per_epoch")
    return n


def _loss_and_mixup(tr: TrainSection, batch_size: int, num_classes: int) -> Tuple[nn.Module, Optional[Mixup]]:
    """The training loss and the (optional) timm Mixup/CutMix of the recipe (``batch_size``: per process)."""
    mixup = None
    if tr.mixup or tr.cutmix:
        if batch_size % 2:
            raise TrainError(f"mixup/cutmix need an even batch per process (data.batch_size), got {batch_size}")
        mixup = Mixup(mixup_alpha=tr.mixup, cutmix_alpha=tr.cutmix, label_smoothing=tr.label_smoothing,
                      num_classes=num_classes)
    if mixup:
        return SoftTargetCrossEntropy(), mixup
    if tr.label_smoothing:
        return LabelSmoothingCrossEntropy(smoothing=tr.label_smoothing), None
    return nn.CrossEntropyLoss(), None


class _Trainer:
    """State of one training run; :func:`train` calls its steps in order (build, restore, epochs, finish)."""

    def __init__(self, recipe: Recipe, channel_config: ChannelConfig, config_ref: Optional[str],
                 accelerator: Accelerator, run: Run, init: str = 'random'):
        tr = self.tr = recipe.train
        self.recipe, self.config_ref, self.accelerator, self.run = recipe, config_ref, accelerator, run
        self.out_dir = run.out_dir
        self.batch_size = tr.batch_size or recipe.data.batch_size
        self.data = data = build_loaders(dataclasses.replace(recipe.data, batch_size=self.batch_size), recipe.seed,
                                         holdout=tr.select_best, interpolation=interpolation(channel_config.family))
        self.config = dataclasses.replace(channel_config, num_classes=data.num_classes, input_size=data.input_size)
        check_model_memory(self.config, config_ref, batch_size=self.batch_size, device=accelerator.device)
        model = create_model_from_config(self.config, pretrained_cfg_overlay=data.data_config)
        if init == 'inherited':
            self._inherit(model)
        model = model.to(accelerator.device)
        self.params = sum(p.numel() for p in model.parameters())
        optimizer = create_optimizer_v2(model, opt=tr.opt, lr=tr.lr, weight_decay=tr.weight_decay,
                                        momentum=tr.momentum, **_nesterov(tr))
        self.ema = ModelEmaV3(model, decay=tr.ema_decay) if tr.ema_decay else None
        self.loss_fn, self.mixup = _loss_and_mixup(tr, self.batch_size, data.num_classes)
        self.eval_split = 'val' if tr.select_best else 'test'
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.train_loader, val_loader, self.test_loader = device_loaders(accelerator, data, recipe.seed)
        self.eval_loader = val_loader if tr.select_best else self.test_loader
        self.batches = _batches_per_epoch(self.train_loader, data.sizes, self.batch_size, accelerator.num_processes,
                                          tr)
        self.scheduler, self.epochs = _scheduler(self.optimizer, tr,
                                                 updates_per_epoch=math.ceil(self.batches / tr.grad_accum_steps))
        # epoch: epochs completed (the next one's 0-based index); batches_done and the epoch_* sums: the position
        # inside that epoch when a SIGTERM stopped the run (0 at epoch ends)
        self.state = dict(epoch=0, step=0, num_updates=0, best_top1=-math.inf, best_epoch=-1, best_weights='model',
                          batches_done=0, epoch_loss_sum=0.0, epoch_loss_count=0, epoch_skipped=0)

    def _inherit(self, model: nn.Module) -> None:
        """Start ``model`` from the child weights the recipe's search wrote with ``space.init_from``."""
        search_dir = self.recipe.run_dir / 'search'
        load_inherited(model, inherited_weights(search_dir, self.config), str(self.out_dir))
        self.config = dataclasses.replace(self.config, provenance={
            **self.config.provenance, 'init': f"inherited ({search_dir / INHERITED_DIR})"})
        model.channel_config = self.config

    def restore(self) -> None:
        """Continue from the newest good checkpoint. A changed ``train.epochs`` continues on the new schedule
        (stateless timm schedules) or is refused in one line."""
        last, extra = self.run.resume()
        saved_epochs = extra.pop('train_epochs', self.tr.epochs)  # checkpoints before this key: unchanged
        if saved_epochs == self.tr.epochs:
            self.scheduler.load_state_dict(extra.pop('scheduler'))
        else:
            self._reschedule(extra['epoch'], saved_epochs)
        if self.ema is not None:
            if 'ema' not in extra:
                raise TrainError(f"checkpoint of epoch {last} has no EMA weights but train.ema_decay is set")
            self.ema.load_state_dict(extra.pop('ema'))
        self.state.update({k: extra.get(k, v) for k, v in self.state.items()})
        within = f", step {self.state['batches_done']} of epoch {self.state['epoch']}" if self.state['batches_done'] \
            else ''
        self.accelerator.print(f"resumed from the checkpoint of epoch {last}{within} ({self.out_dir / 'checkpoints'})")

    def _reschedule(self, last: int, saved_epochs: int) -> None:
        """Put the LR on the new schedule after ``last`` epochs, or refuse naming both epoch counts."""
        where = f"checkpoint after {last} epochs in {self.out_dir} was written for train.epochs={saved_epochs}"
        if last >= self.tr.epochs:
            raise TrainError(f"{where}; train.epochs={self.tr.epochs} ends before it: raise train.epochs or start "
                             "a new run")
        if self.tr.sched == 'plateau':
            raise TrainError(f"{where}; the plateau schedule depends on the history and cannot be stretched to "
                             f"train.epochs={self.tr.epochs}: resume with train.epochs={saved_epochs} or start a "
                             "new run")
        self.scheduler.step(last)
        if self.tr.sched_on_updates:
            self.scheduler.step_update(num_updates=self.scheduler_updates(last))
        self.accelerator.print(f"note: train.epochs changed from {saved_epochs} to {self.tr.epochs}: continuing "
                               f"from epoch {last} on the {self.tr.sched} schedule over {self.tr.epochs} epochs")

    def scheduler_updates(self, epoch: int) -> int:
        """Optimizer updates after ``epoch`` epochs."""
        return epoch * math.ceil(self.batches / self.tr.grad_accum_steps)

    def write_inputs(self) -> None:
        """The trained network and the recipe that trains it, next to the weights (the exporter's input)."""
        saved = dataclasses.replace(self.recipe, train=dataclasses.replace(
            self.tr, config=self.config_ref or str(self.out_dir / CHANNEL_CONFIG_FILE)))
        if self.accelerator.is_main_process:
            self.config.save(self.out_dir / CHANNEL_CONFIG_FILE)
            atomic_write_text(self.out_dir / RECIPE_FILE, saved.to_yaml())
        self.accelerator.print(
            f"train {self.config_ref or self.config.name}: {count_macs(self.config) / 1e6:.2f}M MACs, "
            f"{self.params / 1e6:.3f}M params | {self.data.description} | {self.epochs} epochs x {self.batches} "
            f"steps, batch {self.batch_size}"
            f"{f' x {self.tr.grad_accum_steps} accumulated' if self.tr.grad_accum_steps > 1 else ''}, "
            f"{self.accelerator.num_processes} process(es) on {self.accelerator.device}, mixed precision "
            f"{self.accelerator.mixed_precision}")

    def _step(self, images, labels) -> Tuple[torch.Tensor, bool]:
        """One forward/backward (an optimizer update at the end of an accumulation); (loss, whether finite)."""
        acc, state = self.accelerator, self.state
        state['step'] += 1
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        with acc.accumulate(self.model):
            loss = self.loss_fn(self.model(images), targets)
            finite = check_finite(loss, state['step'], self.tr.on_nonfinite_loss)
            if finite:
                acc.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad()
        if acc.sync_gradients:
            state['num_updates'] += 1
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.model), step=state['num_updates'])
            self.scheduler.step_update(num_updates=state['num_updates'])
        return loss, finite

    def _epoch_batches(self, epoch: int):
        """The training loader of ``epoch`` (from the batch a SIGTERM checkpoint stopped at) and a progress bar."""
        self.train_loader.set_epoch(epoch)
        done = self.state['batches_done']
        loader = self.train_loader.skip(self.accelerator, done, epoch) if done else self.train_loader
        bar = progress(total=self.batches, initial=done, desc=f'epoch {epoch}/{self.epochs - 1}', leave=False,
                       disable=not self.accelerator.is_local_main_process)
        return enumerate(loader, done), loader, bar

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        """Train one epoch; its record (lr at its start, mean train loss, skipped non-finite steps). A SIGTERM
        ends it after the current step with a checkpoint of the position (:class:`~aps_zoo.runs.Preempted`)."""
        self.model.train()
        state = self.state
        lr = self.optimizer.param_groups[0]['lr']
        batches, loader, bar = self._epoch_batches(epoch)
        for i, (images, labels) in batches:
            if i == self.batches:
                loader.end()  # leaving the loader early: release it from Accelerate's gradient state
                break
            loss, finite = self._step(images, labels)
            if finite:
                state['epoch_loss_sum'] += loss.item()
                state['epoch_loss_count'] += 1
            else:
                state['epoch_skipped'] += 1
            bar.update()
            bar.set_postfix(loss=f'{loss.item():.3f}', lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
            if self.run.stop_requested():
                loader.end()
                bar.close()
                state['batches_done'] = i + 1
                self.run.save(epoch, self.extra_state(), where=f' after step {i + 1} of epoch {epoch}')
        bar.close()
        acc = self.accelerator
        mean_loss = state['epoch_loss_sum'] / max(state['epoch_loss_count'], 1)
        train_loss = acc.gather(torch.tensor([mean_loss], device=acc.device)).mean().item()
        record = dict(epoch=epoch, step=state['step'], lr=lr, train_loss=train_loss,
                      skipped_steps=state['epoch_skipped'])
        state.update(batches_done=0, epoch_loss_sum=0.0, epoch_loss_count=0, epoch_skipped=0)
        return record

    def evaluate_epoch(self, epoch: int) -> Dict[str, Any]:
        """Evaluate model (and EMA), step the schedule, keep the best weights; the record's eval fields."""
        ev = evaluate(self.model, self.eval_loader, self.accelerator, self.data.num_classes)
        ema_ev = evaluate(self.ema.module, self.eval_loader, self.accelerator, self.data.num_classes) \
            if self.ema is not None else None
        self.scheduler.step(epoch + 1, ev['top1'])
        if self.tr.select_best:
            which, top1 = max([('model', ev['top1'])] + ([('ema', ema_ev['top1'])] if ema_ev else []),
                              key=lambda c: c[1])
            improved = top1 > self.state['best_top1']
        else:  # no held-out split: the final weights (EMA when enabled) are the result
            which, top1 = ('ema', ema_ev['top1']) if ema_ev else ('model', ev['top1'])
            improved = True
        if improved:
            self.state.update(best_top1=top1, best_epoch=epoch, best_weights=which)
            _save_weights(self.accelerator, self.model if which == 'model' else self.ema.module,
                          self.out_dir / WEIGHTS_FILE)
        record = dict(eval_split=self.eval_split, eval_loss=ev['loss'], eval_top1=ev['top1'], eval_top5=ev['top5'])
        if ema_ev:
            record.update(ema_eval_loss=ema_ev['loss'], ema_eval_top1=ema_ev['top1'], ema_eval_top5=ema_ev['top5'])
        self.state['epoch'] = epoch + 1
        return record

    def extra_state(self) -> Dict[str, Any]:
        """What a checkpoint holds besides Accelerate's state."""
        extra = {**self.state, 'scheduler': self.scheduler.state_dict(), 'train_epochs': self.tr.epochs}
        if self.ema is not None:
            extra['ema'] = self.ema.state_dict()
        return extra

    def finish(self) -> TrainResult:
        """Evaluate the kept weights on the test split; write results.json and the curves."""
        acc, state, data = self.accelerator, self.state, self.data
        acc.wait_for_everyone()
        weights = self.out_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise TrainError(f"{weights} is missing; the run has no saved weights to evaluate")
        acc.unwrap_model(self.model).load_state_dict(load_file(str(weights)))
        test = evaluate(self.model, self.test_loader, acc, data.num_classes)
        name = self.config_ref or self.config.name
        results = dict(
            dataset=data.description, split='test', top1=100 * test['top1'], top5=100 * test['top5'],
            loss=test['loss'],
            epochs=self.epochs, best_epoch=state['best_epoch'], weights=state['best_weights'],
            selected_on=f"val top-1 {state['best_top1']:.4f}" if self.tr.select_best else 'final epoch',
            params=self.params, macs=count_macs(self.config), config=name, num_classes=data.num_classes,
            class_names=data.class_names, data_config=data.data_config, batch_size=self.batch_size,
            seed=self.recipe.seed, num_processes=acc.num_processes, mixed_precision=acc.mixed_precision)
        if acc.is_main_process:
            atomic_write_text(self.out_dir / RESULTS_FILE, json.dumps(results, indent=2) + '\n')
            plot_curves(self.run.log.read(), 'epoch', {'cross-entropy loss': ['train_loss', 'eval_loss'],
                                                       f'{self.eval_split} top-1': ['eval_top1', 'ema_eval_top1']},
                        self.out_dir / TRAIN_CURVES_FILE, title=f"{name} on {data.description}")
        acc.print(f"test top-1 {test['top1']:.4f}, top-5 {test['top5']:.4f} ({state['best_weights']} weights "
                  f"of epoch {state['best_epoch']}); wrote {self.out_dir}")
        acc.wait_for_everyone()
        return TrainResult(self.out_dir, weights, self.config, results)


def train(recipe: Recipe, config: Union[ChannelConfig, str, Path, None] = None, *, resume: Union[bool, str] = False,
          accelerator: Optional[Accelerator] = None, out_dir=None, cpu: Optional[bool] = None,
          init: Optional[str] = None) -> TrainResult:
    """Train ``config`` (default ``recipe.train.config``) on ``recipe.data`` and write the run folder.

    ``resume`` continues from the newest usable checkpoint in ``out_dir`` (default ``<run_dir>/train``);
    'auto' does when one exists and starts fresh otherwise; a fresh run refuses a folder that already holds
    checkpoints, and one folder is trained by one process at a time. ``accelerator`` reuses one (its mixed
    precision wins; the recipe's accumulation steps are applied); otherwise one is made, on CPU if ``cpu``.
    ``init`` (default ``recipe.train.init``): 'random', or 'inherited' to start from the weights the recipe's
    search wrote with ``space.init_from`` (``<run_dir>/search/inherited``).
    """
    tr = recipe.train
    check_train_section(tr)
    channel_config, config_ref = resolve_config(config if config is not None else tr.config)
    out_dir = Path(out_dir) if out_dir is not None else recipe.run_dir / 'train'
    accelerator = accelerator or make_train_accelerator(tr, cpu)
    accelerator.gradient_accumulation_steps = tr.grad_accum_steps
    run = Run(recipe, out_dir, accelerator, resume=resume)
    trainer = _Trainer(recipe, channel_config, config_ref, accelerator, run, init or tr.init)
    with run:
        if run.resuming:
            trainer.restore()
        trainer.write_inputs()
        for epoch in range(trainer.state['epoch'], trainer.epochs):
            start = time.perf_counter()
            record = {**trainer.train_epoch(epoch), **trainer.evaluate_epoch(epoch)}
            record['time_s'] = round(time.perf_counter() - start, 2)
            run.log.write(**record)
            accelerator.print(
                f"epoch {epoch}/{trainer.epochs - 1}: train loss {record['train_loss']:.4f}, {trainer.eval_split} "
                f"top-1 {record['eval_top1']:.4f}" + (f" (EMA {record['ema_eval_top1']:.4f})" if trainer.ema else '')
                + (f", skipped {record['skipped_steps']} non-finite steps" if record['skipped_steps'] else ''))
            run.save(epoch, trainer.extra_state(), where=f' after epoch {epoch}')
        return trainer.finish()
