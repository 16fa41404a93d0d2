"""Two gloo ranks on CPU (docs/design.md#two-cpu-ranks): retraining and its resume keep the ranks' weights identical while they
read different images; the projections stay out of DDP's buckets under projection_grad: penalty; the search,
and the inherited search, train the same architectures on both ranks.

The runs share one launch (the ``launched`` fixture; the resume is a second launch): starting two ranks costs
more than each of these runs."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aps_zoo.channels import ChannelConfig
from aps_zoo.data import build_loaders, digits_dataset
from aps_zoo.flops import count_macs
from aps_zoo.models import create_model_from_config
from aps_zoo.recipe import load_recipe, recipe_from_dict
from aps_zoo.runs import list_checkpoints
from conftest import launch_command
from test_inherit import _recipe as inherit_recipe, train_parent
from test_search import BUDGET, tiny

SCRIPT = str(Path(__file__).with_name('two_ranks.py'))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def _launch(*args, timeout=300):
    proc = subprocess.run([*launch_command(2), SCRIPT, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)
    return proc


def _ranks(out: Path, error=None):
    ranks = [json.loads((out / f'rank{i}.json').read_text()) for i in (0, 1)]
    assert [r.get('error') for r in ranks] == [error, error]
    return ranks


def _recipe(tmp_path, name, **data):
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(recipe_from_dict({
        'name': name, 'seed': 0, 'output_dir': str(tmp_path),
        'data': {'dataset': 'digits', 'image_size': 8, 'batch_size': 32, 'crop_pct': 1.0, 'crop_scale': [0.6, 1.0],
                 'max_train_samples': 512, **data},
        'train': {'config': 'aps_resnet20_cifar_20m', 'epochs': 2, 'lr': 0.1, 'steps_per_epoch': 4},
    }).to_dict()))
    return path


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
    """The runs of every test here in one two-rank launch (two_ranks.py batch), one after the other: the
    retrainings, the DDP buckets, `aps-zoo search` of the tiny recipe and of the inherited one. A launch
    costs more than these tiny runs (three interpreters, the imports, gloo), and the ranks start each run
    afresh (train and search seed every process, build their own loaders, network and accelerator). The
    uninterrupted run and the killed run of the resume test are in it; the resume is a launch of its own (a
    new process resuming from the killed run's checkpoint)."""
    tmp_path = tmp_path_factory.mktemp('ranks')
    parts = digits_dataset()['train'].train_test_split(test_size=0.2, seed=0)
    (tmp_path / 'pq').mkdir()
    for split, ds in parts.items():
        ds.to_parquet(str(tmp_path / 'pq' / f'{split}.parquet'))
    nan = yaml.safe_load(_recipe(tmp_path, 'nan').read_text())
    nan['train']['on_nonfinite_loss'] = 'skip'
    (tmp_path / 'nan.yaml').write_text(yaml.safe_dump(nan))
    (tmp_path / 'search.yaml').write_text(yaml.safe_dump(tiny(tmp_path / 'search')))
    _, parent = train_parent(tmp_path / 'parent.safetensors')
    (tmp_path / 'inherit.yaml').write_text(yaml.safe_dump(inherit_recipe(tmp_path / 'inherit', str(parent))))
    jobs = [
        ['train', _recipe(tmp_path, 'workers', num_workers=1, eval_batch_size=64), tmp_path / 'workers_seen'],
        ['train', _recipe(tmp_path, 'stream', dataset=str(tmp_path / 'pq'), streaming=True, max_train_samples=None,
                          val_size=128, augment=False), tmp_path / 'stream_seen'],
        ['train', _recipe(tmp_path, 'full'), tmp_path / 'full_seen'],
        ['train', _recipe(tmp_path, 'cut'), tmp_path / 'cut_seen', '--kill-after-epoch', 0],
        ['train', tmp_path / 'nan.yaml', tmp_path / 'nan_seen', '--nan-on-rank1-step', 6],
        ['buckets', tmp_path / 'buckets'],
        ['cli', 'search', tmp_path / 'search.yaml', '--cpu'],
        ['cli', 'search', tmp_path / 'inherit.yaml', '--cpu'],
    ]
    (tmp_path / 'jobs.json').write_text(json.dumps([list(map(str, job)) for job in jobs]))
    proc = _launch('batch', tmp_path / 'jobs.json', timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path


@pytest.mark.slow
def test_two_rank_retrain_with_workers_identical_weights_different_images(launched):
    """Each rank trains on its own shard (no image read twice in an epoch) through a DataLoader worker, with its
    own random seed (so its own augmentations), and DDP keeps the weights identical."""
    root, path = launched, launched / 'workers.yaml'
    r0, r1 = _ranks(root / 'workers_seen')
    assert r0['weights'] == r1['weights']
    assert r0['seed'] != r1['seed']
    for epoch in ('0', '1'):
        assert len(r0['images'][epoch]) == len(r1['images'][epoch]) == 4 * 32  # per-process batch 32
        assert not set(r0['images'][epoch]) & set(r1['images'][epoch])
    # the two ranks' test accuracy counts each of the 360 test images once (6 batches of 64, the last one
    # padded by Accelerate and cut again by gather_for_metrics): the count of one process over the split
    out = root / 'workers' / 'train'
    results = json.loads((out / 'results.json').read_text())
    model = create_model_from_config(ChannelConfig.load(out / 'channel_config.json')).eval()
    model.load_state_dict(load_file(str(out / 'model.safetensors')))
    recipe = load_recipe(path)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item()
                      for x, y in build_loaders(recipe.data, recipe.seed, holdout=True).test)
    assert results['num_processes'] == 2 and 100 * correct / 360 == pytest.approx(results['top1'], abs=1e-6)


@pytest.mark.slow
def test_two_rank_retrain_on_a_stream_each_rank_decodes_its_own_part(launched):
    """A training stream is split by rank (datasets' split_dataset_by_node), not dispatched from rank 0: the
    ranks train on different images, and the weights stay identical."""
    assert load_recipe(launched / 'stream.yaml').data.streaming
    r0, r1 = _ranks(launched / 'stream_seen')
    assert r0['weights'] == r1['weights']
    assert len(r0['images']['0']) == len(r1['images']['0']) == 4 * 32
    assert not set(r0['images']['0']) & set(r1['images']['0'])


@pytest.mark.slow
def test_two_rank_resume_matches_the_uninterrupted_run(launched):
    """Killed after the checkpoint of epoch 0 and resumed with --resume: both ranks end with the weights of the
    uninterrupted two-rank run, and epoch 1 reads the same images on each rank as it did there."""
    root = launched
    _ranks(root / 'cut_seen', error='killed after the checkpoint of epoch 0')
    assert [e for e, _ in list_checkpoints(root / 'cut' / 'train')] == [0]
    resumed = _launch('train', root / 'cut.yaml', root / 'resumed_seen', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full_ranks, resumed_ranks = _ranks(root / 'full_seen'), _ranks(root / 'resumed_seen')
    assert resumed_ranks[0]['weights'] == resumed_ranks[1]['weights'] == full_ranks[0]['weights']
    for f, r in zip(full_ranks, resumed_ranks):
        assert r['images']['1'] == f['images']['1']
    a, b = (load_file(str(root / name / 'train' / 'model.safetensors')) for name in ('full', 'cut'))
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_is_skipped_by_both(launched):
    """on_nonfinite_loss: skip with a NaN loss on rank 1 only: the ranks agree (an all-reduce of the flag), both
    skip the backward, so no collective waits for the other; the run ends with identical weights."""
    root = launched
    assert load_recipe(root / 'nan.yaml').train.on_nonfinite_loss == 'skip'
    r0, r1 = _ranks(root / 'nan_seen')
    assert r0['weights'] == r1['weights']
    records = [json.loads(line) for line in (root / 'nan' / 'train' / 'metrics.jsonl').open()]
    assert [r['skipped_steps'] for r in records] == [0, 1]


@pytest.mark.slow
def test_detached_projections_stay_out_of_ddp_buckets(launched):
    """DDP buckets every parameter by default; with keep_projections_out_of_ddp exactly the meta weights (the
    bytes counted independently from the supernet). The projections, updated by the penalty alone, stay
    identical on both ranks although each rank trains on other data."""
    r0, r1 = _ranks(launched / 'buckets')
    assert r0['ddp_bytes_all'] == r0['meta_bytes'] + r0['projection_bytes']
    assert r0['ddp_bytes_ignored'] == r0['meta_bytes'] and r0['projection_bytes'] > 0
    assert r0['projections_ignored'] == r1['projections_ignored']
    assert r0['meta_ignored'] == r1['meta_ignored']


@pytest.mark.slow
def test_two_cpu_ranks_train_the_same_architectures(launched):
    """docs/design.md#two-cpu-ranks: two gloo ranks on CPU via --multi_gpu with Accelerator(cpu=True) (the --cpu flag):
    `aps-zoo search` of tests/test_search.py's tiny recipe."""
    tmp_path = launched / 'search'
    out = tmp_path / 'tiny' / 'search'
    records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert len(r['arch_digests']) == 2 and r['arch_digests'][0] == r['arch_digests'][1], r['arch_digests']
        assert r['greedy_digests'][0] == r['greedy_digests'][1]  # the main process's pick, broadcast
    # each held-out image counted once across ranks: accuracies are multiples of 1 / 288 (the held-out images);
    # counting the duplicates that pad them to one batch of 256 per rank would make them multiples of 1 / 512
    held_out = build_loaders(recipe_from_dict(tiny(tmp_path)).data, seed=3, holdout=True).sizes['val']
    assert held_out == 288
    for acc in [r['val_acc'] for r in records]:
        assert abs(acc * held_out - round(acc * held_out)) < 1e-6, (acc, held_out)
    assert sorted(p.name for p in out.glob('*.json')) == ['channel_config.json']
    assert 0.9 * BUDGET <= count_macs(ChannelConfig.load(out / 'channel_config.json')) <= BUDGET
    assert 'repaired: 0 of 3 re-scored candidates' in (out / 'search_report.md').read_text()


@pytest.mark.slow
def test_inherited_search_under_two_cpu_ranks(launched):
    """`accelerate launch` with two gloo ranks (docs/design.md#two-cpu-ranks): both ranks load the parent and train the same
    architectures; the main process writes the inherited child (tests/test_inherit.py's recipe and parent)."""
    path = launched / 'parent.safetensors'
    out = launched / 'inherit' / 'slim' / 'search'
    for record in (json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()):
        assert len(record['arch_digests']) == 2 and len(set(record['arch_digests'])) == 1
    config = ChannelConfig.load(out / 'inherited' / 'channel_config.json')
    assert config.widths == ChannelConfig.load(out / 'channel_config.json').widths
    assert config.provenance['parent'] == str(path)
