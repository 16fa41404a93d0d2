"""Table-driven bad input: recipes, channel configs and exported folders each end in a clear error."""
import argparse
import json
import re
import shutil

import pytest
import timm
import yaml

import aps_zoo  # noqa: F401  (registers the models)
from aps_zoo.channels import ChannelConfig, ChannelConfigError
from aps_zoo.hub import HubError, check_folder, export
from aps_zoo.models import create_model_from_config
from aps_zoo.recipe import RecipeError, load_recipe

GOOD_RECIPE = {
    'name': 'x', 'data': {'dataset': 'digits', 'image_size': 8},
    'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8]},
    'search': {'budget_macs': 1e6, 'epochs': 2, 'warmup_epochs': 1},
}


def with_change(path: str, value):
    recipe = json.loads(json.dumps(GOOD_RECIPE))
    *parents, last = path.split('.')
    node = recipe
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return recipe


@pytest.mark.parametrize('key, value, message', [
    ('search.budget', 5, "unknown recipe key 'search.budget'; allowed in 'search': budget_macs"),
    ('colour', 'red', "unknown recipe key 'colour'"),
    ('space.family', 'vgg', "'space.family' must be one of resnet_cifar, resnet, mobilenetv2, got 'vgg'"),
    ('space.depth', 21, "depth must be 6n"),
    ('space.candidates', [4, -8], "'space.candidates' must be a non-empty list of positive widths"),
    ('space.candidates', [], "'space.candidates' must be a non-empty list"),
    ('space.candidates', 'wide', "'space.candidates' must be a list"),
    ('space.meta_width', 'huge', "'space.meta_width' must be 'sum', 'max' or an integer"),
    ('search.budget_macs', 'lots', "'search.budget_macs' must be a number, got 'lots'"),
    ('search.budget_macs', -1, "'search.budget_macs' must be positive"),
    ('space.overlap', 1.5, "'space.overlap' must be in [0, 1]"),
    ('search.overlap', 1.5, "in [0, 1], got 1.5 (written as 'search.overlap', which moved to 'space.overlap')"),
    ('search.orthogonal_every', 0, "'search.orthogonal_every' must be positive"),
    ('search.warmup_epochs', 9, "'search.warmup_epochs' must be between 0 and search.epochs"),
    ('search.decode', 'greedy', "'search.decode' must be one of beam, sample"),
    ('search.learn_projections', 'yes', "'search.learn_projections' must be true or false"),
    ('data.batch_size', 0, "'data.batch_size' must be positive"),
    ('data.val_fraction', 1.0, "'data.val_fraction' must be in (0, 1)"),
    ('search', [1, 2], "recipe section 'search' must be a mapping"),
])
def test_malformed_recipes(tmp_path, key, value, message):
    path = tmp_path / 'r.yaml'
    path.write_text(yaml.safe_dump(with_change(key, value)))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_recipe_file_problems(tmp_path):
    with pytest.raises(RecipeError, match='recipe file not found'):
        load_recipe(tmp_path / 'missing.yaml')
    (tmp_path / 'broken.yaml').write_text('search: [unclosed')
    with pytest.raises(RecipeError, match='is not valid YAML'):
        load_recipe(tmp_path / 'broken.yaml')
    (tmp_path / 'ok.yaml').write_text(yaml.safe_dump(GOOD_RECIPE))
    with pytest.raises(RecipeError, match='must look like section.key=value'):
        load_recipe(tmp_path / 'ok.yaml', ['search.epochs'])


R8 = [4, 4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize('data, message', [
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1]}, 'needs 7 widths, got 6'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1] + [0]}, 'width 6 must be positive, got 0'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': [-4] + R8[1:]}, 'width 0 must be positive, got -4'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1] + [10 ** 7]}, 'exceeds the maximum'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1] + ['8']}, 'width 6 must be an integer'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': 'wide'}, 'widths must be a list'),
    ({'family': 'densenet', 'depth': 8, 'widths': R8}, "unknown family 'densenet'"),
    ({'family': 'resnet', 'depth': 19, 'widths': R8}, 'resnet depth must be one of'),
    ({'depth': 8, 'widths': R8}, "missing 'family'"),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8, 'num_classes': -1}, 'num_classes must be'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8, 'input_size': [3, 32]}, 'input_size must be'),
    ([1, 2, 3], 'must be a JSON object'),
])
def test_malformed_configs(tmp_path, data, message):
    path = tmp_path / 'c.json'
    path.write_text(json.dumps(data))
    with pytest.raises(ChannelConfigError) as info:
        ChannelConfig.load(path)
    assert message in str(info.value) and 'c.json' in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ChannelConfigError, match='channel config file not found'):
        ChannelConfig.load(tmp_path / 'nope.json')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    config = ChannelConfig('resnet_cifar', R8, 8, num_classes=3, input_size=(3, 8, 8))
    return export(create_model_from_config(config), tmp_path_factory.mktemp('hub') / 'model', plots=False)


def corrupt(folder, change):
    if change == 'no weights':
        (folder / 'model.safetensors').unlink()
    elif change == 'no config':
        (folder / 'config.json').unlink()
    elif change == 'truncated weights':
        data = (folder / 'model.safetensors').read_bytes()
        (folder / 'model.safetensors').write_bytes(data[: len(data) // 2])
    elif change == 'garbage config':
        (folder / 'config.json').write_text('{"architecture": ')
    elif change == 'widths of another network':
        cfg = json.loads((folder / 'config.json').read_text())
        cfg['model_args']['widths'] = [8] * 7
        cfg['channel_config']['widths'] = [8] * 7
        (folder / 'config.json').write_text(json.dumps(cfg))


@pytest.mark.parametrize('change, message', [
    ('no weights', 'model.safetensors'),
    ('no config', 'config.json'),
    ('truncated weights', 'model.safetensors'),
    ('garbage config', 'config.json'),
    ('widths of another network', 'shape'),
])
def test_malformed_exported_folders(tmp_path, exported, change, message):
    folder = tmp_path / 'copy'
    shutil.copytree(exported, folder)
    corrupt(folder, change)
    with pytest.raises((HubError, ChannelConfigError, ValueError)) as info:
        check_folder(folder)
    assert message in str(info.value)
    assert str(folder) in str(info.value) or folder.name in str(info.value)
    with pytest.raises(Exception):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


# -- the command line: each bad input ends in exit 2, one stderr line naming it, nothing written earlier lost --
def _write_recipe(root, name='good.yaml', **changes):
    recipe = json.loads(json.dumps(GOOD_RECIPE))
    for key, value in changes.items():
        recipe[key] = value
    (root / name).write_text(yaml.safe_dump(recipe))
    return name


def _one_class_folder(root):
    from PIL import Image
    for i in range(4):
        (root / 'cats' / 'train' / 'cat').mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (8, 8), (i, i, i)).save(root / 'cats' / 'train' / 'cat' / f'{i}.png')
    return _write_recipe(root, 'cats.yaml', data={'dataset': str(root / 'cats'), 'image_size': 8})


CLI_ROWS = {
    'non-UTF-8 recipe': (lambda root: (root / 'latin1.yaml').write_bytes(b'name: caf\xe9\n') and
                         ['search', 'latin1.yaml'], ['latin1.yaml', 'not UTF-8 text']),
    'top-level YAML list with --set': (lambda root: (root / 'list.yaml').write_text('- 1\n- 2\n') and
                                       ['search', 'list.yaml', '--set', 'search.epochs=2'],
                                       ['list.yaml', 'must be a mapping of sections', 'got a list']),
    '--config is a folder': (lambda root: ['train', _write_recipe(root), '--config', 'runs'],
                             ['--config runs is a folder']),
    'non-UTF-8 --config': (lambda root: (root / 'c.json').write_bytes(b'{"family": "\xff"}') and
                           ['train', _write_recipe(root), '--config', 'c.json'], ['c.json', 'not UTF-8 text']),
    'non-UTF-8 flops config': (lambda root: (root / 'c.json').write_bytes(b'\xfe\xff') and ['flops', 'c.json'],
                               ['c.json', 'not UTF-8 text']),
    'output_dir is a file': (lambda root: (root / 'out').write_text('a file') and
                             ['search', _write_recipe(root, output_dir='out')],
                             ["'output_dir'", 'out is a file']),
    'empty repo id': (lambda root: ['push', 'runs', ''], ['non-empty REPO_ID']),
    'one-class imagefolder': (lambda root: ['search', _one_class_folder(root)],
                              ['cats', 'at least', 'two classes']),
}


PROGRESS = re.compile(r'\d+ examples \[|\| *\d+/\d+ \[')  # datasets' and tqdm's progress bars


def _files(root):
    return {p: p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('case', list(CLI_ROWS))
def test_cli_bad_input_one_line_exit_2(tmp_path, monkeypatch, capsys, case):
    from aps_zoo.cli import main
    import datasets
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path / 'hf_cache'))
    root = tmp_path / 'work'
    (root / 'runs' / 'earlier' / 'search').mkdir(parents=True)
    (root / 'runs' / 'earlier' / 'search' / 'metrics.jsonl').write_text('{"epoch": 0}\n')
    monkeypatch.chdir(root)
    setup, expected = CLI_ROWS[case]
    argv = setup(root)
    before = _files(root)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.replace('\r', '\n').splitlines() if line.strip() and not PROGRESS.search(line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f'aps-zoo {argv[0]}: error: '), err
    assert all(part in lines[0] for part in expected), err
    assert _files(root) == before  # refused before writing anything; earlier files intact


def test_every_cli_argument_has_help():
    from aps_zoo.cli import build_parser
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f'{name} {action.dest}' for name, sub in subparsers.choices.items() for action in sub._actions
               if not action.help]
    assert len(subparsers.choices) == 7 and missing == []


def test_search_epochs_override_scales_the_warmup_once(tmp_path, monkeypatch, capsys):
    from aps_zoo.cli import load_cli_recipe
    recipe = with_change('search.epochs', 40)
    recipe['search']['warmup_epochs'] = 20
    path = tmp_path / 'r.yaml'
    path.write_text(yaml.safe_dump(recipe))
    recipe = load_cli_recipe(path, ['search.epochs=4'])
    assert (recipe.search.epochs, recipe.search.warmup_epochs) == (4, 2)  # the recipe's 20/40 kept
    note = capsys.readouterr().err
    assert 'warm-up scaled to 2' in note and len(note.strip().splitlines()) == 1
    assert load_cli_recipe(path, ['search.epochs=30']).search.warmup_epochs == 20  # room left: unchanged
    assert load_cli_recipe(path, ['search.epochs=4', 'search.warmup_epochs=1']).search.warmup_epochs == 1
    monkeypatch.setenv('RANK', '1')  # another rank under accelerate launch: same recipe, no second note
    assert load_cli_recipe(path, ['search.epochs=4']).search.warmup_epochs == 2
    assert capsys.readouterr().err == ''
    with pytest.raises(SystemExit) as info:  # ... and a bad recipe is reported by rank 0 only
        load_cli_recipe(path, ['search.overlap=3'])
    assert info.value.code == 2 and capsys.readouterr().err == ''


def test_ctrl_c_exits_130_with_the_resume_command(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from aps_zoo.runs import list_checkpoints
    recipe = with_change('search.epochs', 200)
    recipe.update(output_dir=str(tmp_path / 'runs'))
    recipe['search'].update(warmup_epochs=100, steps_per_epoch=2)
    recipe['data'].update(max_train_samples=128)
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(recipe))
    env = {**os.environ, 'PYTHONPATH': os.getcwd(), 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'aps_zoo.cli', 'search', 'r.yaml', '--cpu'], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    run = tmp_path / 'runs' / 'x' / 'search'
    deadline = time.time() + 240
    while not list_checkpoints(run) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert list_checkpoints(run), 'no checkpoint written'
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1] == ('aps-zoo search: interrupted; resume with --resume: '
                                            'aps-zoo search r.yaml --cpu --resume')
    assert list_checkpoints(run)  # the checkpoints written before the interrupt are kept
