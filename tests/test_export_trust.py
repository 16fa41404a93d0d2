"""Exports a timm/Hub user can trust (issue 14 items 1-5), checked on a real short training run on digits:
the exported preprocessing reproduces the training evaluation, every printed load line loads the weights,
cards parse and say what ran, zoo names without weights fail fast, and folders re-saved by timm load.
"""
import json
import re
import shutil
import socket
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file
from timm.models import save_for_hf

from aps_zoo import cli, hub, models
from aps_zoo.channels import ChannelConfig
from aps_zoo.data import build_loaders
from aps_zoo.models import PretrainedWeightsNotFoundError, create_model_from_config
from aps_zoo.recipe import recipe_from_dict
from aps_zoo.train import train
from fake_hub import FakeHub
from test_hub import SUBPROCESS_TIMEOUT, TOKEN, _run

# The recipe's preprocessing differs from the family's pretrained cfg (CIFAR mean/std, crop 1.0, 32x32).
DATA = dict(dataset='digits', image_size=16, batch_size=32, crop_pct=0.875, crop_scale=[0.6, 1.0], hflip=0.0,
            mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
LOAD_LINE = re.compile(r"timm\.create_model\('local-dir:([^']+)', pretrained=True\)")


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    """A 3-epoch retraining of the paper's ResNet-20 on digits (about 10 s on one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    recipe = recipe_from_dict({
        'name': 'trust', 'seed': 0, 'output_dir': str(tmp_path_factory.mktemp('runs')), 'data': DATA,
        'train': {'config': 'aps_resnet20_cifar_20m', 'epochs': 3, 'lr': 0.1, 'select_best': False}})
    result = train(recipe)
    torch.set_num_threads(threads)
    return SimpleNamespace(recipe=recipe, dir=result.out_dir, results=result.results)


@pytest.fixture(scope='module')
def exported(digits_run, tmp_path_factory):
    return hub.export_run(digits_run.dir, tmp_path_factory.mktemp('export') / 'trust', repo_id='tester/trust')


def _trained_model(run_dir: Path) -> torch.nn.Module:
    model = create_model_from_config(ChannelConfig.load(run_dir / 'channel_config.json'))
    model.load_state_dict(load_file(run_dir / 'model.safetensors'))
    return model.eval()


def _probe(config: ChannelConfig) -> torch.Tensor:
    return torch.randn(4, *config.input_size, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------- 1. data config, labels

def test_exported_preprocessing_reproduces_the_training_evaluation(digits_run, exported):
    config = json.loads((exported / 'config.json').read_text())
    recorded = json.loads((digits_run.dir / 'results.json').read_text())['data_config']
    for key in ('mean', 'std', 'crop_pct', 'interpolation', 'input_size', 'crop_mode'):
        assert config['pretrained_cfg'][key] == recorded[key], key
    assert config['label_names'] == digits_run.results['class_names'] == [str(i) for i in range(10)]

    model = timm.create_model(f'local-dir:{exported}', pretrained=True).eval()
    assert model.pretrained_cfg['label_names'] == config['label_names']
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    test = build_loaders(digits_run.recipe.data, digits_run.recipe.seed, holdout=False).test.dataset
    images = test.with_format(None)
    with torch.no_grad():
        batch = torch.stack([transform(row['image'].convert('RGB')) for row in images])
        predicted = model(batch).argmax(1)
    top1 = 100 * (predicted == torch.tensor(images['label'])).float().mean().item()
    assert len(images) == 360 and digits_run.results['top1'] > 50  # it learned (chance is 10%)
    assert abs(top1 - digits_run.results['top1']) <= 0.5


def test_labels_that_do_not_fit_the_network_are_refused(digits_run, tmp_path):
    run = Path(shutil.copytree(digits_run.dir, tmp_path / 'run'))
    results = json.loads((run / 'results.json').read_text())
    (run / 'results.json').write_text(json.dumps({**results, 'class_names': ['a', 'b', 'c']}))
    with pytest.raises(hub.HubError, match='the results list 3 class names but resnet_cifar20 has 10 classes'):
        hub.export_run(run, tmp_path / 'out', repo_id='tester/x')
    assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------------------------- 2. load lines

def _printed_load_lines(out: str):
    lines = [line for line in out.splitlines() if 'create_model' in line]
    assert lines, out
    for line in lines:
        assert LOAD_LINE.search(line), line
    return [Path(LOAD_LINE.search(line).group(1)) for line in lines]


def _assert_loads_trained_weights(folder: Path, run_dir: Path) -> None:
    trained = _trained_model(run_dir)
    x = _probe(trained.channel_config)
    loaded = eval(f"timm.create_model('local-dir:{folder}', pretrained=True)", {'timm': timm}).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_export_prints_a_load_line_that_loads_the_weights(digits_run, tmp_path, capsys):
    assert cli.main(['export', str(digits_run.dir), str(tmp_path / 'out'), '--repo-id', 'tester/trust']) == 0
    (folder,) = _printed_load_lines(capsys.readouterr().out)
    assert folder == tmp_path / 'out'
    _assert_loads_trained_weights(folder, digits_run.dir)


def test_run_prints_a_load_line_that_loads_the_weights(digits_run, tmp_path, monkeypatch, capsys):
    """`aps-zoo run` = search, train, export: search and train stubbed to the fixture's finished run."""
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'name': 'trust', 'output_dir': str(tmp_path), 'data': DATA}))
    monkeypatch.setattr('aps_zoo.search.loop.search',
                        lambda *a, **k: SimpleNamespace(config_path=digits_run.dir / 'channel_config.json'))
    monkeypatch.setattr('aps_zoo.train.train', lambda *a, **k: SimpleNamespace(out_dir=digits_run.dir))
    assert cli.main(['run', str(recipe)]) == 0
    (folder,) = _printed_load_lines(capsys.readouterr().out)
    assert folder == tmp_path / 'trust' / 'export'
    _assert_loads_trained_weights(folder, digits_run.dir)


# ------------------------------------------------------------------------------------------ 3. cards

def test_card_parses_and_says_what_ran(digits_run, exported):
    card = ModelCard.load(exported / 'README.md')
    meta = card.data.to_dict()
    assert 'datasets' not in meta  # digits is embedded, not a Hub dataset
    results = card.data.eval_results
    assert [(r.dataset_type, r.dataset_split) for r in results] == [('digits', 'test')] * 2
    assert len({r.metric_type for r in results}) == len({r.metric_name for r in results}) == 2
    assert [round(r.metric_value, 2) for r in results] == [
        round(digits_run.results['top1'], 2), round(digits_run.results['top5'], 2)]
    text = card.text
    for section in ('## Intended use', '## Limitations', '## Search provenance', '## Reproduce', '## Recipe'):
        assert section in text, section
    recipe = re.search(r'## Recipe\n.*?```yaml\n(.*?)```', text, re.S).group(1)
    assert 'train:' in recipe and 'data:' in recipe
    assert 'search:' not in recipe and 'budget_macs' not in recipe  # no search ran in a retraining
    assert 'aps-zoo train recipe.yaml' in text and 'published in the APS paper' in text
    assert '- **seed:** 0' in text and '- **epochs:** 3' in text and '(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)' in text
    assert 'scikit-learn digits is a toy dataset' in text and 'Not published yet' not in text
    assert "timm.create_model('hf-hub:tester/trust', pretrained=True)" in text


def test_card_of_a_search_run_shows_its_search_section(digits_run, tmp_path):
    run = Path(shutil.copytree(digits_run.dir, tmp_path / 'run'))
    config = ChannelConfig.load(run / 'channel_config.json')
    ChannelConfig.from_dict({**config.to_dict(), 'provenance': {'source': 'search', 'recipe': 'trust',
                                                                 'budget_macs': 5e6}}).save(run / 'channel_config.json')
    text = ModelCard.load(hub.export_run(run, tmp_path / 'out', repo_id='tester/s') / 'README.md').text
    recipe = re.search(r'## Recipe\n.*?```yaml\n(.*?)```', text, re.S).group(1)
    assert 'search:' in recipe and 'aps-zoo run recipe.yaml' in text


@pytest.mark.parametrize('dataset, hub_id, short', [
    ('uoft-cs/cifar10', 'uoft-cs/cifar10', 'uoft-cs/cifar10'),
    ('{tmp}/my_flowers', None, 'my_flowers'),
])
def test_card_dataset_ids_only_from_the_hub(digits_run, tmp_path, dataset, hub_id, short):
    run = Path(shutil.copytree(digits_run.dir, tmp_path / 'run'))
    dataset = dataset.format(tmp=tmp_path)
    if hub_id is None:
        Path(dataset).mkdir()
    recipe = yaml.safe_load((run / 'recipe.yaml').read_text())
    recipe['data']['dataset'] = dataset
    (run / 'recipe.yaml').write_text(yaml.safe_dump(recipe, sort_keys=False))
    results = json.loads((run / 'results.json').read_text())
    results['dataset'] = f'imagefolder {dataset} (10 classes; train 1437, test 360 images)'
    (run / 'results.json').write_text(json.dumps(results))
    out = hub.export_run(run, tmp_path / 'out', repo_id='tester/x')
    card = ModelCard.load(out / 'README.md')
    assert card.data.to_dict().get('datasets') == ([hub_id] if hub_id else None)
    assert {r.dataset_type for r in card.data.eval_results} == {short}
    if hub_id is None:
        assert str(tmp_path) not in (out / 'README.md').read_text()


def test_weights_header_and_file_modes(exported):
    with safe_open(str(exported / 'model.safetensors'), framework='pt') as f:
        meta = f.metadata()
    config = json.loads((exported / 'config.json').read_text())
    assert meta['format'] == 'pt' and meta['architecture'] == config['architecture'] == 'aps_resnet_cifar'
    assert json.loads(meta['channel_config']) == config['channel_config']
    assert 'APS paper' in meta['provenance'] and meta['aps_zoo_version']
    for path in exported.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_export_without_repo_id_is_clearly_marked_and_not_pushed(digits_run, tmp_path):
    out = hub.export_run(digits_run.dir, tmp_path / 'out')
    text = (out / 'README.md').read_text()
    assert 'hf-hub:aps-zoo/' not in text and 'hf-hub:<org>/<name>' in text and '--repo-id' in text
    with pytest.raises(hub.HubError, match=r'exported without a repo id.*--repo-id') as refused:
        hub.push(out, 'tester/trust', token=TOKEN)
    assert '\n' not in str(refused.value)


# ------------------------------------------------------------------------------------ 4. zoo weights

SHIPPED = 'aps_resnet20_fashion_mnist'  # the zoo model whose weights ship in the package
UNTRAINED = [n for n in models.zoo_names() if n != SHIPPED]


def test_list_pretrained_lists_only_published_weights():
    assert timm.list_pretrained('aps_*') == [SHIPPED]
    assert all(not timm.models.get_pretrained_cfg(n).has_weights for n in UNTRAINED)


def _no_network(monkeypatch):
    """Every socket connection fails and is recorded (the list of attempted addresses is returned)."""
    attempts = []

    def no_network(self, address):
        attempts.append(address)
        raise OSError(f'network call attempted to {address}')

    monkeypatch.setattr(socket.socket, 'connect', no_network)
    return attempts


def test_shipped_weights_load_offline_as_their_hub_folder(monkeypatch):
    """pretrained=True reads the package's folder without the network: the weights are that file's, the
    preprocessing is the one they were trained with, and local-dir: on the folder gives the same logits."""
    from aps_zoo.models._base import shipped_folder
    attempts = _no_network(monkeypatch)
    model = timm.create_model(SHIPPED, pretrained=True).eval()
    folder = shipped_folder(SHIPPED)
    weights = load_file(folder / 'model.safetensors')
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    trained = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    data = timm.data.resolve_model_data_config(model)
    assert data['mean'] == tuple(trained['mean']) and data['std'] == tuple(trained['std'])
    assert data['input_size'] == (3, 28, 28) and trained['mean'] != list(timm.data.IMAGENET_DEFAULT_MEAN)
    x = torch.randn(2, 3, 28, 28)
    with torch.inference_mode():
        assert torch.equal(timm.create_model(f'local-dir:{folder}', pretrained=True).eval()(x), model(x))
    with safe_open(folder / 'model.safetensors', 'pt') as f:
        assert ChannelConfig.from_dict(json.loads(f.metadata()['channel_config'])).widths == \
            models.zoo_config(SHIPPED).widths
    assert attempts == []


def test_shipped_card_states_top1_against_uniform_at_the_same_macs():
    """The card's results are the hub config's measured metrics, and its text names the uniform network's
    top-1 at the same MACs, trained the same way."""
    from aps_zoo.models._base import shipped_folder
    config = hub.load_hub_config(Path(__file__).parents[1] / 'hub_configs' / f'{SHIPPED}.yaml')
    card = ModelCard.load(shipped_folder(SHIPPED) / 'README.md')
    test = [r for r in config.metrics if r.split == 'test']
    assert len(test) == 1 and f'| test | {test[0].top1:.2f} |' in card.text
    assert 'uniform' in config.description and config.description.split()[0] in card.text
    index = card.data.eval_results
    assert [r.metric_value for r in index if r.metric_type == 'accuracy'][0] == pytest.approx(test[0].top1)


def test_pretrained_cfg_with_published_weights(monkeypatch):
    from aps_zoo.models import _base
    monkeypatch.setattr(_base, 'PUBLISHED_WEIGHTS', frozenset({'aps_resnet20_cifar_20m'}))
    assert _base.zoo_cfg('aps_resnet20_cifar_20m')['hf_hub_id'] == 'aps-zoo/aps_resnet20_cifar_20m'
    assert 'hf_hub_id' not in _base.zoo_cfg('aps_resnet56_cifar_60m')


@pytest.mark.parametrize('offline', [True, False])
def test_pretrained_without_weights_is_one_line_naming_the_recipe(monkeypatch, offline):
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', offline)
    attempts = _no_network(monkeypatch)
    for name in UNTRAINED:
        with pytest.raises(PretrainedWeightsNotFoundError) as info:
            timm.create_model(name, pretrained=True)
        message = str(info.value)
        chained = info.value.__cause__ or (None if info.value.__suppress_context__ else info.value.__context__)
        assert '\n' not in message and chained is None
        recipe = models.train_recipe(name)
        assert f'aps-zoo train {recipe}' in message and (Path(__file__).parents[1] / recipe).is_file()
        assert f'No weights are published for {name}' in message and 'pretrained=True' in message
    assert attempts == []


# ------------------------------------------------------------------------- 5. folders saved by timm

def test_folder_saved_by_timm_loads_and_checks(exported, digits_run, tmp_path):
    resaved = tmp_path / 'resaved'
    save_for_hf(timm.create_model(f'local-dir:{exported}', pretrained=True), resaved, safe_serialization=True)
    config = json.loads((resaved / 'config.json').read_text())
    assert 'channel_config' not in config and config['model_args']['widths']
    trained = _trained_model(digits_run.dir)
    checked = hub.check_folder(resaved).config
    assert (checked.widths, checked.input_size, checked.num_classes) == (
        trained.channel_config.widths, trained.channel_config.input_size, 10)
    x = _probe(trained.channel_config)
    with torch.no_grad():
        assert torch.equal(hub.load(resaved).eval()(x), trained(x))


PUSH = """
import sys
from aps_zoo import hub
print(hub.push(sys.argv[1], 'tester/resaved'))
"""


def test_folder_saved_by_timm_pushes(exported, tmp_path):
    resaved = tmp_path / 'resaved'
    save_for_hf(timm.create_model(f'local-dir:{exported}', pretrained=True), resaved, safe_serialization=True)
    with FakeHub(TOKEN, lifetime=SUBPROCESS_TIMEOUT) as server:
        done = _run(PUSH, {'HF_ENDPOINT': server.url, 'HF_TOKEN': TOKEN, 'HF_HOME': str(tmp_path / 'home'),
                           'HF_HUB_OFFLINE': '0', 'HF_HUB_DISABLE_XET': '1'}, resaved)
        assert done.returncode == 0, done.stderr
        files = server.files('tester/resaved')
    assert sorted(files) == ['config.json', 'model.safetensors']
    assert files['model.safetensors'] == (resaved / 'model.safetensors').read_bytes()
