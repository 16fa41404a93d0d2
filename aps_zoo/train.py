"""Retraining of a ChannelConfig through Accelerate, with timm's optimizer, scheduler, losses and EMA.

The loop follows Accelerate's examples: ``accelerator.prepare`` and ``accelerator.backward`` are the
only distributed code, so the same function runs on one CPU or under ``accelerate launch``. The
recipe's batch size is the global batch (split across processes). Outputs, in ``<run_dir>/train``:

    model.safetensors     best weights of the timm model (the exporter's input)
    channel_config.json   the trained network, with the data's classes and input size
    results.json          test top-1/top-5 of those weights, epochs, best epoch, params, MACs, and the
                          eval preprocessing (``data_config``: input size, mean/std, crop) for the model card
    recipe.yaml  metrics.jsonl  curves.png  checkpoints/
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
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_info
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy
from tqdm.auto import tqdm

from ._io import atomic_write, atomic_write_text
from ._memory import check_model_memory
from .channels import ChannelConfig, ChannelConfigError
from .data import build_loaders
from .flops import count_macs
from .models import create_model_from_config, zoo_config, zoo_names
from .plots import plot_curves
from .recipe import Recipe, RecipeError, TrainSection, check_devices
from .runs import MetricsLog, check_finite, check_fresh_run, load_latest_checkpoint, save_checkpoint

WEIGHTS = 'model.safetensors'


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
        return self.results['top1']

    @property
    def top5(self) -> float:
        return self.results['top5']


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


def make_accelerator(tr: TrainSection, cpu: Optional[bool] = None) -> Accelerator:
    """The Accelerator of a training run: mixed precision and accumulation from the recipe, global batches."""
    return Accelerator(cpu=bool(cpu), mixed_precision=tr.mixed_precision,
                       gradient_accumulation_steps=tr.grad_accum_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, num_classes: int) -> Dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (%) of ``model`` over ``loader`` (gathered over processes)."""
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
    return {'loss': loss / count, 'top1': top1 / count, 'top5': top5 / count}


def _save_weights(accelerator: Accelerator, module: nn.Module, path: Path) -> None:
    state = accelerator.get_state_dict(module)
    if accelerator.is_main_process:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={'format': 'pt'}))


def _batches_per_epoch(loader, sizes: Dict[str, Optional[int]], batch_size: int, tr: TrainSection) -> int:
    try:
        n = len(loader)
    except TypeError:  # a streaming dataset: its size comes from the dataset info
        n = sizes['train'] // batch_size if sizes.get('train') else None
    if tr.steps_per_epoch:
        n = min(n, tr.steps_per_epoch) if n else tr.steps_per_epoch
    if not n:
        raise TrainError("the training data has an unknown size or no full batch; set train.steps_per_epoch")
    return n


def train(recipe: Recipe, config: Union[ChannelConfig, str, Path, None] = None, *, resume: bool = False,
          accelerator: Optional[Accelerator] = None, out_dir=None, cpu: Optional[bool] = None) -> TrainResult:
    """Train ``config`` (default ``recipe.train.config``) on ``recipe.data`` and write the run folder.

    ``resume`` continues from the newest usable checkpoint in ``out_dir`` (default ``<run_dir>/train``);
    a fresh run refuses a folder that already holds checkpoints. ``accelerator`` reuses one (its mixed
    precision wins; the recipe's accumulation steps are applied); otherwise one is made, on CPU if ``cpu``.
    """
    tr = recipe.train
    check_train_section(tr)
    channel_config, config_ref = resolve_config(config if config is not None else tr.config)
    out_dir = Path(out_dir) if out_dir is not None else recipe.run_dir / 'train'
    check_fresh_run(out_dir, resume)
    accelerator = accelerator or make_accelerator(tr, cpu)
    check_devices(recipe, accelerator.num_processes, accelerator.device.type == 'cuda')
    accelerator.gradient_accumulation_steps = tr.grad_accum_steps
    main = accelerator.is_main_process

    set_seed(recipe.seed)
    batch_size = tr.batch_size or recipe.data.batch_size
    data = build_loaders(dataclasses.replace(recipe.data, batch_size=batch_size), recipe.seed,
                         holdout=tr.select_best)
    channel_config = dataclasses.replace(channel_config, num_classes=data.num_classes, input_size=data.input_size)
    check_model_memory(channel_config, config_ref, batch_size=batch_size, device=accelerator.device)
    model = create_model_from_config(channel_config, pretrained_cfg_overlay=data.data_config).to(accelerator.device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = create_optimizer_v2(model, opt=tr.opt, lr=tr.lr, weight_decay=tr.weight_decay, momentum=tr.momentum,
                                    **_nesterov(tr))
    ema = ModelEmaV3(model, decay=tr.ema_decay) if tr.ema_decay else None
    mixup = None
    if tr.mixup or tr.cutmix:
        per_process = batch_size // accelerator.num_processes if accelerator.split_batches else batch_size
        if per_process % 2:
            raise TrainError(f"mixup/cutmix need an even batch per process, got {per_process}")
        mixup = Mixup(mixup_alpha=tr.mixup, cutmix_alpha=tr.cutmix, label_smoothing=tr.label_smoothing,
                      num_classes=data.num_classes)
    if mixup:
        train_loss_fn = SoftTargetCrossEntropy()
    elif tr.label_smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=tr.label_smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    eval_split = 'val' if tr.select_best else 'test'
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, data.train, data.val if tr.select_best else data.test)
    test_loader = accelerator.prepare(data.test) if tr.select_best else eval_loader
    batches = _batches_per_epoch(train_loader, data.sizes, batch_size, tr)
    scheduler, epochs = _scheduler(optimizer, tr, updates_per_epoch=math.ceil(batches / tr.grad_accum_steps))

    metrics = MetricsLog(out_dir / 'metrics.jsonl', enabled=main)
    state = dict(epoch=0, step=0, num_updates=0, best_top1=-math.inf, best_epoch=0, best_weights='model')
    if resume:
        last, extra = load_latest_checkpoint(accelerator, out_dir)
        scheduler.load_state_dict(extra.pop('scheduler'))
        if ema is not None:
            if 'ema' not in extra:
                raise TrainError(f"checkpoint of epoch {last} has no EMA weights but train.ema_decay is set")
            ema.load_state_dict(extra.pop('ema'))
        state.update({k: extra[k] for k in state})
        metrics.truncate_after(last)
        accelerator.print(f"resumed from epoch {last} ({out_dir / 'checkpoints'})")
    else:
        metrics.truncate_after(0)
    saved_recipe = dataclasses.replace(
        recipe, train=dataclasses.replace(tr, config=config_ref or str(out_dir / 'channel_config.json')))
    if main:
        channel_config.save(out_dir / 'channel_config.json')
        atomic_write_text(out_dir / 'recipe.yaml', saved_recipe.to_yaml())
    macs = count_macs(channel_config)
    accelerator.print(
        f"train {config_ref or channel_config.name}: {macs / 1e6:.2f}M MACs, {params / 1e6:.3f}M params | "
        f"{data.dataset_name} | {epochs} epochs x {batches} steps, batch {batch_size}"
        f"{f' x {tr.grad_accum_steps} accumulated' if tr.grad_accum_steps > 1 else ''}, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}")

    for epoch in range(state['epoch'], epochs):
        start = time.perf_counter()
        model.train()
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]['lr']
        loss_sum, loss_count, skipped = 0.0, 0, 0
        bar = tqdm(total=batches, desc=f'epoch {epoch + 1}/{epochs}', leave=False,
                   disable=not accelerator.is_local_main_process)
        for i, (images, labels) in enumerate(train_loader):
            if i == batches:
                train_loader.end()  # leaving the loader early: release it from Accelerate's gradient state
                break
            state['step'] += 1
            targets = labels
            if mixup is not None:
                images, targets = mixup(images, labels)
            with accelerator.accumulate(model):
                loss = train_loss_fn(model(images), targets)
                if check_finite(accelerator.gather(loss.detach()), state['step'], tr.on_nonfinite_loss):
                    accelerator.backward(loss)
                    loss_sum += loss.item()
                    loss_count += 1
                else:
                    skipped += 1
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                state['num_updates'] += 1
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model), step=state['num_updates'])
                scheduler.step_update(num_updates=state['num_updates'])
            bar.update()
            bar.set_postfix(loss=f'{loss.item():.3f}', lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        bar.close()
        train_loss = accelerator.gather(torch.tensor([loss_sum / max(loss_count, 1)], device=accelerator.device))

        ev = evaluate(model, eval_loader, accelerator, data.num_classes)
        ema_ev = evaluate(ema.module, eval_loader, accelerator, data.num_classes) if ema is not None else None
        scheduler.step(epoch + 1, ev['top1'])
        if tr.select_best:
            which, top1 = max([('model', ev['top1'])] + ([('ema', ema_ev['top1'])] if ema_ev else []),
                              key=lambda c: c[1])
            improved = top1 > state['best_top1']
        else:  # no held-out split: the final weights (EMA when enabled) are the result
            which, top1 = ('ema', ema_ev['top1']) if ema_ev else ('model', ev['top1'])
            improved = True
        if improved:
            state.update(best_top1=top1, best_epoch=epoch + 1, best_weights=which)
            _save_weights(accelerator, model if which == 'model' else ema.module, out_dir / WEIGHTS)
        record = dict(epoch=epoch + 1, step=state['step'], lr=lr, train_loss=train_loss.mean().item(),
                      eval_split=eval_split, eval_loss=ev['loss'], eval_top1=ev['top1'], eval_top5=ev['top5'],
                      skipped_steps=skipped, time_s=round(time.perf_counter() - start, 2))
        if ema_ev:
            record.update(ema_eval_loss=ema_ev['loss'], ema_eval_top1=ema_ev['top1'], ema_eval_top5=ema_ev['top5'])
        metrics.write(**record)
        accelerator.print(f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}, {eval_split} top-1 "
                          f"{ev['top1']:.2f}" + (f" (EMA {ema_ev['top1']:.2f})" if ema_ev else '') +
                          (f", skipped {skipped} non-finite steps" if skipped else ''))
        state['epoch'] = epoch + 1
        extra = {**state, 'scheduler': scheduler.state_dict()}
        if ema is not None:
            extra['ema'] = ema.state_dict()
        save_checkpoint(accelerator, out_dir, epoch + 1, extra)

    accelerator.wait_for_everyone()
    weights = out_dir / WEIGHTS
    if not weights.is_file():
        raise TrainError(f"{weights} is missing; the run has no saved weights to evaluate")
    accelerator.unwrap_model(model).load_state_dict(load_file(str(weights)))
    test = evaluate(model, test_loader, accelerator, data.num_classes)
    results = dict(
        dataset=data.dataset_name, split='test', top1=test['top1'], top5=test['top5'], loss=test['loss'],
        epochs=epochs, best_epoch=state['best_epoch'], weights=state['best_weights'],
        selected_on=f"val top-1 {state['best_top1']:.2f}" if tr.select_best else 'final epoch',
        params=params, macs=macs, config=config_ref or channel_config.name, num_classes=data.num_classes,
        class_names=data.class_names, data_config=data.data_config, batch_size=batch_size, seed=recipe.seed,
        num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision)
    if main:
        atomic_write_text(out_dir / 'results.json', json.dumps(results, indent=2) + '\n')
        plot_curves(metrics.read(), 'epoch', {'loss': ['train_loss', 'eval_loss'],
                                              f'{eval_split} top-1 (%)': ['eval_top1', 'ema_eval_top1']},
                    out_dir / 'curves.png', title=f"{config_ref or channel_config.name} on {data.dataset_name}")
    accelerator.print(f"test top-1 {test['top1']:.2f}, top-5 {test['top5']:.2f} ({state['best_weights']} weights "
                      f"of epoch {state['best_epoch']}); wrote {out_dir}")
    accelerator.wait_for_everyone()
    return TrainResult(out_dir, weights, channel_config, results)
