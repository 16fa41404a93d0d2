"""What a long run writes: a JSON-lines metrics log, epoch checkpoints through Accelerate, and
non-tensor state saved without pickle (safetensors + JSON).

Checkpoints live in ``<run_dir>/checkpoints/epoch_<n>``. Each is written to a temp folder and
renamed into place, so a crash never leaves a half-written checkpoint where ``--resume`` looks.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._io import WRITE_FAILURES, atomic_write, atomic_write_text, write_error

# The files of a run folder (what search and train write, what export reads)
RUN_WEIGHTS = 'model.safetensors'
RUN_CONFIG = 'channel_config.json'
RUN_RESULTS = 'results.json'
RUN_RECIPE = 'recipe.yaml'
METRICS_LOG = 'metrics.jsonl'
CHECKPOINT_PREFIX = 'epoch_'
STATE_TENSORS = 'state.safetensors'
STATE_JSON = 'state.json'
KEEP_CHECKPOINTS = 2


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (missing, truncated, corrupted or mismatched)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf."""


class MetricsLog:
    """Append-only JSON-lines log of one run (one object per line)."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **record) -> None:
        """Append one record; a write that fails (disk full) leaves the log as it was, no partial line."""
        if not self.enabled:
            return
        line = memoryview((json.dumps(record) + '\n').encode())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from None
        size = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line):]
        except OSError as e:
            os.ftruncate(fd, size)
            raise write_error(self.path, e) from None
        finally:
            os.close(fd)

    def read(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (used on resume so the log matches the checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if r.get('epoch', -1) <= epoch]
        atomic_write_text(self.path, ''.join(json.dumps(r) + '\n' for r in kept))


def check_finite(loss: torch.Tensor, step: int, policy: str) -> bool:
    """True if ``loss`` is finite; otherwise skip (False) or raise naming the step, per ``policy``."""
    value = loss.detach().float()
    if torch.isfinite(value).all():
        return True
    if policy == 'skip':
        return False
    raise NonFiniteLossError(f"loss is {value.item()} at step {step}; stopping (set on_nonfinite_loss: skip "
                             f"to skip such steps). Checkpoints written before this step are kept.")


def _flatten(obj: Any, prefix: str, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or 'root'
        tensors[key] = obj.detach().cpu().contiguous()
        return {'__tensor__': key}
    if isinstance(obj, dict):
        return {'__dict__': [[_flatten(k, '', {}), _flatten(v, f'{prefix}/{k}', tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f'{prefix}/{i}', tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {'__tuple__': items}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {'__float__': repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save state value of type {type(obj).__name__} at {prefix}")


def _unflatten(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if '__tensor__' in obj:
            return tensors[obj['__tensor__']]
        if '__dict__' in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj['__dict__']}
        if '__tuple__' in obj:
            return tuple(_unflatten(v, tensors) for v in obj['__tuple__'])
        if '__float__' in obj:
            return float(obj['__float__'])
    return obj


def save_plain_state(state: Dict[str, Any], folder) -> None:
    """Save nested state (state_dicts, optimizer states, numbers, lists) as safetensors + JSON, no pickle."""
    folder = Path(folder)
    tensors: Dict[str, torch.Tensor] = {}
    structure = _flatten(state, '', tensors)
    atomic_write(folder / STATE_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(folder / STATE_JSON, json.dumps(structure))


def load_plain_state(folder) -> Dict[str, Any]:
    """Inverse of :func:`save_plain_state`; raises CheckpointError naming the bad file."""
    folder = Path(folder)
    tensors_path, json_path = folder / STATE_TENSORS, folder / STATE_JSON
    for p in (tensors_path, json_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupted checkpoint file {tensors_path}: {e}") from None
    try:
        structure = json.loads(json_path.read_text())
        return _unflatten(structure, tensors)
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"corrupted checkpoint file {json_path}: {e}") from None


def checkpoint_dir(run_dir, epoch: int) -> Path:
    return Path(run_dir) / 'checkpoints' / f'{CHECKPOINT_PREFIX}{epoch:04d}'


def list_checkpoints(run_dir) -> List[Tuple[int, Path]]:
    """(epoch, folder) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / 'checkpoints'
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit():
            found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
    return sorted(found)


def check_fresh_run(out_dir, resume: bool) -> None:
    """A fresh run refuses a folder that already holds checkpoints, so nothing earlier is overwritten."""
    previous = list_checkpoints(out_dir)
    if previous and not resume:
        raise CheckpointError(f"{out_dir} already holds a run ({previous[-1][1].name}); pass --resume to continue "
                              f"it, or remove the folder / choose another name or output_dir")


def save_checkpoint(accelerator, run_dir, epoch: int, extra_state: Dict[str, Any]) -> Optional[Path]:
    """Save Accelerate state plus ``extra_state`` for ``epoch`` atomically; keep the newest few."""
    final = checkpoint_dir(run_dir, epoch)
    tmp = final.with_name(final.name + '.tmp')
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            save_plain_state(extra_state, tmp)
    except WRITE_FAILURES as e:  # disk full, read-only: no partial checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, e) from None
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_latest_checkpoint(accelerator, run_dir) -> Tuple[int, Dict[str, Any]]:
    """Restore the newest usable checkpoint; returns (epoch, extra_state).

    A checkpoint that fails to load is reported and the previous one is tried, so one bad
    file never costs more than one epoch. Raises CheckpointError when none is usable.
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"--resume: no checkpoint found under {Path(run_dir) / 'checkpoints'}")
    errors = []
    for epoch, folder in reversed(found):
        try:
            extra = load_plain_state(folder)
            accelerator.load_state(str(folder))
            return epoch, extra
        except CheckpointError as e:
            errors.append(str(e))
        except (RuntimeError, OSError, ValueError, KeyError, SafetensorError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            errors.append(f"checkpoint {folder} does not match this run or is corrupted: {msg}")
        accelerator.print(f"warning: {errors[-1]}; trying an older checkpoint")
    raise CheckpointError('; '.join(errors))
