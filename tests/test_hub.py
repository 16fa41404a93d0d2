"""The Hub side of the zoo: export folder and model card, loading through timm and aps_zoo.hub.load,
pushing to a local Hub server (tests/fake_hub.py) and the hub configs behind `aps-zoo push --all` / `list`.

Push and hf-hub: loading run in subprocesses so that huggingface_hub reads HF_ENDPOINT, HF_HOME and
HF_HUB_CACHE from the environment, as it does for a user; nothing reaches the network.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load, load_file, save_file

from aps_zoo import hub, models
from aps_zoo.channels import ChannelConfig, uniform_widths
from aps_zoo.flops import count_macs
from fake_hub import FakeHub

ZOO = 'aps_resnet20_cifar_20m'
REPO = f'aps-zoo/{ZOO}'
TOKEN = 'hf_TESTtoken0123456789abcdefSECRET'
RESULTS = {'dataset': 'cifar10', 'split': 'test', 'top1': 91.25, 'top5': 99.71, 'epochs': 200, 'loss': 0.31}
RECIPE = 'name: resnet20-cifar-recipe\ndata:\n  dataset: cifar10\ntrain:\n  epochs: 200\n'
SUBPROCESS_TIMEOUT = 120


def _trained_like(name: str = ZOO) -> torch.nn.Module:
    """A zoo model with non-trivial weights and BN statistics, as after training."""
    torch.manual_seed(0)
    model = timm.create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _inputs() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _hub_cache(cache: Path, folder: Path, names) -> None:
    """Lay out files of ``folder`` as the Hub cache holds REPO after a download of ``names``."""
    repo, sha = cache / f'models--aps-zoo--{ZOO}', 'a' * 40
    (repo / 'snapshots' / sha).mkdir(parents=True)
    for name in names:
        shutil.copy(folder / name, repo / 'snapshots' / sha / name)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(sha)


def _run(code: str, env: dict, *args) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``env`` on top of this one's (minus any HF_TOKEN)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN')}
    full_env.update(HF_HUB_DISABLE_PROGRESS_BARS='1', HF_HUB_DISABLE_TELEMETRY='1', **env)
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], env=full_env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, cwd=Path(__file__).resolve().parents[1])


@pytest.fixture(scope='module')
def trained():
    return _trained_like()


@pytest.fixture(scope='module')
def exported(trained, tmp_path_factory):
    recipe = tmp_path_factory.mktemp('recipe') / 'recipe.yaml'
    recipe.write_text(RECIPE)
    return hub.export(trained, tmp_path_factory.mktemp('export') / ZOO, results=RESULTS, recipe=recipe, repo_id=REPO)


@pytest.fixture(scope='module')
def run_dir(trained, tmp_path_factory):
    """A training output folder as `aps-zoo train` leaves it."""
    run = tmp_path_factory.mktemp('runs') / 'run'
    run.mkdir()
    save_file(trained.state_dict(), run / 'model.safetensors')
    trained.channel_config.save(run / 'channel_config.json')
    (run / 'results.json').write_text(json.dumps(RESULTS))
    (run / 'recipe.yaml').write_text(RECIPE)
    return run


@pytest.fixture(scope='module')
def hub_configs_dir(run_dir):
    """Two hub configs: one with trained weights (the run), one paper config without."""
    folder = run_dir.parent / 'hub_configs'
    folder.mkdir()
    metric = {k: v for k, v in RESULTS.items() if k != 'loss'}
    (folder / f'{ZOO}.yaml').write_text(yaml.safe_dump({
        'model': ZOO, 'repo_id': f'tester/{ZOO}', 'license': 'mit', 'datasets': ['cifar10'], 'metrics': [metric],
        'checkpoint': '../run', 'description': 'Trained by the hub tests.', 'tags': ['cifar']}))
    (folder / 'aps_resnet56_cifar_60m.yaml').write_text(yaml.safe_dump({
        'model': 'aps_resnet56_cifar_60m', 'repo_id': 'tester/aps_resnet56_cifar_60m', 'metrics': []}))
    return folder


# ------------------------------------------------------------------------------------------------ export

def test_export_writes_timm_config_weights_and_card(exported, trained):
    assert sorted(p.name for p in exported.iterdir()) == sorted(hub.EXPORT_FILES)
    config = json.loads((exported / 'config.json').read_text())
    assert config['architecture'] == ZOO and config['num_classes'] == 10
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert config['channel_config'] == trained.channel_config.to_dict()
    weights = load_file(exported / 'model.safetensors')
    assert weights.keys() == trained.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in trained.state_dict().items())
    assert (exported / 'widths.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (exported / 'recipe.yaml').read_text() == RECIPE

    card = ModelCard.load(exported / 'README.md')
    meta = card.data.to_dict()
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0' and meta['datasets'] == ['cifar10']
    assert set(hub.BASE_TAGS) <= set(meta['tags']) and meta['architecture'] == ZOO
    assert [(r.dataset_type, r.dataset_split, r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        ('cifar10', 'test', 'Top-1 accuracy', 91.25), ('cifar10', 'test', 'Top-5 accuracy', 99.71)]
    text = card.text
    assert '| 0 | `stem.conv` |  | 8 | 16 |' in text and '| 18 | `blocks.8.conv2` | 3 | 64 | 64 |' in text
    assert f'{count_macs(trained.channel_config) / 1e6:.2f}M' in text
    assert 'published in the APS paper' in text and 'trained 200 epochs on CIFAR-10' in text
    assert RECIPE.strip() in text and '![Per-layer widths' in text
    assert f"timm.create_model('hf-hub:{REPO}', pretrained=True)" in text
    assert '## Comparison' not in text and 'No results measured' not in text


def test_local_dir_and_load_give_the_exported_logits(exported, trained):
    x = _inputs()
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(timm.create_model(f'local-dir:{exported}', pretrained=True).eval()(x), expected)
        assert torch.equal(hub.load(exported).eval()(x), expected)
        assert torch.equal(hub.load(f'local-dir:{exported}').eval()(x), expected)


def test_card_of_an_unmeasured_paper_config_says_so(tmp_path):
    out = hub.export(timm.create_model('aps_resnet56_cifar_60m'), tmp_path / 'r56', plots=False)
    card = ModelCard.load(out / 'README.md')
    assert 'No results measured yet' in card.text and 'model-index' not in card.data.to_dict()
    assert 'widths.png' not in card.text and not (out / 'widths.png').exists()
    assert 'hf-hub:<org>/<name>' in card.text and 'Not published yet' in card.text  # no repo id given


def test_card_links_only_hub_dataset_ids():
    """A result on the embedded digits keeps its description in the results, out of ``datasets:``."""
    digits = 'scikit-learn digits (1797 8x8 images; test: 360 images carved from the train split (20%, seed 0))'
    config = models.zoo_config('aps_resnet20_cifar_20m')
    card = hub.build_card(config, 'aps_resnet20_cifar_20m', 'tester/r20',
                          results=[hub.Result(digits, 99.2, 100.0, 'test', 30)], with_plot=False)
    meta = card.data.to_dict()
    assert 'datasets' not in meta
    assert [(r.dataset_type, r.metric_value) for r in card.data.eval_results] == [(digits, 99.2), (digits, 100.0)]
    both = hub.build_card(config, 'aps_resnet20_cifar_20m', 'tester/r20', with_plot=False,
                          results=[hub.Result(digits, 99.2), hub.Result('uoft-cs/cifar10', 91.0)])
    assert both.data.to_dict()['datasets'] == ['uoft-cs/cifar10']


def test_peer_comparison_only_next_to_an_imagenet_result():
    config = models.zoo_config('aps_resnet18_1g')

    def card_text(results):
        return hub.build_card(config, 'aps_resnet18_1g', 'aps-zoo/aps_resnet18_1g', results=results).text

    with_imagenet = card_text([hub.Result('imagenet-1k', 67.5, 87.9, 'validation', 100)])
    assert '## Comparison' in with_imagenet and '| DMCP | 1.04G | 69.0 |' in with_imagenet
    assert "reported in that project's README" in with_imagenet and '| **this model** | 1.06G | 67.50 |' in with_imagenet
    for results in ([hub.Result('cifar10', 90.0)], []):
        assert 'DMCP' not in card_text(results)


def test_failed_export_leaves_the_previous_export_untouched(exported, tmp_path):
    target = tmp_path / 'export'
    shutil.copytree(exported, target)
    before = _files(target)
    broken = timm.create_model(ZOO)  # its channel config no longer describes its weights
    broken.channel_config = ChannelConfig('resnet_cifar', uniform_widths('resnet_cifar', 20), 20, 10, (3, 32, 32))
    with pytest.raises(hub.HubError, match='channel_config'):
        hub.export(broken, target)
    assert _files(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ['export']  # no temp folder left behind
    hub.export(_trained_like(), target, results={**RESULTS, 'top1': 92.5})  # a good export replaces it
    assert '| CIFAR-10 | test | 92.50 |' in (target / 'README.md').read_text()
    assert [p.name for p in tmp_path.iterdir()] == ['export']


def test_export_refuses_to_replace_a_folder_with_other_files(trained, tmp_path):
    (tmp_path / 'notes.txt').write_text('keep me')
    with pytest.raises(hub.HubError, match='notes.txt'):
        hub.export(trained, tmp_path)
    assert (tmp_path / 'notes.txt').read_text() == 'keep me'


def test_export_run_from_a_training_output_folder(run_dir, hub_configs_dir, trained, tmp_path):
    x = _inputs()
    with torch.no_grad():
        expected = trained(x)
    plain = hub.export_run(run_dir, tmp_path / 'plain')  # no repo id anywhere: named after the recipe
    config = json.loads((plain / 'config.json').read_text())
    assert config['architecture'] == 'aps_resnet_cifar'
    assert config['model_args']['widths'] == list(trained.channel_config.widths)
    card = (plain / 'README.md').read_text()
    assert '| CIFAR-10 | test | 91.25 | 99.71 | 200 |' in card and '# resnet20-cifar-recipe\n' in card
    assert 'hf-hub:<org>/<name>' in card and "['channel_config'], open('channel_config.json'" in card
    assert 'aps-zoo train recipe.yaml\n' in card
    assert 'config: channel_config.json' in (plain / 'recipe.yaml').read_text()
    with torch.no_grad():
        assert torch.equal(hub.load(plain).eval()(x), expected)

    named = hub.export_run(run_dir, tmp_path / 'named', hub_config=hub_configs_dir / f'{ZOO}.yaml')
    assert json.loads((named / 'config.json').read_text())['architecture'] == ZOO
    card = ModelCard.load(named / 'README.md')
    assert card.data.license == 'mit' and 'Trained by the hub tests.' in card.text
    assert f'hf-hub:tester/{ZOO}' in card.text and len(card.data.eval_results) == 2


def test_export_run_rejects_weights_that_do_not_fit_the_config(run_dir, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(run_dir, run)
    ChannelConfig('resnet_cifar', uniform_widths('resnet_cifar', 20), 20, 10, (3, 32, 32)).save(
        run / 'channel_config.json')
    with pytest.raises(hub.HubError, match=r"model\.safetensors: layer 'stem\.conv\.weight' has shape"):
        hub.export_run(run, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


# -------------------------------------------------------------------------------------------------- load

def test_load_names_what_is_wrong_with_a_folder(exported, tmp_path):
    def copy(name):
        return Path(shutil.copytree(exported, tmp_path / name))

    no_weights = copy('no-weights')
    (no_weights / 'model.safetensors').unlink()
    (no_weights / 'pytorch_model.bin').write_bytes(b'a pickle would be here')
    with pytest.raises(hub.HubError, match=rf'{re.escape(str(no_weights))} has no model\.safetensors.*never loaded'):
        hub.load(no_weights)

    wrong_shape = copy('wrong-shape')
    weights = load_file(wrong_shape / 'model.safetensors')
    weights['blocks.3.conv1.conv.weight'] = torch.zeros(16, 4, 3, 3)
    save_file(weights, wrong_shape / 'model.safetensors')
    with pytest.raises(hub.HubError, match=r"model\.safetensors: layer 'blocks\.3\.conv1\.conv\.weight' has shape "
                                           r"\[16, 4, 3, 3\] but the channel config in .*config\.json needs "
                                           r"\[16, 8, 3, 3\]"):
        hub.load(wrong_shape)

    missing_layer = copy('missing-layer')
    weights = load_file(missing_layer / 'model.safetensors')
    del weights['fc.bias']
    save_file(weights, missing_layer / 'model.safetensors')
    with pytest.raises(hub.HubError, match=r"no weights for layer 'fc\.bias'"):
        hub.load(missing_layer)

    truncated = copy('truncated')
    data = (truncated / 'model.safetensors').read_bytes()
    (truncated / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(hub.HubError, match='not a readable safetensors file'):
        hub.load(truncated)

    bad_config = copy('bad-config')
    config = json.loads((bad_config / 'config.json').read_text())
    config['channel_config']['widths'] = config['channel_config']['widths'][:-1]
    (bad_config / 'config.json').write_text(json.dumps(config))
    with pytest.raises(hub.HubError, match=r'config\.json: channel_config: resnet_cifar20 needs 19 widths, got 18'):
        hub.load(bad_config)


def test_hub_repo_without_weights_in_the_cache(exported, tmp_path):
    _hub_cache(tmp_path, exported, ['config.json'])
    with pytest.raises(hub.HubError, match=rf'cannot get model\.safetensors of Hub repo {REPO}: '):
        hub.load(f'hf-hub:{REPO}', cache_dir=tmp_path)


def test_hf_hub_load_from_the_local_cache_and_the_card_snippet_runs(exported, trained, tmp_path):
    """`hf-hub:` from a Hub cache under HF_HUB_CACHE with HF_HUB_OFFLINE=1, as after a download."""
    _hub_cache(tmp_path / 'hub-cache', exported, hub.EXPORT_FILES)
    x = _inputs()
    save_file({'x': x}, tmp_path / 'x.safetensors')
    snippet = re.search(r'```python\n(.*?)```', (exported / 'README.md').read_text(), re.S).group(1)
    code = snippet + f"""
import sys
import aps_zoo.hub
from safetensors.torch import load_file, save_file
x = load_file(sys.argv[1])['x']
via_timm = timm.create_model('hf-hub:{REPO}', pretrained=True).eval()
via_load = aps_zoo.hub.load('{REPO}').eval()
with torch.no_grad():
    save_file({{'timm': via_timm(x), 'load': via_load(x)}}, sys.argv[2])
"""
    done = _run(code, {'HF_HUB_CACHE': str(tmp_path / 'hub-cache'), 'HF_HUB_OFFLINE': '1',
                       'HF_HOME': str(tmp_path / 'hf-home')}, tmp_path / 'x.safetensors', tmp_path / 'out.safetensors')
    assert done.returncode == 0, done.stderr
    assert 'topk' in done.stdout  # the snippet printed its top-5
    out = load_file(tmp_path / 'out.safetensors')
    with torch.no_grad():
        expected = trained(x)
    assert torch.equal(out['timm'], expected) and torch.equal(out['load'], expected)


# -------------------------------------------------------------------------------------------------- push

PUSH_SCRIPT = f"""
import json, logging, sys
from aps_zoo import hub
logging.basicConfig(level=logging.INFO)
out = {{'push': hub.push(sys.argv[1], '{REPO}', private=True, revision='v1',
                         commit_message='First release of the weights')}}
out['push_all'] = hub.push_all(sys.argv[2])
try:
    hub.push(sys.argv[3], 'tester/{ZOO}', private=True)
except hub.HubError as e:
    out['private_refused'] = str(e)
print(json.dumps(out))
"""


def test_push_and_push_all_to_a_local_hub(exported, run_dir, hub_configs_dir, trained, tmp_path):
    home = tmp_path / 'hf-home'
    home.mkdir()
    (home / 'token').write_text(TOKEN)  # what `hf auth login` saves
    for_public_repo = hub.export(trained, tmp_path / 'again', repo_id=f'tester/{ZOO}', plots=False)
    with FakeHub(TOKEN, lifetime=SUBPROCESS_TIMEOUT) as server:
        done = _run(PUSH_SCRIPT, {'HF_ENDPOINT': server.url, 'HF_HOME': str(home), 'HF_HUB_OFFLINE': '0',
                                  'HF_HUB_DISABLE_XET': '1'}, exported, hub_configs_dir, for_public_repo)
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr and 'INFO:aps_zoo.hub:pushed' in done.stderr  # logs included
        out = json.loads(done.stdout.splitlines()[-1])

        repo = server.repos[REPO]
        assert repo.private
        assert server.files(REPO, 'v1') == _files(exported)  # byte for byte
        assert server.files(REPO, 'main') == {}
        assert [(c.revision, c.summary) for c in repo.commits] == [('v1', 'First release of the weights')]
        assert out['push'] == f'{server.url}/{REPO}/commit/{repo.commits[-1].oid}'
        weights = (exported / 'model.safetensors').read_bytes()
        assert hashlib.sha256(weights).hexdigest() in server.lfs  # went through the LFS transfer

        assert [(r['name'], r['status']) for r in out['push_all']] == [
            (ZOO, 'pushed'), ('aps_resnet56_cifar_60m', 'skipped')]
        assert 'no trained weights' in out['push_all'][1]['detail']
        published = server.repos[f'tester/{ZOO}']
        assert not published.private and published.commits[0].summary == f'Upload {ZOO} with aps-zoo'
        files = server.files(f'tester/{ZOO}')
        assert sorted(files) == sorted(hub.EXPORT_FILES)
        assert all(torch.equal(load(files['model.safetensors'])[k], v) for k, v in trained.state_dict().items())
        assert '91.25' in files['README.md'].decode() and TOKEN not in files['README.md'].decode()
        assert 'tester/aps_resnet56_cifar_60m' not in server.repos
        assert 'already exists and is public' in out['private_refused']


FAIL_SCRIPT = f"""
import json, logging, os, sys
from aps_zoo import hub
logging.basicConfig(level=logging.INFO)
out = {{}}
for case in ('with_env_token', 'no_token'):
    try:
        hub.push(sys.argv[1], '{REPO}')
    except hub.HubError as e:
        out[case] = str(e)
    os.environ.pop('HF_TOKEN', None)
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_push_failures_are_one_clear_line_without_the_token(exported, tmp_path):
    before = _files(exported)
    wrong = 'hf_WRONGtoken9876543210zyxwvSECRET'
    with FakeHub(TOKEN, lifetime=SUBPROCESS_TIMEOUT) as server:
        rejected = _run(FAIL_SCRIPT, {'HF_ENDPOINT': server.url, 'HF_TOKEN': wrong, 'HF_HOME': str(tmp_path / 'a'),
                                      'HF_HUB_OFFLINE': '0', 'HF_HUB_DISABLE_XET': '1'}, exported)
        assert server.repos == {}
    unreachable = _run(FAIL_SCRIPT, {'HF_ENDPOINT': f'http://127.0.0.1:{_free_port()}', 'HF_TOKEN': TOKEN,
                                     'HF_HOME': str(tmp_path / 'b'), 'HF_HUB_OFFLINE': '0'}, exported)
    for done, token in ((rejected, wrong), (unreachable, TOKEN)):
        assert done.returncode == 0, done.stderr
        assert token not in done.stdout + done.stderr
    rejected, unreachable = (json.loads(d.stdout.splitlines()[-1]) for d in (rejected, unreachable))
    assert 'HTTP 401' in rejected['with_env_token'] and 'hf auth login' in rejected['with_env_token']
    assert 'refused' in unreachable['with_env_token'].lower()
    for message in (rejected['with_env_token'], unreachable['with_env_token']):
        assert '\n' not in message and message.endswith(f'{exported} is unchanged')
    for outcome in (rejected, unreachable):
        assert outcome['no_token'] == 'no Hugging Face token: log in with `hf auth login` or set HF_TOKEN'
    assert _files(exported) == before


def test_push_refuses_before_touching_the_network(exported, tmp_path):
    with pytest.raises(hub.HubError, match='offline') as offline:  # tests run with HF_HUB_OFFLINE=1
        hub.push(exported, REPO, token=TOKEN)
    assert TOKEN not in str(offline.value) and '\n' not in str(offline.value)
    with pytest.raises(hub.HubError, match=rf"written for hf-hub:{REPO}.*re-export with repo_id='someone/else'"):
        hub.push(exported, 'someone/else', token=TOKEN)
    with pytest.raises(hub.HubError, match="must be '<org or user>/<name>'"):
        hub.push(exported, ZOO, token=TOKEN)
    leaky = Path(shutil.copytree(exported, tmp_path / 'leaky'))
    (leaky / 'recipe.yaml').write_text(RECIPE + f'# token: {TOKEN}\n')
    with pytest.raises(hub.HubError, match=r'recipe\.yaml contains your Hub token') as refused:
        hub.push(leaky, REPO, token=TOKEN)
    assert TOKEN not in str(refused.value)
    broken = Path(shutil.copytree(exported, tmp_path / 'broken'))
    card = (broken / 'README.md').read_text()
    (broken / 'README.md').write_text(card.replace('license:', 'license: [apache', 1))
    with pytest.raises(hub.HubError, match=r"README\.md: the YAML metadata block of the card is not valid") as bad:
        hub.push(broken, REPO, token=TOKEN)  # before the Hub call that would fail offline
    assert '\n' not in str(bad.value)
    body = card.split('---\n', 2)[2]
    (broken / 'README.md').write_text('---\n- a list, not a mapping\n---\n' + body)
    with pytest.raises(hub.HubError, match=r"README\.md: the YAML metadata block .* should be a dict"):
        hub.push(broken, REPO, token=TOKEN)


# ------------------------------------------------------------------------------------------ hub configs

def test_hub_configs_cover_the_zoo():
    configs = [hub.load_hub_config(p) for p in sorted(hub.DEFAULT_HUB_CONFIGS.glob('*.yaml'))]
    assert sorted(c.model for c in configs) == models.zoo_names()
    for c in configs:
        assert c.repo_id == f'aps-zoo/{c.model}'
        cfg = timm.models.get_pretrained_cfg(c.model)
        if cfg.file:  # weights shipped in the package: measured, and on the Hub under the config's repo id
            assert cfg.hf_hub_id == c.repo_id and len(c.metrics) == 1
        else:  # no weights published: none to look up, nothing trained or measured yet
            assert cfg.hf_hub_id is None and c.metrics == [] and c.checkpoint is None
    assert sum(bool(timm.models.get_pretrained_cfg(c.model).file) for c in configs) == 1


def test_results_merge_at_the_cards_precision():
    """A results.json float32 figure and a hub config's rounded one are one result; 0.01 points apart is two."""
    from aps_zoo.hub.results import Result, merge_results
    measured = Result('fashion-mnist', 92.61000061035156, 99.9200008392334, 'test')
    stated = Result('fashion-mnist', 92.61, None, 'test', 10)
    assert merge_results([stated], [measured]) == [Result('fashion-mnist', 92.61, 99.9200008392334, 'test', 10)]
    with pytest.raises(hub.HubError, match='two different results for fashion-mnist'):
        merge_results([Result('fashion-mnist', 92.62, split='test')], [measured])


def test_load_hub_config_names_the_bad_key(tmp_path):
    def check(data, pattern):
        path = tmp_path / 'x.yaml'
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(hub.HubConfigError, match=pattern):
            hub.load_hub_config(path)

    good = {'model': ZOO, 'repo_id': REPO}
    check({**good, 'licence': 'mit'}, r"x\.yaml: unknown key 'licence'; allowed: model, repo_id, license, datasets")
    check({**good, 'model': 'resnet50'}, r"'model' 'resnet50' is not a registered zoo model; allowed: .*aps_resnet18_1g")
    check({**good, 'metrics': [{'dataset': 'cifar10', 'top1': 0.9, 'top-1': 90}]},
          r"metrics\[0\]: unknown key 'top-1'")
    check({**good, 'metrics': [{'dataset': 'cifar10', 'top1': 190}]}, r"metrics\[0\]: 'top1' must be an accuracy")
    check({**good, 'repo_id': 'not a repo'}, r"'repo_id'")
    check({**good, 'datasets': 'cifar10'}, r"'datasets' must be a list of strings")


def test_zoo_table_rows(hub_configs_dir):
    rows = hub.zoo_table()
    assert [r['name'] for r in rows] == models.zoo_names()
    for r in rows:
        config = models.zoo_config(r['name'])
        searched = f"searched ({config.provenance['dataset']})"
        assert r['provenance'] == ('APS paper' if config.provenance['source'] == 'paper' else searched)
        assert r['macs'] == count_macs(config)
        assert r['top1'] == (92.61 if r['name'] == 'aps_resnet20_fashion_mnist' else None)  # its hub config's
    measured = {r['name']: r for r in hub.zoo_table(hub_configs_dir)}
    assert measured[ZOO]['top1'] == 91.25 and measured[ZOO]['family'] == 'CIFAR ResNet-20'
    assert measured['aps_resnet56_cifar_60m']['top1'] is None
