"""End-to-end APS search on digits: outputs, budget, resume, bad input. Under two CPU ranks and under bf16 from
the launcher: tests/test_distributed.py and tests/test_launch_bf16.py (one launch each runs their runs)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from aps_zoo.channels import ChannelConfig
from aps_zoo.flops import count_macs
from aps_zoo.recipe import RecipeError, recipe_from_dict
from aps_zoo.runs import CheckpointError, NonFiniteLossError, list_checkpoints, load_plain_state
from aps_zoo.search.loop import search
from aps_zoo.spaces import SearchSpaceError

BUDGET = 2.0e5  # the space spans 31k-420k MACs: the band [0.9, 1] x budget binds


def tiny(tmp_path, **search_overrides):
    data = {
        'name': 'tiny', 'seed': 3, 'output_dir': str(tmp_path),
        'data': {'dataset': 'digits', 'image_size': 8, 'val_fraction': 0.2, 'batch_size': 64, 'augment': False},
        'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8, 16]},
        'search': {'budget_macs': BUDGET, 'epochs': 4, 'warmup_epochs': 1, 'steps_per_epoch': 4,
                   'decode_candidates': 12, 'decode_top_k': 3, 'band_samples': 4,
                   'controller': {'steps_per_epoch': 3, 'samples_per_update': 4}, **search_overrides},
    }
    return data


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """The tiny search with its defaults, run once (on one intra-op thread, as the kill-and-resume test needs):
    (its result, the output_dir holding tiny/search). Tests that change the run folder work on a copy."""
    root = tmp_path_factory.mktemp('tiny_run')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return search(recipe_from_dict(tiny(root)), cpu=True), root
    finally:
        torch.set_num_threads(threads)


def _copy_run(tiny_run, tmp_path):
    """A copy of the tiny search's output folder at ``tmp_path`` (as if ``search(tiny(tmp_path))`` had run)."""
    shutil.copytree(tiny_run[1] / 'tiny', tmp_path / 'tiny')
    return tmp_path / 'tiny' / 'search'


def test_search_writes_config_report_and_plots(tiny_run):
    result, root = tiny_run
    out = root / 'tiny' / 'search'
    config = ChannelConfig.load(out / 'channel_config.json')
    assert config == result.config
    assert config.provenance['source'] == 'search' and 'digits' in config.provenance['dataset']
    assert 0.9 * BUDGET <= count_macs(config) <= BUDGET  # the masked policy decodes inside the band
    assert all(w in (4, 8, 16) for w in config.widths)
    assert [r['repaired'] for r in result.decoded] == [False] * 3
    assert all(0.9 * BUDGET <= r['macs'] <= BUDGET for r in result.decoded)
    report = (out / 'search_report.md').read_text()
    assert 'repaired: 0 of 3 re-scored candidates' in report
    # decoding: N = 12 proposals scored by the supernet, the best 3 re-scored; the report names the rank
    assert result.candidates == 12 and sorted(r['rank'] for r in result.decoded) == [1, 2, 3]
    assert "N = 12 candidates" in report and f"ranked {result.decoded[0]['rank']} of 12" in report
    assert result.uniform['score'] >= 0 and f"held-out accuracy {result.uniform['val_acc']:.4f}" in report
    records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [0, 1, 2, 3]
    assert records[0]['phase'] == 'warmup' and 'reward' not in records[0]
    assert all(0.9 * BUDGET <= r['greedy_macs'] <= BUDGET for r in records)
    assert all('reward' in r and 0 <= r['sharing_mean'] <= 1.0001 for r in records[1:])
    # the policy's samples against band samples on the same supernet, and the policy's entropy
    assert all(0 <= r['band_reward'] <= 1 and r['entropy'] > 0 for r in records[1:])
    for name in ('search_curves.png', 'widths.png', 'sharing_layers.png', 'search_report.md', 'recipe.yaml'):
        assert (out / name).stat().st_size > 0, name
    assert 0 <= result.test_accuracy <= 1


STRATEGIES = {'reinforce': {}, 'random': {'strategy': 'random'},
              'evolution': {'strategy': 'evolution', 'evolution': {'population': 6, 'tournament': 3}}}


@pytest.mark.parametrize('strategy', sorted(STRATEGIES))
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, strategy, tiny_run):
    """Every strategy's state (policy and optimizer, archive, population, RNG) is in the checkpoint."""
    if strategy == 'reinforce':  # the defaults: the shared run is the uninterrupted one
        full = tiny_run[0]
        _copy_run(tiny_run, tmp_path / 'a')
    else:
        full = search(recipe_from_dict(tiny(tmp_path / 'a', **STRATEGIES[strategy])), cpu=True)
    run_a = tmp_path / 'a' / 'tiny' / 'search'
    # a run killed during epoch 3: its newest checkpoint is epoch 2
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    run_b = tmp_path / 'b' / 'tiny' / 'search'
    shutil.rmtree(run_b / 'checkpoints' / 'epoch_0003')
    (run_b / 'channel_config.json').unlink()
    resumed = search(recipe_from_dict(tiny(tmp_path / 'b', **STRATEGIES[strategy])), resume=True, cpu=True)
    assert resumed.config.widths == full.config.widths
    assert resumed.decoded == full.decoded  # the same N candidates proposed, scored alike
    state_a = load_plain_state(run_a / 'checkpoints' / 'epoch_0003')['strategy']
    state_b = load_plain_state(run_b / 'checkpoints' / 'epoch_0003')['strategy']
    assert torch.equal(state_a['generator'], state_b['generator']) and state_a['archive'] == state_b['archive']
    if strategy == 'reinforce':
        for key, tensor in state_a['reinforce']['controller'].items():
            assert (tensor == state_b['reinforce']['controller'][key]).all(), key
        assert state_a['reinforce']['baseline'] == state_b['reinforce']['baseline']
    if strategy == 'evolution':
        assert state_a['population'] == state_b['population'] and len(state_a['population']) == 6
    epochs = [json.loads(line)['epoch'] for line in (run_b / 'metrics.jsonl').read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]


def test_budget_below_smallest_network_fails_before_writing(tmp_path):
    out = tmp_path / 'tiny'
    out.mkdir()
    (out / 'keep.txt').write_text('earlier output')
    with pytest.raises(SearchSpaceError, match='below the smallest network'):
        search(recipe_from_dict(tiny(tmp_path, budget_macs=1e3)), cpu=True)
    assert sorted(p.name for p in out.iterdir()) == ['keep.txt']


def test_resume_falls_back_from_corrupted_checkpoint(tmp_path, capsys, tiny_run):
    run = _copy_run(tiny_run, tmp_path)
    (epoch3 := run / 'checkpoints' / 'epoch_0003' / 'state.safetensors').write_bytes(b'garbage')
    assert [e for e, _ in list_checkpoints(run)] == [2, 3]
    search(recipe_from_dict(tiny(tmp_path)), resume=True, cpu=True)
    assert 'corrupted checkpoint file' in capsys.readouterr().out
    assert epoch3.stat().st_size > 100  # epoch 3 was redone and rewritten
    for _, folder in list_checkpoints(run):
        (folder / 'state.json').write_text('{not json')
    with pytest.raises(CheckpointError, match='corrupted checkpoint file'):
        search(recipe_from_dict(tiny(tmp_path)), resume=True, cpu=True)


def test_resume_rejects_checkpoint_of_another_space(tmp_path, tiny_run):
    _copy_run(tiny_run, tmp_path)
    before = (tmp_path / 'tiny' / 'search' / 'metrics.jsonl').read_text()
    with pytest.raises(CheckpointError, match='already holds a run'):
        search(recipe_from_dict(tiny(tmp_path)), cpu=True)  # a fresh run never overwrites an earlier one
    assert (tmp_path / 'tiny' / 'search' / 'metrics.jsonl').read_text() == before
    other = tiny(tmp_path)
    other['space']['candidates'] = [4, 8, 12]
    with pytest.raises((ValueError, CheckpointError)):
        search(recipe_from_dict(other), resume=True, cpu=True)


def test_cli_reports_bad_recipe_key_in_one_line(tmp_path, capfd):
    """`aps-zoo search` (its entry point, in this process as tests/test_bad_input.py runs it)."""
    from aps_zoo.cli import main
    recipe = tiny(tmp_path)
    recipe['search']['budget'] = 5
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(recipe))
    capfd.readouterr()
    assert main(['search', str(path), '--cpu']) == 2
    stderr = capfd.readouterr().err
    assert stderr.strip().count('\n') == 0
    assert "unknown recipe key 'search.budget'" in stderr and 'budget_macs' in stderr
    assert not (tmp_path / 'tiny').exists()


def test_nonfinite_loss_stops_naming_the_step_and_keeps_checkpoints(tmp_path, tiny_run):
    run = _copy_run(tiny_run, tmp_path)
    before = {p: p.read_bytes() for _, folder in list_checkpoints(run) for p in folder.iterdir()}
    exploding = tiny(tmp_path, lr=1e30, epochs=6)
    with pytest.raises(NonFiniteLossError, match=r'at step \d+'):
        search(recipe_from_dict(exploding), resume=True, cpu=True)
    assert [e for e, _ in list_checkpoints(run)] == [2, 3]
    assert all(p.read_bytes() == data for p, data in before.items())
    # the recipe may ask to skip such steps instead: the run then finishes
    skipping = tiny(tmp_path, lr=1e30, epochs=6, on_nonfinite_loss='skip')
    result = search(recipe_from_dict(skipping), resume=True, cpu=True)
    assert [e for e, _ in list_checkpoints(run)] == [4, 5]
    assert count_macs(result.config) <= BUDGET * 1.02


@pytest.mark.slow
def test_search_killed_mid_run_resumes_to_the_same_result(tmp_path, tiny_run):
    """SIGKILL a real `aps-zoo search` process once it has written a checkpoint, then --resume: the same config
    and the same controller. Every part runs on one intra-op thread (in-process and the killed process), so
    the thread count cannot change the float sums; MKL's kernels may still differ in the last bits with the
    memory alignment of their inputs (one run in many under heavy load did), hence a tolerance far below what
    one REINFORCE step moves (an RNG or sampling error after resume moves it by about the Adam lr, 0.06 here)."""
    full, root = tiny_run  # the uninterrupted run, on one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed, run = _kill_then_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert resumed.config.widths == full.config.widths
    a = load_plain_state(root / 'tiny' / 'search' / 'checkpoints' / 'epoch_0003')
    b = load_plain_state(run / 'checkpoints' / 'epoch_0003')
    for key, tensor in a['strategy']['reinforce']['controller'].items():
        torch.testing.assert_close(b['strategy']['reinforce']['controller'][key], tensor, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f'{key}: {m}')


def _kill_then_resume(tmp_path):
    """The tiny search in a subprocess (one thread), SIGKILLed once it has written a checkpoint, then resumed
    in this process: (the resumed result, its run folder)."""
    import signal
    import time
    path = tmp_path / 'b.yaml'
    path.write_text(yaml.safe_dump(tiny(tmp_path / 'b')))
    run = tmp_path / 'b' / 'tiny' / 'search'
    proc = subprocess.Popen([sys.executable, '-m', 'aps_zoo.cli', 'search', str(path), '--cpu'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    deadline = time.time() + 300
    while not list_checkpoints(run) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / 'channel_config.json').exists(), 'the run finished before it could be killed'
    return search(recipe_from_dict(tiny(tmp_path / 'b')), resume=True, cpu=True), run


def test_recipe_for_more_gpus_than_present(tmp_path):
    recipe = tiny(tmp_path)
    recipe['gpus'] = 8
    with pytest.raises(RecipeError, match="asks for 8 GPUs .* this launch has 0 GPU"):
        search(recipe_from_dict(recipe), cpu=True)
    assert not (tmp_path / 'tiny').exists()


def test_lazy_orthogonality_penalty_skips_exactly(tmp_path, tiny_run):
    """orthogonal_every=k adds the penalty on every k-th step only: with k beyond the run's steps the
    supernet ends bit-identical to a run without the penalty, while k=1 moves the projections."""
    from safetensors.torch import load_file

    def projections(root, **overrides):
        if overrides:
            search(recipe_from_dict(tiny(root, **overrides)), cpu=True)
        state = load_file(root / 'tiny' / 'search' / 'checkpoints' / 'epoch_0003' / 'model.safetensors')
        return {k: v for k, v in state.items() if '_proj.' in k}

    unpenalised = projections(tmp_path / 'zero', orthogonal_weight=0.0)
    skipped = projections(tmp_path / 'lazy', orthogonal_every=1000)
    every_step = projections(tiny_run[1])  # the defaults: orthogonal_every 1
    assert unpenalised.keys() == skipped.keys() == every_step.keys()
    assert all(torch.equal(unpenalised[k], skipped[k]) for k in unpenalised)
    assert any(not torch.equal(unpenalised[k], every_step[k]) for k in unpenalised)


def _trained_searcher(tmp_path, **search_overrides):
    from aps_zoo.runs import make_accelerator
    from aps_zoo.search.loop import Searcher
    recipe = recipe_from_dict(tiny(tmp_path, epochs=3, warmup_epochs=3, steps_per_epoch=None, **search_overrides))
    searcher = Searcher(recipe, make_accelerator(cpu=True, seedable_sampler=True), tmp_path / 'out')
    for epoch in range(3):
        searcher.set_schedule(epoch)
        searcher.train_epoch(epoch, True)
    return searcher


def _sorted_and_shuffled(searcher):
    """The test split ordered by label, and the same images in a random order, as prepared loaders."""
    from torch.utils.data import DataLoader, Subset
    test = searcher.data.test
    labels = [int(test.dataset[i]['label']) for i in range(len(test.dataset))]
    by_label = sorted(range(len(labels)), key=labels.__getitem__)
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
    return [searcher.accelerator.prepare(DataLoader(Subset(test.dataset, idx), batch_size=64, collate_fn=test.collate_fn))
            for idx in (by_label, shuffled)]


def test_subnet_accuracy_does_not_depend_on_the_order_of_the_split(tmp_path):
    """Recalibrated BN statistics: a label-sorted split and the same split shuffled score the same subnet
    alike; on batch statistics (the old evaluation) the sorted split scores it far lower."""
    from aps_zoo.search import evaluation
    searcher = _trained_searcher(tmp_path)
    by_label, shuffled = _sorted_and_shuffled(searcher)
    arch = searcher.space.largest()
    recalibrated = [searcher.accuracy(arch, loader) for loader in (by_label, shuffled)]
    assert abs(recalibrated[0] - recalibrated[1]) < 0.01 and recalibrated[1] > 0.2
    searcher.calibration = None
    for m in evaluation.norms(searcher.supernet):
        m.use_running_stats = False
    batch_stats = [searcher.accuracy(arch, loader) for loader in (by_label, shuffled)]
    assert batch_stats[1] - batch_stats[0] > 0.05


def test_shuffled_evaluation_loader_is_a_fixed_permutation(tmp_path):
    from aps_zoo.search import evaluation
    data = recipe_from_dict(tiny(tmp_path)).data
    from aps_zoo.data import build_loaders
    test = build_loaders(data, seed=0, holdout=True).test
    labels = [y for loader in (test, evaluation.shuffled(test, 5), evaluation.shuffled(test, 5))
              for y in [torch.cat([y for _, y in loader]).tolist()]]
    assert sorted(labels[0]) == sorted(labels[1]) and labels[0] != labels[1] and labels[1] == labels[2]
