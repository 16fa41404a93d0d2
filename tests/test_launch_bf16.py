"""`accelerate launch --mixed_precision bf16` with one CPU process: bf16 autocast runs the whole search, and the
launcher's mixed precision decides the retraining's unless the recipe sets its own.

The three commands share one launch (tests/cli_sequence.py, Accelerate's state reset before each): starting the
launcher and the launched interpreter costs more than these runs."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aps_zoo.channels import ChannelConfig
from aps_zoo.flops import count_macs
from aps_zoo.recipe import load_recipe
from test_search import BUDGET, tiny
from test_train import _recipe as train_recipe

SCRIPT = str(Path(__file__).with_name('cli_sequence.py'))
TRAIN_RUNS = (('launched', {}), ('explicit', {'mixed_precision': 'no'}))


@pytest.fixture(scope='module')
def bf16_launch(tmp_path_factory):
    """(folder of the runs, exit code per command, the launch's stderr): the tiny search, then the retraining
    with train.mixed_precision unset ('launched') and set to 'no' ('explicit')."""
    root = tmp_path_factory.mktemp('bf16')
    (root / 'r.yaml').write_text(yaml.safe_dump(tiny(root)))
    jobs = [['search', str(root / 'r.yaml'), '--cpu']]
    for name, train_keys in TRAIN_RUNS:
        path = root / f'{name}.yaml'
        path.write_text(yaml.safe_dump(train_recipe(root, name, epochs=1, steps_per_epoch=2, **train_keys).to_dict()))
        jobs.append(['train', str(path), '--cpu'])
    (root / 'jobs.json').write_text(json.dumps(jobs))
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_processes', '1', '--num_machines', '1',
           '--mixed_precision', 'bf16', '--dynamo_backend', 'no', SCRIPT, str(root / 'jobs.json')]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads((root / 'EXIT_CODES.json').read_text()), proc.stderr


def test_search_under_bf16_mixed_precision(bf16_launch):
    """`accelerate launch --mixed_precision bf16` (bf16 autocast, here on CPU) runs the whole search."""
    tmp_path, codes, stderr = bf16_launch
    assert codes[0] == 0, stderr[-3000:]
    out = tmp_path / 'tiny' / 'search'
    assert '- processes: 1 x cpu, mixed precision bf16' in (out / 'search_report.md').read_text()
    records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(records) == 4 and all(math.isfinite(r['train_loss']) for r in records)
    assert count_macs(ChannelConfig.load(out / 'channel_config.json')) <= BUDGET * 1.02


@pytest.mark.slow
def test_mixed_precision_from_the_launcher_unless_the_recipe_sets_it(bf16_launch):
    """`accelerate launch --mixed_precision bf16` decides when the recipe leaves train.mixed_precision unset;
    a recipe that sets it wins."""
    tmp_path, codes, stderr = bf16_launch
    assert codes[1:] == [0, 0], stderr[-3000:]
    results = {name: json.loads((tmp_path / name / 'train' / 'results.json').read_text()) for name, _ in TRAIN_RUNS}
    assert results['launched']['mixed_precision'] == 'bf16' and results['explicit']['mixed_precision'] == 'no'
    assert load_recipe(tmp_path / 'launched' / 'train' / 'recipe.yaml').train.mixed_precision is None
