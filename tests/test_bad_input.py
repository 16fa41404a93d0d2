"""Table-driven bad input: recipes, channel configs and exported folders each end in a clear error."""
import json
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
