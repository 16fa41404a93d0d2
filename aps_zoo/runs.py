"""The scaffold of a long run (search or training) and what it writes.

:class:`Run` is the one lifecycle both use: the Accelerator and device check, the fresh-run check, an
OS lock that makes one process the owner of the run folder, seeding, the metrics log (emptied by a
fresh run, cut back to the checkpoint on resume) and checkpoints. Checkpoints live in
``<run_dir>/checkpoints/epoch_<n>``; each is written to a temp folder and renamed into place, so a crash
never leaves a half-written checkpoint where ``--resume`` looks, and resuming checks that the model,
optimizer and RNG states all restore (else it falls back to the previous checkpoint). Non-tensor state
is saved without pickle (safetensors + JSON). ``resume='auto'`` resumes when the folder holds a checkpoint and
starts fresh otherwise (one requeue command for both). A SIGTERM (a scheduler preempting the job) is turned
into a request to stop: the loop checkpoints where it is and the command ends with :class:`Preempted`.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, gather_object, reduce, set_seed
from accelerate.utils import load as accelerate_load
from accelerate.utils.constants import RNG_STATE_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .filenames import METRICS_FILE, STATE_JSON_FILE, STATE_TENSORS_FILE
from ._io import WRITE_FAILURES, atomic_write, atomic_write_text, write_error

# Checkpoint folders: checkpoints/epoch_NNNN, the newest KEEP_CHECKPOINTS kept
CHECKPOINT_PREFIX = 'epoch_'
KEEP_CHECKPOINTS = 2
NONFINITE_POLICIES = ('stop', 'skip')  # on_nonfinite_loss: what check_finite does with a NaN/inf loss
MIXED_PRECISIONS = ('no', 'fp16', 'bf16')  # what make_accelerator passes to Accelerate


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (missing, truncated, corrupted or mismatched)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf."""


class RunInUseError(CheckpointError):
    """The run folder is owned by another live process (it holds the folder's lock)."""


class Preempted(RuntimeError):
    """The run received SIGTERM, wrote a checkpoint where it was and stopped (``--resume`` continues it)."""


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (an all-reduce under a launcher, so every rank agrees)."""
    if PartialState().num_processes == 1:
        return flag
    return bool(reduce(torch.tensor([float(flag)], device=PartialState().device), 'sum').item())


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
        """Every record, oldest first."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, epoch: Optional[int]) -> None:
        """Drop records of epochs after ``epoch`` (resume: the log matches the checkpoint); ``None`` drops all
        (a fresh run: records of an earlier attempt that never finished an epoch)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [] if epoch is None else [r for r in self.read() if r.get('epoch', -1) <= epoch]
        atomic_write_text(self.path, ''.join(json.dumps(r) + '\n' for r in kept))


def check_finite(loss: torch.Tensor, step: int, policy: str) -> bool:
    """True if ``loss`` is finite on every process; otherwise skip (False) or raise naming the step, per
    ``policy``. The processes agree (an all-reduce of the flag), so all skip the backward together and no
    collective waits for a rank that skipped."""
    value = loss.detach().float()
    if not _any_process(not bool(torch.isfinite(value).all())):
        return True
    if policy == 'skip':
        return False
    what = f"loss is {value.item()}" if not torch.isfinite(value).all() else "loss is not finite on another process"
    raise NonFiniteLossError(f"{what} at step {step}; stopping (set on_nonfinite_loss: skip "
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
    atomic_write(folder / STATE_TENSORS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(folder / STATE_JSON_FILE, json.dumps(structure))


def load_plain_state(folder) -> Dict[str, Any]:
    """Inverse of :func:`save_plain_state`; raises CheckpointError naming the bad file."""
    folder = Path(folder)
    tensors_path, json_path = folder / STATE_TENSORS_FILE, folder / STATE_JSON_FILE
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
    """The folder of ``epoch``'s checkpoint."""
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


def resume_mode(resume: Union[bool, str], out_dir) -> bool:
    """Whether a run resumes: ``resume`` True/False, or 'auto': when ``out_dir`` holds a checkpoint."""
    if resume == 'auto':
        return bool(list_checkpoints(out_dir))
    return bool(resume)


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
    accelerator.wait_for_everyone()  # every rank writes its RNG state into tmp: all must be done before it moves
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _restore_rng(folder: Path, process_index: int) -> None:
    """Restore this process's RNG states from ``folder`` or raise CheckpointError. Accelerate's
    ``load_state`` only logs a random-state file it cannot load; a resumed run must not go on with
    unknown RNG state."""
    path = folder / f'{RNG_STATE_NAME}_{process_index}.pkl'
    try:
        states = accelerate_load(path)  # Accelerate's own loader (weights_only unpickling)
        random.setstate(states['random_state'])
        np.random.set_state(states['numpy_random_seed'])
        torch.set_rng_state(states['torch_manual_seed'])
        if torch.cuda.is_available() and 'torch_cuda_manual_seed' in states:
            torch.cuda.set_rng_state_all(states['torch_cuda_manual_seed'])
    except Exception as e:  # noqa: BLE001 - any failure means the RNG state is unknown
        raise CheckpointError(f"random state {path} cannot be restored: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


_STATE_FILES = ('input_sampler_file', 'input_scheduler_file', 'input_optimizer_file', 'input_model_file')


def _failed_file(exc: BaseException) -> Optional[Path]:
    """The file ``accelerator.load_state`` was restoring when ``exc`` was raised: its loader names each file
    just before reading it (model, optimizers, schedulers, samplers, in that order), so the last one named
    is the one that failed. None when the failure happened elsewhere."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == 'load_accelerator_state':
            named = tb.tb_frame.f_locals
            return next((Path(named[k]) for k in _STATE_FILES if k in named), None)
        tb = tb.tb_next
    return None


def _try_load(accelerator, folder: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(extra state, None) if every part of ``folder`` restored on every process, else (None, reason)."""
    try:
        extra = load_plain_state(folder)
        accelerator.load_state(str(folder))
        _restore_rng(folder, accelerator.process_index)
        error = None
    except CheckpointError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - model, optimizer, scheduler or sampler state that does not load
        error = f"checkpoint {_failed_file(e) or folder} does not match this run or is corrupted: {_first_line(e)}"
    if accelerator.num_processes > 1:
        error = next((e for e in gather_object([error]) if e), None)  # every process falls back together
    return (None, error) if error else (extra, None)


def load_latest_checkpoint(accelerator, run_dir) -> Tuple[int, Dict[str, Any]]:
    """Restore the newest usable checkpoint; returns (epoch, extra_state).

    A checkpoint whose model, optimizer, extra or RNG state fails to restore is reported and the previous
    one is tried, so one bad file never costs more than one epoch. Raises CheckpointError when none is
    usable.
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"--resume: no checkpoint found under {Path(run_dir) / 'checkpoints'}")
    errors = []
    for epoch, folder in reversed(found):
        extra, error = _try_load(accelerator, folder)
        if error is None:
            return epoch, extra
        errors.append(error)
        accelerator.print(f"warning: {error}; trying an older checkpoint")
    raise CheckpointError('; '.join(errors))


def _gpu_precision(cpu: Optional[bool], default: Optional[str]) -> Optional[str]:
    """``default`` on a CUDA machine whose launcher chose no mixed precision (``accelerate launch`` writes 'no'
    when none was asked for, so 'no' cannot be told from unset); None (the launcher's) otherwise."""
    launcher = os.environ.get('ACCELERATE_MIXED_PRECISION', 'no')
    if default is None or cpu or launcher != 'no' or not torch.cuda.is_available():
        return None
    return default if default != 'bf16' or torch.cuda.is_bf16_supported() else None


def _forget_other_precision(precision: str) -> None:
    """Accelerate keeps one ``AcceleratorState`` per process: a later Accelerator silently keeps the first one's
    mixed precision when given none, and raises when given another. A search (bf16 on a GPU) and a retraining in
    one process (``aps-zoo run``, the benchmarks) would retrain in bf16. So a state of another precision is
    cleared first, as transformers' ``TrainingArguments`` clears it; the ``PartialState`` (the process group)
    stays."""
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(*, cpu: Optional[bool] = None, mixed_precision: Optional[str] = None,
                     gpu_mixed_precision: Optional[str] = None, grad_accum_steps: int = 1,
                     seedable_sampler: bool = False, find_unused_parameters: bool = False) -> Accelerator:
    """The Accelerator of a search or training run; each process's loaders hold ``data.batch_size`` images.

    ``mixed_precision`` None keeps the launcher's (``accelerate launch --mixed_precision`` or its config
    file); ``gpu_mixed_precision`` is used instead on a GPU when the launcher chose none (the search's bf16);
    ``seedable_sampler``: the data order depends on (seed, epoch) only; ``find_unused_parameters`` for a
    supernet, which uses one candidate per layer and step. TF32 matmuls are enabled on CUDA (Accelerate does
    it only together with dynamo)."""
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    if torch.cuda.is_available() and not cpu:
        torch.set_float32_matmul_precision('high')
        torch.backends.cudnn.allow_tf32 = True
    precision = (mixed_precision or _gpu_precision(cpu, gpu_mixed_precision)
                 or os.environ.get('ACCELERATE_MIXED_PRECISION', 'no').lower())  # what Accelerate reads when unset
    _forget_other_precision(precision)
    return Accelerator(cpu=bool(cpu), mixed_precision=precision,
                       gradient_accumulation_steps=grad_accum_steps,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=seedable_sampler),
                       kwargs_handlers=kwargs)


class RunLock:
    """An OS lock (``fcntl.flock``) on ``<run_dir>/.lock``, held for the run's life; the file names the
    holder's pid. The OS drops the lock when the holder exits, however it ends (SIGKILL included). ``with lock:``
    waits for a holder to let go."""
    NAME = '.lock'

    def __init__(self, run_dir):
        self.path = Path(run_dir) / self.NAME
        self._file = None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock at once, or raise RunInUseError naming the process that holds it; with ``wait``, print
        that error's text once (``waiting: ...`` on stderr) and block until the holder lets go."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = self.path.open('a+')
        except OSError as e:  # a read-only or full output folder: one line naming it
            raise write_error(self.path, e) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or 'unknown'
            error = RunInUseError(f"{self.path.parent} is in use by process {holder} (it holds {self.path}); wait "
                                  f"for it to finish or stop it, or choose another name or output_dir")
            if not wait:
                f.close()
                raise error from None
            print(f"waiting: {error}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f'{os.getpid()}\n')
        f.flush()
        self._file = f

    def release(self) -> None:
        """Drop the lock (the file stays: an unlocked file means no process owns the folder)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> 'RunLock':
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Run:
    """The lifecycle of one search or training run in ``out_dir``, shared by both.

    Constructed: the recipe's device count is checked and everything is seeded (the same seed on every
    process: the networks are built identical). ``resume`` True, False or 'auto' (:func:`resume_mode`).
    ``with run:`` (entered once the recipe's data and network are known to be valid, before anything is
    written) takes the folder's lock, refuses a fresh run into a folder that holds checkpoints, empties the
    metrics log of a fresh run and turns SIGTERM into :meth:`stop_requested`; :meth:`resume` restores the
    newest good checkpoint and cuts the log back to it; :meth:`save` writes a checkpoint, then raises
    :class:`Preempted` if a SIGTERM came. Leaving the block releases the lock and the signal.
    """

    def __init__(self, recipe, out_dir, accelerator: Accelerator, *, resume: Union[bool, str]):
        from .recipe import check_devices
        check_devices(recipe, accelerator.num_processes, accelerator.device.type == 'cuda')
        set_seed(recipe.seed)
        self.out_dir, self.accelerator = Path(out_dir), accelerator
        self.resuming = resume_mode(resume, out_dir)
        self.log = MetricsLog(self.out_dir / METRICS_FILE, enabled=accelerator.is_main_process)
        self._lock = RunLock(self.out_dir)
        self._sigterm, self._previous_handler = False, None

    def __enter__(self) -> 'Run':
        self._acquire()
        try:
            check_fresh_run(self.out_dir, self.resuming)
        except CheckpointError:
            self._lock.release()
            raise
        if not self.resuming:
            self.log.truncate_after(None)
        if threading.current_thread() is threading.main_thread():  # where Python lets a handler be set
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
        self._lock.release()

    def _on_sigterm(self, signum, frame) -> None:
        self._sigterm = True

    def stop_requested(self) -> bool:
        """Whether a SIGTERM reached any process (agreed by all: call it at the same point on every rank)."""
        return _any_process(self._sigterm)

    def _acquire(self) -> None:
        """The main process takes the lock; every process learns the outcome, so all fail together."""
        error = None
        if self.accelerator.is_main_process:
            try:
                self._lock.acquire()
            except RunInUseError as e:
                error = str(e)
        if self.accelerator.num_processes > 1:
            box = [error]
            broadcast_object_list(box, from_process=0)
            error = box[0]
        if error:
            raise RunInUseError(error)

    def resume(self) -> Tuple[int, Dict[str, Any]]:
        """(epoch, extra state) of the newest checkpoint that restores completely; the log is cut back to it."""
        epoch, extra = load_latest_checkpoint(self.accelerator, self.out_dir)
        self.log.truncate_after(epoch)
        return epoch, extra

    def save(self, epoch: int, extra_state: Dict[str, Any], *, where: str = '') -> Optional[Path]:
        """Checkpoint ``epoch`` (Accelerate state plus ``extra_state``); then, if a SIGTERM came, raise
        :class:`Preempted` naming the checkpoint (``where``: the position, for the message)."""
        folder = save_checkpoint(self.accelerator, self.out_dir, epoch, extra_state)
        if self.stop_requested():
            raise Preempted(f"stopped by SIGTERM{where}; checkpoint {folder} written; continue with --resume auto")
        return folder
