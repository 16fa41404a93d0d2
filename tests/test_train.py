"""Retraining on digits (CPU, seconds): learning, outputs, exact resume, non-finite losses, bad input. Mixed precision
from the launcher: tests/test_launch_bf16.py."""
import json
import math
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import aps_zoo.runs as runs_mod
import aps_zoo.train as train_mod
from aps_zoo.channels import ChannelConfig, ChannelConfigError
from aps_zoo.data import build_loaders
from aps_zoo.models import create_model_from_config, zoo_names
from aps_zoo.recipe import RecipeError, load_recipe, recipe_from_dict
from aps_zoo.runs import CheckpointError, NonFiniteLossError, list_checkpoints, load_plain_state
from aps_zoo.train import TrainError, resolve_config, train

OUTPUTS = {'model.safetensors', 'channel_config.json', 'results.json', 'recipe.yaml', 'metrics.jsonl', 'curves.png',
           'checkpoints', '.lock'}
RECIPES = sorted((Path(__file__).parent.parent / 'recipes').glob('train_*.yaml'))


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny CPU models: one intra-op thread avoids OpenMP stalls when CI cores are shared (results unchanged)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recipe(tmp_path, name='run', **train):
    return recipe_from_dict({
        'name': name, 'seed': 0, 'output_dir': str(tmp_path),
        'data': dict(dataset='digits', image_size=8, batch_size=32, crop_pct=1.0, crop_scale=[0.6, 1.0], hflip=0.0),
        'train': {'config': 'aps_resnet20_cifar_20m', 'epochs': 3, 'lr': 0.1, 'weight_decay': 5e-4, **train},
    })


def _tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _metrics(run: Path):
    return [{k: v for k, v in r.items() if k != 'time_s'} for r in map(json.loads, (run / 'metrics.jsonl').open())]


def test_digits_run_learns_and_writes_the_exporters_files(tmp_path):
    recipe = _recipe(tmp_path, epochs=4, ema_decay=0.9)
    result = train(recipe)
    out = tmp_path / 'run' / 'train'
    assert result.out_dir == out and {p.name for p in out.iterdir()} == OUTPUTS
    assert result.top1 > 70  # chance is 10%
    results = json.loads((out / 'results.json').read_text())
    assert results['epochs'] == 4 and 0 <= results['best_epoch'] <= 3 and results['weights'] in ('model', 'ema')
    assert results['dataset'].startswith('scikit-learn digits (1797 8x8 images')
    assert results['data_config']['input_size'] == [3, 8, 8] and results['data_config']['crop_pct'] == 1.0
    config = ChannelConfig.load(out / 'channel_config.json')
    assert config.num_classes == 10 and config.input_size == (3, 8, 8)
    assert results['macs'] > 0 and results['params'] == sum(
        p.numel() for p in create_model_from_config(config).parameters())
    assert load_recipe(out / 'recipe.yaml').train.config == 'aps_resnet20_cifar_20m'
    assert [r['epoch'] for r in _metrics(out)] == [0, 1, 2, 3]  # as the search's log: from 0, fractions
    assert all(0 <= r['eval_top1'] <= r['eval_top5'] <= 1 for r in _metrics(out))
    assert _metrics(out)[-1]['train_loss'] < _metrics(out)[0]['train_loss']
    assert (out / 'curves.png').read_bytes()[:4] == b'\x89PNG'

    # the safetensors file loads into the timm model the way the exporter and users load it
    state = load_file(str(out / 'model.safetensors'))
    model = create_model_from_config(config).eval()
    model.load_state_dict(state)
    via_timm = create_model_from_config(config, pretrained=True,
                                        pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'))).eval()
    data = build_loaders(recipe.data, recipe.seed, holdout=True)
    correct = 0
    with torch.no_grad():
        for images, labels in data.test:
            logits = model(images)
            assert torch.equal(logits, via_timm(images))
            correct += (logits.argmax(1) == labels).sum().item()
    assert 100 * correct / data.sizes['test'] == pytest.approx(results['top1'], abs=1e-6)


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    settings = dict(steps_per_epoch=6, ema_decay=0.9, mixup=0.2, label_smoothing=0.1, warmup_epochs=1)
    full = train(_recipe(tmp_path, 'full', **settings)).out_dir

    real_save = runs_mod.save_checkpoint

    def save_then_die(accelerator, run_dir, epoch, extra):
        path = real_save(accelerator, run_dir, epoch, extra)
        if epoch == 1:
            raise _Killed
        return path

    monkeypatch.setattr(runs_mod, 'save_checkpoint', save_then_die)
    killed = _recipe(tmp_path, 'killed', **settings)
    with pytest.raises(_Killed):
        train(killed)
    monkeypatch.undo()
    run = tmp_path / 'killed' / 'train'
    assert [e for e, _ in list_checkpoints(run)] == [0, 1]
    shutil.copytree(run, tmp_path / 'corrupt' / 'train')
    with pytest.raises(CheckpointError, match='already holds a run .* --resume'):
        train(killed)

    resumed = train(killed, resume=True).out_dir
    assert 'resumed from the checkpoint of epoch 1' in capsys.readouterr().out
    for name in ('checkpoints/epoch_0002/model.safetensors', 'checkpoints/epoch_0002/state.safetensors',
                 'model.safetensors'):
        assert _tensors_equal(full / name, resumed / name), name
    assert _metrics(full) == _metrics(resumed)

    # a corrupted newest checkpoint: resume falls back to the previous one and still ends identical
    corrupt = tmp_path / 'corrupt' / 'train'
    (corrupt / 'checkpoints/epoch_0001/model.safetensors').write_bytes(b'garbage')
    train(_recipe(tmp_path, 'corrupt', **settings), resume=True)
    assert 'trying an older checkpoint' in capsys.readouterr().out
    assert _tensors_equal(full / 'checkpoints/epoch_0002/model.safetensors',
                          corrupt / 'checkpoints/epoch_0002/model.safetensors')
    assert _metrics(full) == _metrics(corrupt)

    for _, folder in list_checkpoints(corrupt):
        (folder / 'state.safetensors').write_bytes(b'')
    with pytest.raises(CheckpointError, match='corrupted checkpoint file'):
        train(_recipe(tmp_path, 'corrupt', **settings), resume=True)


def _nan_at_training_call(monkeypatch, call):
    """Models whose output turns NaN at the ``call``-th training forward (a stand-in for a diverging step)."""
    def create(config, **kwargs):
        model = create_model_from_config(config, **kwargs)
        calls = []

        def hook(module, args, output):
            if module.training:
                calls.append(1)
                if len(calls) == call:
                    return output * math.nan
            return output
        model.register_forward_hook(hook)
        return model
    monkeypatch.setattr(train_mod, 'create_model_from_config', create)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, epochs=2, steps_per_epoch=4)
    _nan_at_training_call(monkeypatch, 6)
    with pytest.raises(NonFiniteLossError, match='loss is nan at step 6'):
        train(recipe)
    run = tmp_path / 'run' / 'train'
    assert [e for e, _ in list_checkpoints(run)] == [0]
    assert all(torch.isfinite(t).all() for t in load_file(str(run / 'model.safetensors')).values())
    monkeypatch.undo()
    train(recipe, resume=True)  # the epoch-0 checkpoint is intact: the run completes from it
    assert [e for e, _ in list_checkpoints(run)] == [0, 1]


def test_nonfinite_loss_skip_policy(tmp_path, monkeypatch):
    _nan_at_training_call(monkeypatch, 6)
    result = train(_recipe(tmp_path, epochs=2, steps_per_epoch=4, on_nonfinite_loss='skip'))
    assert [r['skipped_steps'] for r in _metrics(result.out_dir)] == [0, 1]
    assert all(torch.isfinite(t).all() for t in load_file(str(result.weights)).values())


def test_gradient_accumulation_counts_optimizer_updates(tmp_path):
    result = train(_recipe(tmp_path, epochs=1, steps_per_epoch=4, grad_accum_steps=2, sched_on_updates=True,
                           select_best=False))
    state = load_plain_state(list_checkpoints(result.out_dir)[-1][1])
    assert (state['step'], state['num_updates']) == (4, 2)
    assert result.results['selected_on'] == 'final epoch' and result.results['best_epoch'] == 0


def test_each_run_in_one_process_trains_at_its_own_mixed_precision(tmp_path):
    """Accelerate keeps one state per process: a run after a bf16 one (a GPU search before its retraining, as in
    `aps-zoo run`) used to train in bf16 when its recipe set no precision, and to fail when it set 'no'."""
    runs = [('bf16', 'bf16'), ('unset', None), ('explicit', 'no'), ('bf16_again', 'bf16')]
    for name, precision in runs:
        out = train(_recipe(tmp_path, name, epochs=1, steps_per_epoch=2, mixed_precision=precision)).out_dir
        assert json.loads((out / 'results.json').read_text())['mixed_precision'] == (precision or 'no'), name
    assert runs_mod.make_accelerator(cpu=True).mixed_precision == 'no'  # leaves the process as it found it


def test_bad_input_gives_clear_errors(tmp_path):
    recipe = _recipe(tmp_path)
    with pytest.raises(ChannelConfigError, match=r"unknown config 'aps_resnet21'.*aps_resnet20_cifar_20m"):
        train(recipe, 'aps_resnet21')
    with pytest.raises(ChannelConfigError, match='channel config file not found'):
        train(recipe, str(tmp_path / 'searched.json'))
    with pytest.raises(ChannelConfigError, match='pass --config'):
        train(_recipe(tmp_path, config=None))
    with pytest.raises(RecipeError, match="train.opt"):
        train(_recipe(tmp_path, opt='sgdd'))
    with pytest.raises(RecipeError, match="train.sched"):
        train(_recipe(tmp_path, sched='cosinus'))
    with pytest.raises(RecipeError, match='train.steps_per_epoch'):
        _recipe(tmp_path, steps_per_epoch=3, grad_accum_steps=2)


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: p.stem)
def test_train_recipes_load_and_name_a_network(path):
    recipe = load_recipe(path)
    train_mod.check_train_section(recipe.train)
    if recipe.train.config == 'aps_resnet50_2g' and 'aps_resnet50_2g' not in zoo_names():
        pytest.skip('aps_resnet50_2g is registered once its search has run')
    config, ref = resolve_config(recipe.train.config)
    assert ref == recipe.train.config and timm.is_model(ref)


def test_changed_epochs_on_resume_continue_the_new_schedule(tmp_path, capsys):
    """A finished 3-epoch run resumed with train.epochs=5 follows the 5-epoch cosine from epoch 4 on: the
    same LRs as a fresh 5-epoch run (not the old schedule's 0)."""
    fresh = train(_recipe(tmp_path, 'fresh', epochs=5, steps_per_epoch=4)).out_dir
    train(_recipe(tmp_path, 'grown', epochs=3, steps_per_epoch=4))
    grown = train(_recipe(tmp_path, 'grown', epochs=5, steps_per_epoch=4), resume=True).out_dir
    assert 'train.epochs changed from 3 to 5: continuing from epoch 3' in capsys.readouterr().out
    lrs = {run: [r['lr'] for r in _metrics(run)] for run in (fresh, grown)}
    assert [r['epoch'] for r in _metrics(grown)] == [0, 1, 2, 3, 4]
    assert lrs[grown][3:] == pytest.approx(lrs[fresh][3:], rel=1e-12) and min(lrs[grown][3:]) > 0.005
    assert json.loads((grown / 'results.json').read_text())['epochs'] == 5


@pytest.mark.parametrize('change, message', [
    (dict(epochs=2), r'written for train\.epochs=3; train\.epochs=2 ends before it'),
    (dict(epochs=5, sched='plateau'), r'plateau schedule .* cannot be stretched .* resume with train\.epochs=3'),
])
def test_changed_epochs_on_resume_refused_in_one_line(tmp_path, change, message):
    base = dict(steps_per_epoch=2, sched=change.get('sched', 'cosine'))
    train(_recipe(tmp_path, epochs=3, **base))
    before = (tmp_path / 'run' / 'train' / 'model.safetensors').read_bytes()
    with pytest.raises(TrainError, match=message) as info:
        train(_recipe(tmp_path, **{**base, **change}), resume=True)
    assert '\n' not in str(info.value)
    assert (tmp_path / 'run' / 'train' / 'model.safetensors').read_bytes() == before


def test_progress_writes_lines_not_bar_frames_when_not_a_terminal(tmp_path, capsys):
    """A batch job's log (stderr not a terminal) gets one line per interval and one per epoch, as timm's
    train.py logs, instead of tqdm's carriage-return frames; on a terminal the bar stays tqdm."""
    import io
    from tqdm.auto import tqdm
    from aps_zoo.progress import Progress, progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress(range(2), file=Terminal()), tqdm)
    log = io.StringIO()
    bar = progress(range(4), desc='epoch 0', file=log, interval_s=0)  # interval 0: a line per step
    assert isinstance(bar, Progress) and list(bar) == [0, 1, 2, 3]
    lines = log.getvalue().splitlines()
    assert [line.split(' (')[0] for line in lines] == ['epoch 0: 1/4', 'epoch 0: 2/4', 'epoch 0: 3/4',
                                                       'epoch 0: 4/4']  # closing repeats no line
    log = io.StringIO()
    for i in progress(range(10), desc='search', file=log):  # a loop left early still ends in one line
        if i == 2:
            break
    assert log.getvalue().startswith('search: 2/10 (') and log.getvalue().count('\n') == 1
    log = io.StringIO()
    bar = progress(total=10, initial=3, desc='epoch 1', file=log)  # the default interval: a minute
    bar.update()
    bar.set_postfix(loss='0.5')
    bar.close()
    assert log.getvalue().count('\n') == 1 and log.getvalue().startswith('epoch 1: 4/10 (')
    assert log.getvalue().rstrip().endswith('; loss=0.5')

    train(_recipe(tmp_path, epochs=2, steps_per_epoch=3))
    err = capsys.readouterr().err
    assert '\r' not in err and [line.split(' (')[0] for line in err.splitlines() if line.startswith('epoch')] == [
        'epoch 0/1: 3/3', 'epoch 1/1: 3/3']
