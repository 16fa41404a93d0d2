"""Faults while a run writes: a full disk and a read-only output folder end in one line (exit 2), keep every
checkpoint written earlier and leave no partial files.

The full disk is a real one where the test may mount a small tmpfs (root, CAP_SYS_ADMIN); elsewhere a file
size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the same writes fail. The read-only folder is a tmpfs
remounted read-only as root, plain permissions otherwise.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aps_zoo.channels import ChannelConfig
from aps_zoo.runs import list_checkpoints
from aps_zoo.train import train
from aps_zoo.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG = ChannelConfig('resnet_cifar', [4, 4, 4, 8, 8, 8, 8], 8, num_classes=10, input_size=(3, 8, 8))
SUBPROCESS_TIMEOUT = 240
MARGIN = 32 * 1024  # free bytes left on the small disk: less than one checkpoint (about 50 KB)
FILE_LIMIT = 16 * 1024  # without a mount: above the weights file (15 KB), below the optimizer state (18 KB)


def _recipe_data(output_dir, epochs):
    return {'name': 'run', 'seed': 0, 'output_dir': str(output_dir),
            'data': {'dataset': 'digits', 'image_size': 8, 'batch_size': 32, 'crop_pct': 1.0},
            'train': {'epochs': epochs, 'steps_per_epoch': 2, 'lr': 0.05}}


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def _cli(*args, fsize=None) -> subprocess.CompletedProcess:
    def limit():
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-m', 'aps_zoo.cli', *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=SUBPROCESS_TIMEOUT, cwd=REPO, preexec_fn=limit)


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
    """A training run folder after one epoch (checkpoint epoch_0001), and its channel config."""
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
    leftovers = [p for p in folder.rglob('*') if p.name.endswith('.tmp') or p.name.startswith('.')]
    assert leftovers == []


def test_disk_full_keeps_earlier_checkpoints_and_removes_partial_files(one_epoch, tmp_path):
    runs, config_path = one_epoch
    run = runs / 'run' / 'train'
    before = _files(run / 'checkpoints')
    disk = tmp_path / 'disk'
    with _tmpfs(disk, _used_bytes(runs) + MARGIN) as mounted:
        shutil.copytree(runs, disk / 'runs')
        recipe = tmp_path / 'recipe.yaml'
        recipe.write_text(yaml.safe_dump(_recipe_data(disk / 'runs', 3)))
        done = _cli('train', recipe, '--config', config_path, '--resume', '--cpu',
                    fsize=None if mounted else FILE_LIMIT)
        line = _one_error_line(done, 'train')
        assert ('No space left on device' if mounted else 'File too large') in line, line
        assert 'the disk is full' in line and str(disk / 'runs' / 'run' / 'train' / 'checkpoints') in line
        kept = disk / 'runs' / 'run' / 'train'
        assert [e for e, _ in list_checkpoints(kept)] == [1]
        assert _files(kept / 'checkpoints') == before  # the epoch-1 checkpoint is untouched
        _no_partial_files(kept)
        records = [json.loads(line) for line in (kept / 'metrics.jsonl').read_text().splitlines()]
        assert [r['epoch'] for r in records][0] == 1
        shutil.copytree(kept, tmp_path / 'after' / 'run' / 'train')
    # with room again, the run resumes from the kept checkpoint and finishes
    result = train(recipe_from_dict(_recipe_data(tmp_path / 'after', 2)), str(config_path), resume=True)
    assert [e for e, _ in list_checkpoints(result.out_dir)] == [1, 2]
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
def test_read_only_output_folder_is_one_line(one_epoch, tmp_path, resume):
    runs, config_path = one_epoch
    target = tmp_path / 'runs'
    shutil.copytree(runs, target)
    if not resume:
        shutil.rmtree(target / 'run')
    before = _files(target)
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump(_recipe_data(target, 2)))
    with _read_only(target):
        done = _cli('train', recipe, '--config', config_path, '--cpu', *(['--resume'] if resume else []))
        line = _one_error_line(done, 'train')
        assert 'read-only' in line and str(target) in line, line
        assert _files(target) == before


def test_resume_from_a_foreign_optimizer_state_is_one_line(one_epoch, tmp_path):
    runs, config_path = one_epoch
    target = Path(shutil.copytree(runs, tmp_path / 'runs'))
    foreign = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    foreign.step()
    checkpoint = target / 'run' / 'train' / 'checkpoints' / 'epoch_0001'
    torch.save(foreign.state_dict(), checkpoint / 'optimizer.bin')
    before = _files(target)
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump(_recipe_data(target, 2)))
    done = _cli('train', recipe, '--config', config_path, '--cpu', '--resume')
    line = _one_error_line(done, 'train')
    assert f'checkpoint {checkpoint} does not match this run or is corrupted' in line, line
    assert _files(target) == before  # refused, not continued and not overwritten
