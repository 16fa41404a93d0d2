"""Two gloo ranks on CPU (docs/design.md#two-cpu-ranks): retraining and its resume keep the ranks' weights identical while they
read different images; the projections stay out of DDP's buckets under projection_grad: penalty."""
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
from aps_zoo.models import create_model_from_config
from aps_zoo.recipe import load_recipe, recipe_from_dict
from conftest import launch_command

SCRIPT = str(Path(__file__).with_name('two_ranks.py'))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def _launch(*args):
    proc = subprocess.run([*launch_command(2), SCRIPT, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    return proc


def _ranks(out: Path):
    return [json.loads((out / f'rank{i}.json').read_text()) for i in (0, 1)]


def _recipe(tmp_path, name, **data):
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(recipe_from_dict({
        'name': name, 'seed': 0, 'output_dir': str(tmp_path),
        'data': {'dataset': 'digits', 'image_size': 8, 'batch_size': 32, 'crop_pct': 1.0, 'crop_scale': [0.6, 1.0],
                 'max_train_samples': 512, **data},
        'train': {'config': 'aps_resnet20_cifar_20m', 'epochs': 2, 'lr': 0.1, 'steps_per_epoch': 4},
    }).to_dict()))
    return path


@pytest.mark.slow
def test_two_rank_retrain_with_workers_identical_weights_different_images(tmp_path):
    """Each rank trains on its own shard (no image read twice in an epoch) through a DataLoader worker, with its
    own random seed (so its own augmentations), and DDP keeps the weights identical."""
    path = _recipe(tmp_path, 'workers', num_workers=1, eval_batch_size=64)
    proc = _launch('train', path, tmp_path / 'seen')
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _ranks(tmp_path / 'seen')
    assert r0['weights'] == r1['weights']
    assert r0['seed'] != r1['seed']
    for epoch in ('0', '1'):
        assert len(r0['images'][epoch]) == len(r1['images'][epoch]) == 4 * 32  # per-process batch 32
        assert not set(r0['images'][epoch]) & set(r1['images'][epoch])
    # the two ranks' test accuracy counts each of the 360 test images once (6 batches of 64, the last one
    # padded by Accelerate and cut again by gather_for_metrics): the count of one process over the split
    out = tmp_path / 'workers' / 'train'
    results = json.loads((out / 'results.json').read_text())
    model = create_model_from_config(ChannelConfig.load(out / 'channel_config.json')).eval()
    model.load_state_dict(load_file(str(out / 'model.safetensors')))
    recipe = load_recipe(path)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item()
                      for x, y in build_loaders(recipe.data, recipe.seed, holdout=True).test)
    assert results['num_processes'] == 2 and 100 * correct / 360 == pytest.approx(results['top1'], abs=1e-6)


@pytest.mark.slow
def test_two_rank_retrain_on_a_stream_each_rank_decodes_its_own_part(tmp_path):
    """A training stream is split by rank (datasets' split_dataset_by_node), not dispatched from rank 0: the
    ranks train on different images, and the weights stay identical."""
    parts = digits_dataset()['train'].train_test_split(test_size=0.2, seed=0)
    (tmp_path / 'pq').mkdir()
    for split, ds in parts.items():
        ds.to_parquet(str(tmp_path / 'pq' / f'{split}.parquet'))
    path = _recipe(tmp_path, 'stream', dataset=str(tmp_path / 'pq'), streaming=True, max_train_samples=None,
                   val_size=128, augment=False)
    proc = _launch('train', path, tmp_path / 'seen')
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _ranks(tmp_path / 'seen')
    assert r0['weights'] == r1['weights']
    assert len(r0['images']['0']) == len(r1['images']['0']) == 4 * 32
    assert not set(r0['images']['0']) & set(r1['images']['0'])


@pytest.mark.slow
def test_two_rank_resume_matches_the_uninterrupted_run(tmp_path):
    """Killed after the checkpoint of epoch 0 and resumed with --resume: both ranks end with the weights of the
    uninterrupted two-rank run, and epoch 1 reads the same images on each rank as it did there."""
    full = _launch('train', _recipe(tmp_path, 'full'), tmp_path / 'full_seen')
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _launch('train', _recipe(tmp_path, 'cut'), tmp_path / 'cut_seen', '--kill-after-epoch', 0)
    assert killed.returncode != 0 and 'killed after the checkpoint of epoch 0' in killed.stderr
    resumed = _launch('train', _recipe(tmp_path, 'cut'), tmp_path / 'resumed_seen', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full_ranks, resumed_ranks = _ranks(tmp_path / 'full_seen'), _ranks(tmp_path / 'resumed_seen')
    assert resumed_ranks[0]['weights'] == resumed_ranks[1]['weights'] == full_ranks[0]['weights']
    for f, r in zip(full_ranks, resumed_ranks):
        assert r['images']['1'] == f['images']['1']
    a, b = (load_file(str(tmp_path / name / 'train' / 'model.safetensors')) for name in ('full', 'cut'))
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_is_skipped_by_both(tmp_path):
    """on_nonfinite_loss: skip with a NaN loss on rank 1 only: the ranks agree (an all-reduce of the flag), both
    skip the backward, so no collective waits for the other; the run ends with identical weights."""
    path = _recipe(tmp_path, 'nan')
    recipe = yaml.safe_load(path.read_text())
    recipe['train']['on_nonfinite_loss'] = 'skip'
    path.write_text(yaml.safe_dump(recipe))
    proc = _launch('train', path, tmp_path / 'seen', '--nan-on-rank1-step', 6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _ranks(tmp_path / 'seen')
    assert r0['weights'] == r1['weights']
    records = [json.loads(line) for line in (tmp_path / 'nan' / 'train' / 'metrics.jsonl').open()]
    assert [r['skipped_steps'] for r in records] == [0, 1]


@pytest.mark.slow
def test_detached_projections_stay_out_of_ddp_buckets(tmp_path):
    """DDP buckets every parameter by default; with keep_projections_out_of_ddp exactly the meta weights (the
    bytes counted independently from the supernet). The projections, updated by the penalty alone, stay
    identical on both ranks although each rank trains on other data."""
    proc = _launch('buckets', tmp_path / 'buckets')
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _ranks(tmp_path / 'buckets')
    assert r0['ddp_bytes_all'] == r0['meta_bytes'] + r0['projection_bytes']
    assert r0['ddp_bytes_ignored'] == r0['meta_bytes'] and r0['projection_bytes'] > 0
    assert r0['projections_ignored'] == r1['projections_ignored']
    assert r0['meta_ignored'] == r1['meta_ignored']
