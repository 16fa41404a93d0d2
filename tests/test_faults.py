"""Faults with real processes: one owner per run folder, resume that never goes on with unrestorable state,
exports killed inside their swap, and writes that fail: a full disk and a read-only output folder end in one
line (exit 2), keep every checkpoint written earlier and leave no partial files.

The full disk is a real one where the test may mount a small tmpfs (root, CAP_SYS_ADMIN); elsewhere a file
size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the same writes fail. The read-only folder is a tmpfs
remounted read-only as root, plain permissions otherwise.

The processes that are killed, signalled or limited are forked from a fork server that imported the command
once (tests/forked.py), not started as fresh interpreters; commands whose failure needs no process of its own
run through the command's entry point in this process.
"""
import importlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import aps_zoo.runs as runs_mod
from aps_zoo.channels import ChannelConfig
from aps_zoo.hub import check_folder, export
from aps_zoo.recipe import recipe_from_dict
from aps_zoo.runs import CheckpointError, RunInUseError, RunLock, list_checkpoints
from aps_zoo.train import train
import forked
from test_train import single_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

ZOO = 'aps_resnet20_cifar_20m'




def _recipe(tmp_path, name='run', **train_keys) -> dict:
    return {'name': name, 'seed': 0, 'output_dir': str(tmp_path),
            'data': dict(dataset='digits', image_size=8, batch_size=32, crop_pct=1.0, hflip=0.0),
            'train': {'config': ZOO, 'epochs': 2, 'steps_per_epoch': 3, **train_keys}}


def _metrics(run: Path):
    return [{k: v for k, v in json.loads(line).items() if k != 'time_s'} for line in (run / 'metrics.jsonl').open()]


@pytest.fixture(scope='module')
def fork_server():
    """Processes forked from a server that imported timm, the exporter and the command once (tests/forked.py; the
    module itself is not on the server's path, each child imports it)."""
    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload(['aps_zoo.hub.export', 'aps_zoo.cli', 'aps_zoo.train', 'aps_zoo.search.loop'])
    return context


class _Forked:
    """`aps-zoo ARGV` in a process of its own forked from the fork server (:func:`forked.cli`, which takes the
    keywords; ``target`` :func:`forked.script` runs a script instead), with what the tests here use of
    subprocess.Popen; stdout and stderr go to files beside ``name`` in ``folder``."""

    def __init__(self, server, folder: Path, name: str, *argv, target=forked.cli, **keywords):
        self.stdout, self.stderr = folder / f'{name}.stdout', folder / f'{name}.stderr'
        self.process = server.Process(target=target, args=([str(a) for a in argv], str(self.stdout),
                                                           str(self.stderr)), kwargs=keywords)
        self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self):
        return self.process.exitcode

    def poll(self):
        return self.process.exitcode

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def signal_group(self, sig):
        """``sig`` to the job's whole process group (its DataLoader workers too), as SLURM and `timeout` send it."""
        os.killpg(self.pid, sig)

    def wait(self, timeout=None):
        self.process.join(timeout)
        return self.process.exitcode

    def communicate(self, timeout=None):
        self.wait(timeout)
        return self.stdout.read_text(), self.stderr.read_text()


# ----------------------------------------------------------------------------------------------- lock

def test_second_process_into_a_run_folder_fails_at_once_naming_the_holder(tmp_path, capfd, fork_server):
    """A training process holds the folder; `aps-zoo train` into it from another process (this one, through
    the command's entry point) ends at once in one line naming the holder."""
    from aps_zoo.cli import main
    path = tmp_path / 'r.yaml'
    path.write_text(yaml.safe_dump(_recipe(tmp_path, epochs=500, steps_per_epoch=50)))
    run = tmp_path / 'run' / 'train'
    first = _Forked(fork_server, tmp_path, 'first', 'train', path, '--cpu')
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if (run / '.lock').is_file() and (run / '.lock').read_text().strip() == str(first.pid):
                break
            time.sleep(0.2)
        assert first.poll() is None, 'the first run ended before it held the folder'
        first.send_signal(signal.SIGSTOP)  # paused mid-run, still holding the folder: the CPU is the second's
        capfd.readouterr()
        start = time.time()
        assert main(['train', str(path), '--cpu']) == 2
        line = capfd.readouterr().err.strip()
        assert '\n' not in line and f'in use by process {first.pid}' in line and str(run) in line, line
        assert first.poll() is None  # the owner is undisturbed
        assert time.time() - start < 120
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lock = RunLock(run)  # the OS released the lock of the killed owner
    lock.acquire()
    lock.release()


def test_lock_in_one_process_refuses_a_second_owner(tmp_path):
    held = RunLock(tmp_path)
    held.acquire()
    with pytest.raises(RunInUseError, match=rf'in use by process {os.getpid()}'):
        RunLock(tmp_path).acquire()
    held.release()
    RunLock(tmp_path).acquire()


# --------------------------------------------------------------------------------------------- resume

@pytest.fixture(scope='module')
def full_and_killed(tmp_path_factory):
    """A full 3-epoch run, and the same run killed after its second epoch (checkpoints 0 and 1)."""
    root = tmp_path_factory.mktemp('resume')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that resume (single_thread): the same float sums
    full = train(recipe_from_dict(_recipe(root, 'full', epochs=3))).out_dir
    real_save = runs_mod.save_checkpoint

    def save_then_die(accelerator, run_dir, epoch, extra):
        real_save(accelerator, run_dir, epoch, extra)
        if epoch == 1:
            raise KeyboardInterrupt

    runs_mod.save_checkpoint = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(recipe_from_dict(_recipe(root, 'killed', epochs=3)))
    finally:
        runs_mod.save_checkpoint = real_save
        torch.set_num_threads(threads)
    return root, full, root / 'killed' / 'train'


def _copy(run: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name / 'train'
    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize('damage', ['garbage', 'empty', 'foreign_optimizer'])
def test_resume_falls_back_when_rng_or_optimizer_state_does_not_restore(full_and_killed, tmp_path, capsys, damage):
    root, full, killed = full_and_killed
    run = _copy(killed, tmp_path, 'damaged')
    newest = list_checkpoints(run)[-1][1]
    if damage == 'garbage':
        (newest / 'random_states_0.pkl').write_bytes(b'not a pickle at all')
    elif damage == 'empty':
        (newest / 'random_states_0.pkl').write_bytes(b'')
    else:  # the optimizer state of a different network
        other = train(recipe_from_dict(_recipe(tmp_path, 'other', epochs=1, config='aps_resnet56_cifar_60m')))
        shutil.copy(list_checkpoints(other.out_dir)[-1][1] / 'optimizer.bin', newest / 'optimizer.bin')
    capsys.readouterr()
    train(recipe_from_dict(_recipe(tmp_path, 'damaged', epochs=3)), resume=True)
    out = capsys.readouterr().out
    assert 'trying an older checkpoint' in out and 'resumed from the checkpoint of epoch 0' in out
    assert ('random_states_0.pkl' in out) == (damage != 'foreign_optimizer')
    assert _metrics(run) == _metrics(full)  # the fallback reran epoch 1 exactly


def test_resume_with_no_restorable_checkpoint_ends_in_one_line(full_and_killed, tmp_path):
    _, _, killed = full_and_killed
    run = _copy(killed, tmp_path, 'hopeless')
    for _, folder in list_checkpoints(run):
        (folder / 'random_states_0.pkl').write_bytes(b'\x80\x04tampered')
    with pytest.raises(CheckpointError, match=r'random state .*random_states_0\.pkl cannot be restored') as info:
        train(recipe_from_dict(_recipe(tmp_path, 'hopeless', epochs=3)), resume=True)
    assert '\n' not in str(info.value) and str(info.value).count('cannot be restored') == 2


# --------------------------------------------------------------------------------------------- export

def _top1(folder: Path) -> float:
    return ModelCard.load(folder / 'README.md').data.eval_results[0].metric_value


@pytest.mark.parametrize('mode, step, where, new', [
    ('exchange', 'exchange', 'before', False),
    ('exchange', 'exchange', 'after', True),     # the old export sits in the temp folder, not yet removed
    ('link', 'replace', 'before', False),
    ('link', 'replace', 'after', True),
    ('link', 'rmtree', 'before', True),          # the link points at the new version; the old one is left
])
def test_export_killed_inside_the_swap_leaves_a_whole_export_at_its_name(tmp_path, mode, step, where, new,
                                                                          caplog, fork_server):
    out = tmp_path / 'export'
    if mode == 'link':
        ex = importlib.import_module('aps_zoo.hub.export')
        real, ex._exchange_supported = ex._exchange_supported, lambda parent: False
        try:
            export(timm.create_model(ZOO), out, results={'dataset': 'cifar10', 'top1': 44.0}, plots=False)
        finally:
            ex._exchange_supported = real
        assert out.is_symlink()
    else:
        export(timm.create_model(ZOO), out, results={'dataset': 'cifar10', 'top1': 44.0}, plots=False)
    proc = fork_server.Process(target=forked.export_killed_inside_the_swap, args=(str(out), step, where, mode))
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == -signal.SIGKILL, f'exit code {proc.exitcode}'
    check_folder(out)  # a complete, checked export is at the name ...
    assert _top1(out) == (55.0 if new else 44.0)  # ... the old or the new one, never neither
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != 'export' and not (out.is_symlink() and
                                                                                     p == out.resolve())]
    assert leftovers, 'the kill inside the swap left no temp folder: the test did not hit the swap'
    with caplog.at_level('WARNING', logger='aps_zoo.hub'):
        export(timm.create_model(ZOO), out, results={'dataset': 'cifar10', 'top1': 66.0}, plots=False)
    assert _top1(out) == 66.0
    assert all(f'removing {tmp_path / name}, left by an interrupted export' in caplog.text for name in leftovers)
    current = {'export'} | ({out.resolve().name} if out.is_symlink() else set())
    assert {p.name for p in tmp_path.iterdir()} == current


# ------------------------------------------------------------------------------------ failing writes

CONFIG = ChannelConfig('resnet_cifar', [4, 4, 4, 8, 8, 8, 8], 8, num_classes=10, input_size=(3, 8, 8))
SUBPROCESS_TIMEOUT = 240
MARGIN = 32 * 1024  # free bytes left on the small disk: less than one checkpoint (about 50 KB)
FILE_LIMIT = 16 * 1024  # without a mount: above the weights file (15 KB), below the optimizer state (18 KB)


def _recipe_data(output_dir, epochs):
    return {'name': 'run', 'seed': 0, 'output_dir': str(output_dir),
            'data': {'dataset': 'digits', 'image_size': 8, 'batch_size': 32, 'crop_pct': 1.0},
            'train': {'epochs': epochs, 'steps_per_epoch': 2, 'lr': 0.05}}


def _files(folder: Path) -> dict:
    """Every file's bytes, but the run lock's (it names the pid of the last process that held the folder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file() and p.name != RunLock.NAME}


def _cli(server, folder: Path, *args, fsize=None) -> subprocess.CompletedProcess:
    """`aps-zoo ARGS` in a process of its own (forked from ``server``, its output in ``folder``), with its file
    size limited to ``fsize`` bytes when given."""
    done = _Forked(server, folder, 'cli', *args, fsize=fsize)
    out, err = done.communicate(timeout=SUBPROCESS_TIMEOUT)
    return subprocess.CompletedProcess(args, done.returncode, out, err)


def _cli_here(capfd, *args) -> subprocess.CompletedProcess:
    """The `aps-zoo` command through its entry point in this process (stdout and stderr of the file
    descriptors), as :func:`_cli` runs it in its own; for the failures that need no limit on the process."""
    from aps_zoo.cli import main
    capfd.readouterr()
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which('mount') is not None


@contextmanager
def _tmpfs(path: Path, size: int):
    """A tmpfs of ``size`` bytes at ``path``; yields False (nothing mounted) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _can_mount() and subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                                              capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(['umount', '-l', str(path)], check=True)


def _used_bytes(folder: Path) -> int:
    """Bytes tmpfs charges for ``folder``'s files (whole pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob('*') if p.is_file())


@pytest.fixture(scope='module')
def one_epoch(tmp_path_factory):
    """A training run folder after one epoch (checkpoint epoch_0000), and its channel config."""
    root = tmp_path_factory.mktemp('first')
    config_path = CONFIG.save(root / 'config.json')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(recipe_from_dict(_recipe_data(root / 'runs', 1)), str(config_path))
    finally:
        torch.set_num_threads(threads)
    return root / 'runs', config_path


def _one_error_line(done: subprocess.CompletedProcess, command: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert 'Traceback' not in done.stderr and lines[-1].startswith(f'aps-zoo {command}: error: ')
    assert not [line for line in lines[:-1] if 'error' in line.lower()]  # progress bars and warnings aside
    return lines[-1]


def _no_partial_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob('*') if p.name.endswith('.tmp') or
                 (p.name.startswith('.') and p.name != RunLock.NAME)]  # the lock file stays, unlocked
    assert leftovers == []


def test_disk_full_keeps_earlier_checkpoints_and_removes_partial_files(one_epoch, tmp_path, fork_server):
    runs, config_path = one_epoch
    run = runs / 'run' / 'train'
    before = _files(run / 'checkpoints')
    disk = tmp_path / 'disk'
    with _tmpfs(disk, _used_bytes(runs) + MARGIN) as mounted:
        shutil.copytree(runs, disk / 'runs')
        recipe = tmp_path / 'recipe.yaml'
        recipe.write_text(yaml.safe_dump(_recipe_data(disk / 'runs', 3)))
        done = _cli(fork_server, tmp_path, 'train', recipe, '--config', config_path, '--resume', '--cpu',
                    fsize=None if mounted else FILE_LIMIT)
        line = _one_error_line(done, 'train')
        assert ('No space left on device' if mounted else 'File too large') in line, line
        assert 'the disk is full' in line and str(disk / 'runs' / 'run' / 'train' / 'checkpoints') in line
        kept = disk / 'runs' / 'run' / 'train'
        assert [e for e, _ in list_checkpoints(kept)] == [0]
        assert _files(kept / 'checkpoints') == before  # the epoch-0 checkpoint is untouched
        _no_partial_files(kept)
        records = [json.loads(line) for line in (kept / 'metrics.jsonl').read_text().splitlines()]
        assert [r['epoch'] for r in records][0] == 0
        shutil.copytree(kept, tmp_path / 'after' / 'run' / 'train')
    # with room again, the run resumes from the kept checkpoint and finishes
    result = train(recipe_from_dict(_recipe_data(tmp_path / 'after', 2)), str(config_path), resume=True)
    assert [e for e, _ in list_checkpoints(result.out_dir)] == [0, 1]
    assert all(torch.isfinite(t).all() for t in load_file(str(result.out_dir / 'model.safetensors')).values())


@contextmanager
def _read_only(folder: Path):
    """Make ``folder`` (already filled) read-only for this process; skip where that cannot be done."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob('*')]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    staged = folder.with_name(folder.name + '-content')
    folder.rename(staged)
    with _tmpfs(folder, 16 * 2 ** 20) as mounted:
        if not mounted:
            staged.rename(folder)
            pytest.skip('running as root without permission to mount: no way to make a folder read-only')
        shutil.copytree(staged, folder, dirs_exist_ok=True)
        subprocess.run(['mount', '-o', 'remount,ro', str(folder)], check=True)
        yield


@pytest.mark.parametrize('resume', [False, True], ids=['fresh', 'resume'])
def test_read_only_output_folder_is_one_line(one_epoch, tmp_path, resume, capfd):
    runs, config_path = one_epoch
    target = tmp_path / 'runs'
    shutil.copytree(runs, target)
    if not resume:
        shutil.rmtree(target / 'run')
    before = _files(target)
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump(_recipe_data(target, 2)))
    with _read_only(target):
        done = _cli_here(capfd, 'train', recipe, '--config', config_path, '--cpu', *(['--resume'] if resume else []))
        line = _one_error_line(done, 'train')
        assert 'read-only' in line and str(target) in line, line
        assert _files(target) == before


def test_resume_from_a_foreign_optimizer_state_is_one_line(one_epoch, tmp_path, capfd):
    runs, config_path = one_epoch
    target = Path(shutil.copytree(runs, tmp_path / 'runs'))
    foreign = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    foreign.step()
    checkpoint = target / 'run' / 'train' / 'checkpoints' / 'epoch_0000'
    torch.save(foreign.state_dict(), checkpoint / 'optimizer.bin')
    before = _files(target)
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump(_recipe_data(target, 2)))
    done = _cli_here(capfd, 'train', recipe, '--config', config_path, '--cpu', '--resume')
    line = _one_error_line(done, 'train')
    assert f"checkpoint {checkpoint / 'optimizer.bin'} does not match this run or is corrupted" in line, line
    assert _files(target) == before  # refused, not continued and not overwritten


# ------------------------------------------------------------------------------------ preemption (SIGTERM)
STOP_TIMEOUT = 60  # seconds from the SIGTERM to the end of the job: a step, a checkpoint, and its workers ended


def _group(pgid: int) -> set:
    """The pids of the processes in the process group ``pgid``, zombies (ended, not yet reaped) left out."""
    pids = set()
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            state, _, group = stat.read_text().rsplit(')', 1)[1].split()[:3]  # after the name, which may hold spaces
        except OSError:  # ended meanwhile
            continue
        if int(group) == pgid and state != 'Z':
            pids.add(int(stat.parent.name))
    return pids


def _train_recipe(tmp_path, name, num_workers=0) -> Path:
    path = tmp_path / f'{name}.yaml'
    recipe = _recipe(tmp_path, name, epochs=3, steps_per_epoch=15)
    recipe['data'].update(augment=False, num_workers=num_workers)  # no random draws: a resumed epoch can match
    path.write_text(yaml.safe_dump(recipe))
    return path


def _main(*argv) -> int:
    """The `aps-zoo` command in this process (its entry point; one intra-op thread here: single_thread)."""
    from aps_zoo.cli import main
    return main([str(a) for a in argv])


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory) -> Path:
    """The run folder of the preempted jobs' recipe (:func:`_train_recipe`, no workers) run to its end without a
    signal, in this process with one intra-op thread (as single_thread): what every resumed job must match."""
    root = tmp_path_factory.mktemp('uninterrupted')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _main('train', _train_recipe(root, 'full'), '--cpu', '--resume', 'auto') == 0
    finally:
        torch.set_num_threads(threads)
    return root / 'full' / 'train'


@pytest.mark.parametrize('workers, start_method, while_starting, script', [
    (0, 'fork', False, False), (1, 'fork', False, False), (1, 'forkserver', True, False), (1, 'fork', False, True)],
    ids=['signal-to-the-process', 'signal-to-the-group-with-a-worker',
         'signal-to-the-group-while-a-worker-starts-from-a-fork-server',
         'signal-to-the-group-of-a-script-that-leaves-preempted-uncaught'])
def test_sigterm_checkpoints_inside_the_epoch_and_resume_auto_finishes_it(tmp_path, fork_server, uninterrupted,
                                                                          workers, start_method, while_starting,
                                                                          script):
    """A preempted job: SIGTERM inside an epoch ends the command (exit 143, one line naming the checkpoint) with a
    checkpoint of its position inside the epoch; the same command with --resume auto (which started the job fresh,
    as there was no checkpoint) continues it, in another process, to the weights of the uninterrupted run. The
    uninterrupted run (one for all cases) and the resume run in this process, the job in its own. With a DataLoader
    worker, the signal goes to the job's whole process group (SLURM, `timeout`): the worker lives on until the
    checkpoint is written, also when the signal comes while the worker is still starting (before its worker_init_fn)
    from a fork server (Python 3.14's default start method on Linux). A script that calls train() itself and leaves
    Preempted uncaught ends too (exit 1, its traceback): multiprocessing's exit handler, which runs while the
    traceback keeps the DataLoader alive, stops the worker with SIGTERM and joins it. No process of the job's group
    outlives it."""
    starting = tmp_path / 'worker-starting'
    recipe = _train_recipe(tmp_path, 'job', workers)
    argv = [recipe] if script else ['train', recipe, '--cpu', '--resume', 'auto']
    job = _Forked(fork_server, tmp_path, 'job', *argv, target=forked.script if script else forked.cli,
                  start_method=start_method, worker_marker=str(starting) if while_starting else None)
    log = tmp_path / 'job' / 'train' / 'metrics.jsonl'

    def in_the_run():  # a worker is starting (it waits for the signal), or epoch 0 is logged: the run is in epoch 1
        return starting.is_file() if while_starting else log.is_file() and log.read_text().strip()

    while not in_the_run() and job.poll() is None:
        time.sleep(0.05)
    assert _group(job.pid) - {job.pid} or not workers  # its workers (and a fork server of its own) are there
    (job.signal_group if workers else job.send_signal)(signal.SIGTERM)
    _, err = job.communicate(timeout=STOP_TIMEOUT)
    hung = job.poll() is None
    if hung:  # end it and its workers
        job.signal_group(signal.SIGKILL)
        job.wait()
    assert not hung, f'the job did not end within {STOP_TIMEOUT} s of the SIGTERM: {err[-2000:]}'
    if script:
        assert job.returncode == 1, err[-2000:]
        assert 'aps_zoo.runs.Preempted: stopped by SIGTERM after ' in err and 'DataLoader worker' not in err, err
    else:
        assert job.returncode == 143, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith('aps-zoo train: stopped by SIGTERM after ') and '--resume auto' in last, last
    deadline = time.monotonic() + 10  # a fork server of the job ends once the job has
    while _group(job.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group(job.pid)
    state = json.loads((list_checkpoints(tmp_path / 'job' / 'train')[-1][1] / 'state.json').read_text())
    assert 'batches_done' in json.dumps(state)
    assert _main('train', tmp_path / 'job.yaml', '--cpu', '--resume', 'auto') == 0
    out = {'full': uninterrupted, 'job': tmp_path / 'job' / 'train'}
    a, b = (load_file(str(out[n] / 'checkpoints' / 'epoch_0002' / 'model.safetensors')) for n in out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r['epoch'] for r in _metrics(out['job'])] == [0, 1, 2]
    assert [r['train_loss'] for r in _metrics(out['job'])] == pytest.approx([r['train_loss'] for r in
                                                                             _metrics(out['full'])], rel=1e-6)


def test_search_sigterm_checkpoints_at_the_epoch_end_and_resume_auto_completes(tmp_path, fork_server):
    """The search stops on SIGTERM after checkpointing the epoch it is in (exit 143, one line naming the
    checkpoint); `--resume auto` continues it to the end."""
    from test_search import tiny
    path = tmp_path / 'r.yaml'
    path.write_text(yaml.safe_dump(tiny(tmp_path, epochs=4, steps_per_epoch=15)))
    cmd = ['search', path, '--cpu', '--resume', 'auto']
    job = _Forked(fork_server, tmp_path, 'job', *cmd)
    run = tmp_path / 'tiny' / 'search'
    while not list_checkpoints(run) and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=300)
    assert job.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('aps-zoo search: stopped by SIGTERM; checkpoint ') and 'epoch_000' in last, last
    stopped_at = list_checkpoints(run)[-1][0]
    assert stopped_at < 3 and not (run / 'channel_config.json').exists()
    assert _main(*cmd) == 0  # the same command, in this process
    assert [json.loads(line)['epoch'] for line in (run / 'metrics.jsonl').open()] == [0, 1, 2, 3]
    assert (run / 'channel_config.json').is_file()
