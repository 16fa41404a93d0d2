"""The search and the retraining on a stream (data.streaming: true): a held-out split carved from the stream's
head (data.val_size), epochs of search.steps_per_epoch / train.steps_per_epoch steps, errors naming the keys."""
import json

import pytest

from aps_zoo.data import DataError, digits_dataset
from aps_zoo.recipe import recipe_from_dict
from aps_zoo.search.loop import search
from aps_zoo.train import train


@pytest.fixture(scope='module')
def digits_parquet(tmp_path_factory):
    """scikit-learn digits as a parquet folder with a train and a test split (a stream's source)."""
    root = tmp_path_factory.mktemp('digits_parquet')
    parts = digits_dataset()['train'].train_test_split(test_size=0.2, seed=0)
    parts['train'].to_parquet(str(root / 'train.parquet'))
    parts['test'].to_parquet(str(root / 'test.parquet'))
    return root


def _recipe(tmp_path, root, data=None, search=None, train_keys=None):
    return recipe_from_dict({
        'name': 'stream', 'seed': 0, 'output_dir': str(tmp_path),
        'data': {'dataset': str(root), 'streaming': True, 'image_size': 8, 'batch_size': 32, 'eval_batch_size': 64,
                 'augment': False, 'val_size': 128, **(data or {})},
        'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8, 16]},
        'search': {'budget_macs': 2.0e5, 'epochs': 2, 'warmup_epochs': 1, 'steps_per_epoch': 3, 'decode_candidates': 8,
                   'decode_top_k': 2, 'band_samples': 4, 'controller': {'steps_per_epoch': 2}, **(search or {})},
        'train': {'config': 'aps_resnet20_cifar_20m', 'epochs': 1, **(train_keys or {})},
    })


def test_search_on_a_stream_carves_val_from_its_head(tmp_path, digits_parquet):
    result = search(_recipe(tmp_path, digits_parquet), cpu=True)
    records = [json.loads(line) for line in (result.out_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [0, 1]
    assert 0 <= result.val_accuracy <= 1 and result.config_path.is_file()
    assert 'val 128' in (result.out_dir / 'search_report.md').read_text()


def test_stream_errors_name_the_keys_to_set(tmp_path, digits_parquet):
    recipe = _recipe(tmp_path, digits_parquet, search={'steps_per_epoch': None})
    with pytest.raises(DataError, match='a stream has no length.*set search.steps_per_epoch'):
        search(recipe, cpu=True)
    with pytest.raises(DataError, match='set data.val_size'):
        search(_recipe(tmp_path, digits_parquet, data={'val_size': None}), cpu=True)


def test_retrain_on_a_stream_runs_its_steps_per_epoch(tmp_path, digits_parquet):
    result = train(_recipe(tmp_path, digits_parquet, train_keys={'steps_per_epoch': 4, 'select_best': False}),
                   cpu=True)
    records = [json.loads(line) for line in (result.out_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records] == [4]
    assert 0 <= records[0]['eval_top1'] <= 1 and result.results['epochs'] == 1
