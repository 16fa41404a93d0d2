"""Shared test settings: no test touches the network; the Hub is offline unless a test serves it locally.

:func:`launch_command` is the `accelerate launch` prefix of the multi-process tests: two gloo ranks on CPU
(docs/design.md#two-cpu-ranks), each launch on a free port (never Accelerate's default 29500, which another run may hold).
:func:`import_benchmark` gives the tests a script of benchmarks/ as a module."""
import importlib
import os
import socket
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
# Under pytest-xdist (-n auto) each worker gets its share of the cores for torch's OpenMP threads (set before
# any test module imports torch): oversubscribed threads spin against each other and slow every worker.
if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:
    workers = int(os.environ['PYTEST_XDIST_WORKER_COUNT'])
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // workers)))


def free_port() -> int:
    """A TCP port no process listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch_command(processes: int = 2, mixed_precision: str = 'no'):
    """`accelerate launch` with ``processes`` CPU ranks on a free port (append the script and its arguments;
    the script runs with ``Accelerator(cpu=True)``, e.g. ``aps_zoo.cli ... --cpu``)."""
    multi = ['--multi_gpu', '--main_process_port', str(free_port())] if processes > 1 else []
    return [sys.executable, '-m', 'accelerate.commands.launch', *multi, '--num_processes', str(processes),
            '--num_machines', '1', '--mixed_precision', mixed_precision, '--dynamo_backend', 'no']


def import_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, imported the way the scripts import their siblings (that folder on
    ``sys.path``), so one module object serves the script and the siblings that import it."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
