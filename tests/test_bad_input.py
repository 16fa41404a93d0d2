"""Table-driven bad input: recipes, channel configs and exported folders each end in a clear error."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

import aps_zoo  # noqa: F401  (registers the models)
from aps_zoo.channels import FAMILIES, ChannelConfig, ChannelConfigError
from aps_zoo.hub import HubError, check_folder, export
from aps_zoo.models import create_model_from_config
from aps_zoo.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]
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
    ('space.family', 'vgg', f"'space.family' must be one of {', '.join(FAMILIES)}, got 'vgg'"),
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
    ('search.epochs', 0, "'search.epochs' must be positive, got 0"),
    ('search.steps_per_epoch', 0, "'search.steps_per_epoch' must be positive or null, got 0"),
    ('search.controller.steps_per_epoch', 0, "'search.controller.steps_per_epoch' must be positive, got 0"),
    ('space.depth', '8', "'space.depth' must be an integer, got '8'"),
    ('space.depth', 8.0, "'space.depth' must be an integer, got 8.0"),
    ('seed', -1, "'seed' must be in [0, 4294967295], got -1"),
    ('seed', 2 ** 32, "'seed' must be in [0, 4294967295], got 4294967296"),
    ('space.candidates', [4, 10 ** 7], "'space.candidates': width 10000000 exceeds the maximum width 8192"),
    ('space.stage_multipliers', [1, 1, 10 ** 4],
     "'space.stage_multipliers': stage 3 widths up to 80000 exceed the maximum width 8192"),
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


def test_unsorted_candidates_are_the_same_space(tmp_path):
    from aps_zoo.spaces import space_from_recipe
    from aps_zoo.spaces.space import SearchSpaceError
    spaces = []
    for order in ([8, 4], [4, 8]):
        path = tmp_path / f'{order[0]}.yaml'
        path.write_text(yaml.safe_dump(with_change('space.candidates', order)))
        recipe = load_recipe(path)
        assert recipe.space.candidates == [4, 8]
        spaces.append(space_from_recipe(recipe, 10, (3, 8, 8)))
        with pytest.raises(SearchSpaceError, match=r'below the smallest network of the space \(3\.146e\+04 MACs'):
            spaces[-1].check_budget(2e4)
        spaces[-1].check_budget(3.2e4)  # the narrowest network (31,464 MACs) fits
    assert spaces[0] == spaces[1]


@pytest.mark.parametrize('text, message', [
    ('name: a\nname: b\n', "is not valid YAML: duplicate key 'name' at line 2, column 1"),
    ('search:\n  epochs: 2\n  warmup_epochs: 1\n  epochs: 3\n', "duplicate key 'epochs' at line 4, column 3"),
    ('space: {depth: 8, depth: 14}\n', "duplicate key 'depth' at line 1, column 19"),
    ('search: [unclosed\n', "is not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, message):
    path = tmp_path / 'dup.yaml'
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert message in str(info.value) and str(path) in str(info.value) and '\n' not in str(info.value)


def test_supernet_memory_estimate_names_the_estimate_and_the_limit(tmp_path):
    from aps_zoo._io import human_bytes
    from aps_zoo._memory import MemoryEstimateError, check_supernet_memory, supernet_estimate
    GIB = 2 ** 30
    from aps_zoo.spaces import space_from_recipe
    path = tmp_path / 'wide.yaml'
    path.write_text(yaml.safe_dump(with_change('space.candidates', [2048, 4096])))
    space = space_from_recipe(load_recipe(path), 10, (3, 8, 8))
    params, acts = supernet_estimate(space, 64)
    # the meta weights alone: 6144 x 6144 x 3 x 3 in each of the 6 convs after the stem, with momentum and gradient
    assert params > 6 * 6144 ** 2 * 9 * 4 * 3 and acts > 0
    with pytest.raises(MemoryEstimateError) as info:
        check_supernet_memory(space, 64, available=8 * GIB)
    message = str(info.value)
    assert f'needs an estimated {human_bytes(params + acts)} but 8.0 GiB is free' in message
    assert 'meta widths up to 6144' in message and 'batch 64' in message
    check_supernet_memory(space_from_recipe(load_recipe(tmp_path / 'wide.yaml', ['space.candidates=[4, 8]']), 10,
                                            (3, 8, 8)), 64, available=GIB)


@pytest.mark.parametrize('command, what', [('search', 'the resnet_cifar8 supernet'),
                                           ('train', 'the resnet_cifar8 network')])
def test_runs_refuse_before_allocating_what_does_not_fit(tmp_path, monkeypatch, capsys, command, what):
    from aps_zoo.cli import main
    monkeypatch.setattr('aps_zoo._memory.available_bytes', lambda device=None: 1024)  # the run would train 300 epochs
    recipe = tmp_path / 'r.yaml'
    recipe.write_text(yaml.safe_dump({**GOOD_RECIPE, 'output_dir': str(tmp_path / 'runs')}))
    config = ChannelConfig('resnet_cifar', R8, 8).save(tmp_path / 'c.json')
    assert main([command, str(recipe), '--cpu', *(['--config', str(config)] if command == 'train' else [])]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f'aps-zoo {command}: error: ') and what in line and 'but 1.0 KiB is free' in line
    assert not list((tmp_path / 'runs').rglob('checkpoints'))


R8 = [4, 4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize('data, message', [
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1]}, 'needs 7 widths, got 6'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1] + [0]}, 'width 6 must be positive, got 0'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': [-4] + R8[1:]}, 'width 0 must be positive, got -4'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8[:-1] + [10 ** 7]}, 'width 6 = 10000000 exceeds the maximum'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': [16384] * 7}, 'width 0 = 16384 exceeds the maximum width 8192'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8, 'num_classes': 10 ** 9},
     'num_classes = 1000000000 exceeds the maximum 100000'),
    ({'family': 'resnet_cifar', 'depth': '8', 'widths': R8}, "depth must be an integer, got '8'"),
    ({'family': 'resnet_cifar', 'depth': 8.0, 'widths': R8}, 'depth must be an integer, got 8.0'),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8, 'provenance': 'searched'},
     "provenance must be a mapping (JSON object), got 'searched'"),
    ({'family': 'resnet_cifar', 'depth': 8, 'widths': R8, 'provenance': ['search']},
     "provenance must be a mapping (JSON object), got ['search']"),
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
    return export(create_model_from_config(config), tmp_path_factory.mktemp('hub') / 'model', repo_id='aps-zoo/model', plots=False)


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
    'recipe bases in a cycle': (lambda root: (root / 'a.yaml').write_text('base: b.yaml\n') and
                                (root / 'b.yaml').write_text('base: a.yaml\n') and ['search', 'a.yaml'],
                                ["a.yaml: recipe key 'base'", 'makes a cycle', 'b.yaml']),
    'recipe base missing': (lambda root: (root / 'a.yaml').write_text('base: nowhere.yaml\n') and
                            ['train', 'a.yaml'], ["a.yaml: recipe key 'base'", 'not found', 'nowhere.yaml']),
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
    # as from a terminal: a shell's background job (`cmd &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, '-m', 'aps_zoo.cli', 'search', 'r.yaml', '--cpu'], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def _set_widths(folder, widths):
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['model_args']['widths'] = cfg['channel_config']['widths'] = widths
    (folder / 'config.json').write_text(json.dumps(cfg))


def test_folder_widths_are_checked_against_the_weights_header_before_building(tmp_path, exported, monkeypatch):
    folder = Path(shutil.copytree(exported, tmp_path / 'wide'))
    _set_widths(folder, [8192] * 7)  # a 2 KB config whose network would take 14.5 GB of fp32 weights
    devices, create = [], timm.create_model
    monkeypatch.setattr(timm, 'create_model',
                        lambda *a, **k: devices.append(torch.get_default_device().type) or create(*a, **k))
    with pytest.raises(HubError, match=r"layer 'stem\.conv\.weight' has shape \[4, 3, 3, 3\] but the channel "
                                       r"config in .*config\.json needs \[8192, 3, 3, 3\]"):
        check_folder(folder)
    assert devices == ['meta']  # only the shape-only build ran


def test_folder_that_does_not_fit_in_memory_is_refused_before_building(exported, monkeypatch):
    from aps_zoo._memory import MemoryEstimateError
    from aps_zoo.flops import count_params
    monkeypatch.setattr('aps_zoo._memory.available_bytes', lambda device=None: 1024)
    params = count_params(ChannelConfig('resnet_cifar', R8, 8, num_classes=3))
    with pytest.raises(MemoryEstimateError, match=rf"config\.json: the resnet_cifar8 network \({params:,} parameters, "
                                                  rf"loaded with its weights file\) needs an estimated .* but 1\.0 KiB"):
        check_folder(exported)


# ------------------------------------------------------------------------------------------------ push

TOKEN = 'hf_TESTtoken0123456789abcdefSECRET'
OTHER_TOKEN = 'hf_' + 'x7' * 17  # the shape of a user access token, not the pusher's


def _leak(folder, change, outside):
    if change == 'token in a sub-folder':
        (folder / 'notes').mkdir()
        (folder / 'notes' / 'env.txt').write_text(f'HF_TOKEN={OTHER_TOKEN}\n')
        return 'notes/env.txt contains a Hub token (hf_...)'
    if change == 'token deep down':
        (folder / 'a' / 'b').mkdir(parents=True)
        (folder / 'a' / 'b' / 'c.log').write_bytes(b'\0' * 3 * 2 ** 20 + TOKEN.encode())  # past the first chunk
        return 'a/b/c.log contains your Hub token'
    if change == 'token in the card':
        with (folder / 'README.md').open('a') as f:
            f.write(f'\n<!-- {OTHER_TOKEN} -->\n')
        return 'README.md contains a Hub token (hf_...)'
    if change == 'weights linked outside':
        shutil.move(folder / 'model.safetensors', outside / 'model.safetensors')
        (folder / 'model.safetensors').symlink_to(outside / 'model.safetensors')
        return f'model.safetensors is a link to {outside / "model.safetensors"}, outside'
    if change == 'card in a linked folder':
        shutil.move(folder / 'README.md', outside / 'README.md')
        (folder / 'docs').symlink_to(outside)
        (folder / 'README.md').symlink_to('docs/README.md')
        return f'README.md is a link to {outside / "README.md"}, outside'
    raise ValueError(change)


@pytest.mark.parametrize('change', ['token in a sub-folder', 'token deep down', 'token in the card',
                                    'weights linked outside', 'card in a linked folder'])
def test_push_refuses_tokens_at_any_depth_and_links_out_of_the_folder(tmp_path, exported, change):
    from aps_zoo.hub import push
    folder = Path(shutil.copytree(exported, tmp_path / 'folder'))
    (tmp_path / 'outside').mkdir()
    message = _leak(folder, change, tmp_path / 'outside')
    with pytest.raises(HubError) as info:  # refused before the network: tests run with HF_HUB_OFFLINE=1
        push(folder, 'aps-zoo/model', token=TOKEN)
    assert message in str(info.value) and TOKEN not in str(info.value) and OTHER_TOKEN not in str(info.value)
    assert '\n' not in str(info.value)


def test_push_uploads_exactly_the_manifest(tmp_path, exported):
    from fake_hub import FakeHub
    folder = Path(shutil.copytree(exported, tmp_path / 'folder'))
    (tmp_path / 'outside').mkdir()
    (tmp_path / 'outside' / 'private.txt').write_text('not for the Hub\n')
    (folder / 'notes').mkdir()
    (folder / 'notes' / 'todo.txt').write_text('retrain with more epochs\n')
    (folder / 'private.txt').symlink_to(tmp_path / 'outside' / 'private.txt')
    (folder / 'linked').symlink_to(tmp_path / 'outside')
    (folder / 'eval.json').write_text('{"top1": 50.0}\n')
    expected = {name: (folder / name).read_bytes() for name in ('config.json', 'model.safetensors', 'README.md')}
    repo = 'aps-zoo/model'
    with FakeHub(TOKEN) as server:
        env = {k: v for k, v in os.environ.items() if k not in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN')}
        env.update(HF_ENDPOINT=server.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='0',
                   HF_HUB_DISABLE_XET='1', HF_HUB_DISABLE_PROGRESS_BARS='1', PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, '-m', 'aps_zoo.cli', 'push', str(folder), repo], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert server.files(repo) == expected  # byte for byte: no notes/, no links, no undeclared extra
        assert len(server.repos[repo].commits) == 1
