"""What tests/test_faults.py runs in processes of their own forked from a fork server that has imported timm,
the exporter and the `aps-zoo` command once: each case costs a fork, not a fresh interpreter's imports, and
still runs in its own process, which the test signals or kills.

- :func:`export_killed_inside_the_swap`: an export of the ResNet-20 over an earlier one at ``out``, SIGKILLed
  just before or after one step of the swap that puts it at the name;
- :func:`cli`: `aps-zoo ARGV` as `python -m aps_zoo.cli ARGV` runs it (exit code, stdout and stderr to files),
  optionally with a DataLoader worker that starts slowly (:func:`starting_worker`);
- :func:`script`: a script that calls ``train()`` itself and leaves what it raises uncaught.
"""
import importlib
import multiprocessing
import os
import resource
import signal
import sys
import time
from functools import partial
from multiprocessing import resource_tracker
from pathlib import Path

import timm
import torch

import aps_zoo  # noqa: F401  (registers the aps_* models with timm)
import aps_zoo.data
from aps_zoo.data import worker_ignores_sigterm

ex = importlib.import_module('aps_zoo.hub.export')  # the module (aps_zoo.hub.export is also the function)


def export_killed_inside_the_swap(out: str, step: str, where: str, mode: str) -> None:
    """``mode`` 'exchange' swaps with RENAME_EXCHANGE, 'link' as on a file system without it; ``step`` the call
    to kill around ('exchange', 'replace', 'rmtree'), ``where`` 'before' or 'after' it."""
    ex._exchange_supported = lambda parent: mode == 'exchange'
    real = {'exchange': ex._rename_exchange, 'replace': os.replace, 'rmtree': ex.shutil.rmtree}[step]

    def in_swap(*args):
        """Calls of the swap itself (not the atomic writes of the export's files, which use os.replace too)."""
        names = [os.path.basename(str(a)) for a in args]
        return os.path.basename(out) in names or any(n.endswith(('.v', '.link')) for n in names) or step == 'exchange'

    def killing(*args, **kwargs):
        if not in_swap(*args):
            return real(*args, **kwargs)
        if where == 'before':
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    if step == 'exchange':
        ex._rename_exchange = killing
    elif step == 'replace':
        ex.os.replace = killing
    else:
        ex.shutil.rmtree = killing
    ex.export(timm.create_model('aps_resnet20_cifar_20m'), out, results={'dataset': 'cifar10', 'top1': 55.0},
              plots=False)


def starting_worker(marker: str, worker_id: int) -> None:
    """``worker_init_fn`` of a job whose first DataLoader worker starts slowly: that worker creates the file
    ``marker`` and waits (a minute at most) until a SIGTERM is pending: one sent to the job's group while the
    worker starts, if the worker holds it back; a worker that does not is ended by it here. Then every worker
    goes on as in any job (:func:`worker_ignores_sigterm`)."""
    if not Path(marker).exists():
        Path(marker).touch()
        deadline = time.monotonic() + 60
        while signal.SIGTERM not in signal.sigpending() and time.monotonic() < deadline:
            time.sleep(0.01)
    worker_ignores_sigterm(worker_id)


def _job(stdout: str, stderr: str, fsize=None, start_method: str = 'fork', worker_marker=None) -> None:
    """This process as a job under a scheduler, with OMP_NUM_THREADS=1 (one intra-op thread) and its output to the
    files ``stdout`` and ``stderr``: it leads a process group of its own, has no resource tracker yet (a child of
    the fork server would share the test's), and starts its DataLoader workers by ``start_method``: 'fork', as
    `aps-zoo` does on Linux before Python 3.14, or 'forkserver', its default from 3.14 (a child of the fork server
    would otherwise inherit the server's start method). ``fsize``: RLIMIT_FSIZE of the process (bytes; with
    SIGXFSZ ignored, a write past it fails with EFBIG). ``worker_marker``: the first worker starts slowly
    (:func:`starting_worker`)."""
    os.setpgrp()
    resource_tracker._resource_tracker._fd = None
    multiprocessing.set_start_method(start_method, force=True)
    if worker_marker is not None:
        aps_zoo.data.worker_ignores_sigterm = partial(starting_worker, worker_marker)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    if fsize is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)


def cli(argv, stdout: str, stderr: str, **job) -> None:
    """`aps-zoo ARGV` as a job (:func:`_job`, which takes the keywords); the process exits with the command's exit
    code."""
    _job(stdout, stderr, **job)
    from aps_zoo.cli import main
    sys.exit(main(argv))


def script(argv, stdout: str, stderr: str, **job) -> None:
    """A script as a job (:func:`_job`) that calls ``train(load_recipe(argv[0]), resume='auto', cpu=True)`` and
    leaves what it raises uncaught: the exception propagates through multiprocessing's exit handler
    (``util._exit_function``, which terminates and joins this process's daemonic children) and ends the process
    with exit code 1 and its traceback, as an interpreter runs that handler at exit while the uncaught exception's
    traceback keeps the run's frames (and DataLoaders) alive."""
    _job(stdout, stderr, **job)
    from aps_zoo.recipe import load_recipe
    from aps_zoo.train import train
    train(load_recipe(argv[0]), resume='auto', cpu=True)
