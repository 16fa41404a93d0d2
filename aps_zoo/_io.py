"""Atomic file writes: a crash mid-write never leaves a half-written file in place.

A write that fails (disk full, read-only folder, file size limit) removes what it had written and
raises :class:`WriteError`, one line naming the file, the reason and the space left on its disk.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

# What a failed write raises, by library: OSError (Python), SafetensorError (safetensors: "... (os error 28)"),
# RuntimeError (torch.save: "PytorchStreamWriter failed writing file ...").
WRITE_FAILURES = (OSError, SafetensorError, RuntimeError)
FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
PROBE_BYTES = 2 ** 20


class WriteError(OSError):
    """A file or folder that could not be written; ``errno`` is the OS reason when one is known."""


def human_bytes(n: float) -> str:
    """``n`` bytes as '12.3 KiB', '4.5 GiB', ..."""
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024:
            return f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} TiB'


def write_error(path, error: BaseException) -> WriteError:
    """A WriteError for ``path`` from the failure ``error`` (an OS error or a library's wrapping of one)."""
    if isinstance(error, WriteError):
        return error
    where = Path(path)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
        found = re.search(r'os error (\d+)', str(error))
        code = int(found.group(1)) if found else _probe(where)
    reason = os.strerror(code) if code else (str(error).strip().splitlines() or [type(error).__name__])[0]
    free = shutil.disk_usage(where).free
    hint = ('the disk is full or a file size limit was reached' if code in FULL else
            'the folder is read-only' if code in READ_ONLY else 'is the disk full or the folder read-only?')
    failure = WriteError(f"cannot write {path}: {reason} ({human_bytes(free)} free there; {hint}); files written "
                         "earlier are kept, partial ones removed")
    failure.errno = code
    return failure


def _probe(folder: Path) -> Optional[int]:
    """The errno of writing PROBE_BYTES in ``folder`` (None if that works): the reason behind a library's bare
    message (torch.save says only "file write failed")."""
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.errno
    return None


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    except WRITE_FAILURES as e:
        raise write_error(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_weights(state: Mapping[str, torch.Tensor], path, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write a model's state dict as safetensors, atomically: the one writer of model weights (runs, the
    inherited child, exports). Tensors are detached, on the CPU and contiguous; the header holds
    ``format: pt`` (what timm and transformers check) plus ``metadata``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    header = {'format': 'pt', **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
