"""The search-quality benchmark's pure parts: settings checks, statistics, sharing trend, report text."""
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import import_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def sq():
    return import_benchmark('search_quality')


@pytest.mark.parametrize('name', ['quality_resnet20_digits_10', 'quality_resnet20_digits_25',
                                  'quality_resnet20_cifar10'])
def test_recipes_load(sq, name):
    recipe, q = sq.load_quality_recipe(ROOT / 'recipes' / f'{name}.yaml')
    assert len(q.seeds) >= 3 and q.methods == list(sq.METHODS)
    assert recipe.search.learn_projections


@pytest.mark.parametrize('path', sorted((ROOT / 'recipes').glob('quality_*.yaml')), ids=lambda p: p.stem)
def test_every_quality_recipe_loads_and_fits_its_space(sq, path):
    """Every shipped quality recipe passes the schema; a fixed budget is one the space can meet."""
    recipe, q = sq.load_quality_recipe(path)
    assert len(q.seeds) >= 3 and q.methods
    if q.budget_fraction is None:
        space = sq.space_from_recipe(recipe, 10, (3, recipe.data.image_size, recipe.data.image_size))
        space.check_budget(recipe.search.budget_macs)


@pytest.mark.parametrize('section, match', [
    (None, "needs a 'quality' section"),
    ({'seeds': [0, 1], 'budget': 3}, "unknown recipe key 'quality.budget'"),
    ({'seeds': [0]}, 'at least 2 distinct'),
    ({'seeds': [0, 0]}, 'at least 2 distinct'),
    ({'seeds': [0, 1], 'budget_fraction': 1.5}, 'budget_fraction'),
    ({'seeds': [0, 1], 'random_samples': 0}, 'random_samples'),
    ({'seeds': [0, 1], 'methods': ['aps', 'darts']}, 'quality.methods'),
    ({'seeds': [0, 1], 'independent_warmup_epochs': 0}, 'independent_warmup_epochs'),
])
def test_bad_settings(sq, section, match):
    with pytest.raises(sq.QualityError, match=match):
        sq.parse_quality(section)


def test_bad_recipe_names_file(sq, tmp_path):
    path = tmp_path / 'q.yaml'
    path.write_text('search: {overlap: 2}\nquality: {seeds: [0, 1]}\n')
    with pytest.raises(sq.QualityError, match=r'q\.yaml.*search\.overlap'):
        sq.load_quality_recipe(path)
    assert sq.main([str(path), '--out', str(tmp_path / 'out')]) == 2
    path.write_text('quality: {seeds: [0, 1]}\nquality: {seeds: [2, 3]}\n')  # plain PyYAML keeps the last
    with pytest.raises(sq.QualityError, match=r"q\.yaml is not valid YAML: duplicate key 'quality'"):
        sq.load_quality_recipe(path)


def test_independent_gets_its_own_warmup(sq, tmp_path):
    """``quality.independent_warmup_epochs`` lengthens only the independent search's warm-up; the search
    epochs after it stay the recipe's."""
    recipe, q = sq.load_quality_recipe(ROOT / 'recipes' / 'quality_resnet20_digits_10.yaml')
    s = recipe.search
    for method in sq.SEARCHES:
        r = sq.method_recipe(recipe, method, tmp_path, q.independent_warmup_epochs).search
        warm = q.independent_warmup_epochs if method == 'independent' else s.warmup_epochs
        assert (r.warmup_epochs, r.epochs - r.warmup_epochs) == (warm, s.epochs - s.warmup_epochs)
    assert q.independent_warmup_epochs > s.warmup_epochs


def test_methods_keep_canonical_order(sq):
    assert sq.parse_quality({'seeds': [1, 2], 'methods': ['random', 'aps']}).methods == ['aps', 'random']


def test_paired_bootstrap_verdicts(sq):
    """Paired over images: a method that gets 10 more of 400 images right on every seed (2.5 points) is
    better, though an unpaired test would not separate it (2 binomial standard errors of the difference
    of two 95% accuracies on 400 images are 3 points); shuffling which images it gets right (the same
    totals, no pairing left) makes it a tie."""
    rng = np.random.default_rng(0)
    easy = rng.random(400) < 0.95  # retraining seeds mostly agree on which images are hard
    base = np.array([easy ^ (rng.random(400) < 0.01) for _ in range(4)], dtype=int)
    better = base.copy()
    for s in range(4):
        better[s, np.flatnonzero(better[s] == 0)[:10]] = 1
    c = sq.paired_bootstrap(better, base)
    assert c['verdict'] == 'better' and c['diff'] == pytest.approx(2.5) and c['lo'] > 0
    assert sq.paired_bootstrap(base, better)['verdict'] == 'worse'
    unpaired = np.array([rng.permutation(row) for row in better])
    assert sq.paired_bootstrap(unpaired, base)['verdict'].startswith('tie')
    same = sq.paired_bootstrap(base, base)
    assert same['diff'] == 0 and same['lo'] < 0 < same['hi'] and same['verdict'].startswith('tie')


def test_paired_bootstrap_is_its_definition_replicate_by_replicate(sq):
    """The bootstrap works on counts of the drawn seeds and images; the CI equals that of its definition: per
    replicate, each method's mean over resampled seeds, the difference per image, averaged over resampled images,
    drawn in the same order from the same generator."""
    rng = np.random.default_rng(3)
    a, b = (rng.random((3, 300)) < 0.9).astype(int), (rng.random((5, 300)) < 0.88).astype(int)
    draws, diffs = np.random.default_rng(7), []
    for _ in range(600):
        per_image = a[draws.integers(0, 3, 3)].mean(0) - b[draws.integers(0, 5, 5)].mean(0)
        diffs.append(per_image[draws.integers(0, 300, 300)].mean())
    c = sq.paired_bootstrap(a, b, reps=600, seed=7)
    assert [c['lo'], c['hi']] == pytest.approx(list(100 * np.percentile(diffs, [2.5, 97.5])), abs=1e-9)
    assert c['diff'] == pytest.approx(100 * (a.mean() - b.mean()))


def test_sharing_trend(sq):
    recs = [{'epoch': 0, 'phase': 'warmup', 'sharing_mean': 1.0}, {'epoch': 1, 'phase': 'search', 'sharing_mean': 0.9},
            {'epoch': 2, 'phase': 'search', 'sharing_mean': 0.7}]
    t = sq.sharing_trend(recs)
    assert t['after_warmup'] == 1.0 and t['end'] == 0.7 and t['verdict'].startswith('held')
    assert sq.sharing_trend([{**r, 'sharing_mean': 0.5} for r in recs])['verdict'].startswith('not observed')
    rising = [{**r, 'sharing_mean': v} for r, v in zip(recs, (0.2, 0.5, 0.9))]
    assert sq.sharing_trend(rising)['verdict'].startswith('did not hold')


def test_per_layer_sharing_is_of_aps_or_else_of_the_search_whose_sharing_moved_most(sq):
    def levels(start, end):
        return {'records': [{'epoch': 0, 'phase': 'warmup', 'sharing_mean': start},
                            {'epoch': 1, 'phase': 'search', 'sharing_mean': end}]}
    # as in a report of the evolution strategy beside ordinal sharing and independent channels (flat at 1 and 0)
    searches = {'ordinal': levels(1.0, 1.0), 'evolution': levels(1.0, 0.46), 'independent': levels(0.0, 0.0)}
    assert sq.per_layer_search(searches) == 'evolution'
    assert sq.per_layer_search({**searches, 'aps': levels(1.0, 0.9)}) == 'aps'
    assert sq.per_layer_search({'ordinal': levels(1.0, 1.0)}) == 'ordinal'


def test_outputs_from_a_partial_summary(sq, tmp_path):
    seeds = {0: {'top1': 90.0, 'top5': 99.0, 'train_s': 1.0, 'correct': '1' * 9 + '0'},
             1: {'top1': 92.0, 'top5': 99.0, 'train_s': 1.0, 'correct': '1' * 9 + '0'}}
    summary = {
        'setting': 'toy', 'recipe': 'recipes/toy.yaml', 'command': 'python benchmarks/search_quality.py toy',
        'dataset': 'digits', 'test_images': 10, 'space': 'resnet_cifar20', 'reference_macs': 2e6, 'widest_macs': 4e6,
        'budget_macs': 1e6,
        'budget_fraction': 0.5, 'limit_macs': 1.02e6, 'search_epochs': 2, 'warmup_epochs': 1, 'search_seed': 3,
        'aps_overlap': 1.0,
        'train_epochs': 1, 'seeds': [0, 1], 'random_samples': 2, 'random_proxy_epochs': 1,
        'methods_planned': ['aps', 'uniform', 'random'], 'complete': False,
        'invocations': [{'command': 'python benchmarks/search_quality.py toy', 'started': '2026-01-01 00:00 UTC',
                         'device': 'cpu', 'cpu_count': 2, 'torch_threads': 1, 'omp_num_threads': '1',
                         'load_start': 1.0, 'load_end': 2.0, 'wall_s': 60.0, 'cpu_s': 55.0, 'ran': 4, 'reused': 0}],
        'methods': {'aps': {'widths': [8, 16], 'macs': 1e6, 'params': 5e4, 'search_s': 10.0, 'search_val_acc': 0.9,
                            'repaired': [0, 8], 'seeds': seeds},
                    'uniform': {'widths': [8, 8], 'macs': 9e5, 'params': 4e4, 'search_s': 0.0, 'search_val_acc': None,
                                'seeds': seeds}},
        'sharing': {'aps': {'records': [{'epoch': 0, 'phase': 'warmup', 'sharing_mean': 1.0, 'sharing': {'a': 1.0}},
                                        {'epoch': 1, 'phase': 'search', 'sharing_mean': 0.8, 'sharing': {'a': 0.8}}],
                            'trend': sq.sharing_trend([{'epoch': 0, 'phase': 'warmup', 'sharing_mean': 1.0},
                                                       {'epoch': 1, 'phase': 'search', 'sharing_mean': 0.8}])}},
    }
    out = tmp_path / 'results'
    sq.write_outputs(summary, out)
    assert {p.name for p in out.iterdir()} == {'toy.json', 'toy.md', 'toy.png', 'toy_sharing.png'}
    text = (tmp_path / 'results.md').read_text()
    assert 'INCOMPLETE: 2 of 3 methods finished; missing: random' in text
    assert '91.00 ± 1.41 (n=2)' in text and '](results/toy.png)' in text
    assert 'APS-T vs uniform width: +0.00 points, 95% CI [+0.00, +0.00]' in text and "for APS: held" in text
    assert 'repaired to fit: 0 of 8' in text and '(50% of the widest uniform member of the space, 4M;' in text
    assert 'one search per method (seed 3)' in text
    assert '1.0 min wall, 0.9 min process CPU time' in text and 'time in the runs: 0.2 min' in text
    assert '- toy: APS-T is better than 0, tied with 1 and worse than 0 of 1 other methods' in text
    assert 'so this setting resolves a 0.5-point difference' in text


def test_random_proxy_line_ranks_uniform_among_the_draws(sq):
    """The uniform network's proxy score is ranked among the random search's draws: 1 + the draws above it."""
    row = {'proxy': {'draws': [88.5, 90.25, 89.0, 87.0], 'uniform': 89.0}}
    assert sq.random_proxy(row, 5) == (
        "- random search's proxy (5 epochs, held-out top-1): the 4 draws scored 87.00-90.25 (median 88.75; the chosen "
        "one 90.25); the uniform network at the budget, trained the same way, 89.00, which would rank 2 of 5")
    row['proxy']['uniform'] = 91.0
    assert sq.random_proxy(row, 5).endswith('91.00, which would rank 1 of 5')
    assert sq.random_proxy(row, 1).startswith("- random search's proxy (1 epoch, held-out top-1)")


def test_standard_network_is_the_capacity_check_not_a_competitor(sq):
    """The over-budget standard network is compared with uniform (the setting's capacity gate), never with APS-T,
    and is never the 'best' method; the check's verdict follows the paired bootstrap's CI."""
    rng = np.random.default_rng(1)
    easy = rng.random(2000) < 0.88  # seeds mostly agree on which images are hard
    uniform = np.array([easy ^ (rng.random(2000) < 0.01) for _ in range(3)], dtype=int)
    wide = uniform.copy()
    for s in range(3):
        wide[s, np.flatnonzero(uniform[s] == 0)[:60]] = 1  # 3 more points on every seed

    def method(correct, macs):
        return {'widths': [8], 'macs': macs, 'params': 1e4, 'search_s': 0.0,
                'seeds': {s: {'top1': 100 * row.mean(), 'train_s': 1.0, 'correct': ''.join(map(str, row))}
                          for s, row in enumerate(correct)}}
    summary = {'test_images': 2000, 'methods': {'aps': method(uniform, 2.5e6), 'uniform': method(uniform, 2.5e6),
                                                'standard': method(wide, 10.2e6)}}
    assert set(sq.comparisons(summary)) == {'uniform'}
    line = sq.capacity_check(summary)
    expect = sq.paired_bootstrap(wide, uniform)
    assert expect['lo'] > 0 and f"{expect['diff']:+.2f} points" in line and 'capacity decides' in line
    assert '10.2M MACs' in line and '2.5M)' in line
    text = sq.reading(summary)
    assert text[0].startswith('Highest mean test top-1: APS-T') and text[1] == line
    summary['methods']['standard'] = method(uniform, 10.2e6)
    assert 'does NOT separate them' in sq.capacity_check(summary)
    del summary['methods']['uniform']
    assert sq.capacity_check(summary) is None
    assert sq.reading({**summary, 'methods_planned': ['aps', 'standard']})[-1] == (
        "APS-T is this recipe's only method under the budget; `benchmarks/compare_quality.py` compares networks "
        "of several reports on the same test images.")
    assert sq.reading({**summary, 'methods_planned': ['aps', 'uniform']})[-1] == \
        'No other method under the budget has finished in this run, so APS-T is not compared.'
    top1 = [100 * row.mean() for row in uniform]
    alone = f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f} over 3 seeds; APS-T is this recipe's only"
    assert sq.overview([{**summary, 'setting': 'q', 'methods_planned': ['aps']}])[0].startswith(f"- q: APS-T {alone}")
    del summary['methods']['aps']
    assert sq.reading({**summary, 'methods_planned': ['aps', 'standard']})[-1] == \
        'APS has not finished in this run, so it is not compared.'
    assert sq.reading({**summary, 'methods_planned': ['standard']})[-1].startswith(
        "APS is not among this recipe's methods; `benchmarks/compare_quality.py` compares")
    assert sq.overview([{**summary, 'setting': 'q', 'methods_planned': ['standard']}])[0].startswith(
        "- q: APS is not among this recipe's methods")


def test_the_report_lists_the_invocations_of_its_runs_folder(sq, tmp_path):
    """A rerun on the same runs folder reuses its trainings and adds its invocation to the report; a run on
    another folder starts a new list (the earlier invocations built other runs)."""
    recipe = tmp_path / 'q.yaml'
    recipe.write_text(f"base: {ROOT / 'recipes' / 'search_resnet20_digits.yaml'}\n"
                      "train: {epochs: 1, steps_per_epoch: 2}\n"
                      "quality: {seeds: [0, 1], methods: [standard]}\n")
    out = tmp_path / 'out'
    first = sq.run_setting(recipe, out, tmp_path / 'a', True, 'first')
    again = sq.run_setting(recipe, out, tmp_path / 'a', True, 'again')
    assert [(i['command'], i['ran'], i['reused']) for i in again['invocations']] == [('first', 2, 0), ('again', 0, 2)]
    assert again['methods']['standard']['seeds'] == first['methods']['standard']['seeds']
    other = sq.run_setting(recipe, out, tmp_path / 'b', True, 'other')
    assert [(i['command'], i['ran']) for i in other['invocations']] == [('other', 2)]


def test_a_run_stopped_between_retrainings_reports_the_seeds_it_finished(sq, tmp_path, monkeypatch):
    """The summary is rewritten after every retraining: a run stopped during a method's second seed (a part at
    its time limit) leaves that method with its first seed, and the report, rewritten after each method, says
    what is missing; the rerun completes it."""
    recipe = tmp_path / 'q.yaml'
    recipe.write_text(f"base: {ROOT / 'recipes' / 'search_resnet20_digits.yaml'}\n"
                      "train: {epochs: 1, steps_per_epoch: 2}\n"
                      "quality: {seeds: [0, 1], methods: [uniform, standard]}\n")
    train_run = sq.train_run

    def stopped_at_standard_seed1(recipe, config, out_dir, cpu):
        if out_dir.parts[-2:] == ('standard', 'train_seed1'):
            raise KeyboardInterrupt
        return train_run(recipe, config, out_dir, cpu)
    monkeypatch.setattr(sq, 'train_run', stopped_at_standard_seed1)
    out, runs = tmp_path / 'out', tmp_path / 'runs'
    with pytest.raises(KeyboardInterrupt):
        sq.run_setting(recipe, out, runs, True, 'stopped')
    stopped = json.loads((out / 'q.json').read_text())
    assert {m: sorted(v['seeds']) for m, v in stopped['methods'].items()} == {'uniform': ['0', '1'], 'standard': ['0']}
    assert not stopped['complete'] and stopped['invocations'][0]['ran'] == 3
    assert "- status: INCOMPLETE: 1 of 2 methods finished; missing: standard\n" in (out / 'q.md').read_text()
    assert sq.unfinished(stopped) == ("1 of 2 methods finished; missing: none; "
                                      "partly retrained: standard (1 of 2 seeds)")
    monkeypatch.setattr(sq, 'train_run', train_run)
    whole = sq.run_setting(recipe, out, runs, True, 'again')
    assert whole['complete'] and [(i['ran'], i['reused']) for i in whole['invocations']] == [(3, 0), (1, 3)]
    assert whole['methods']['standard']['seeds'][0] == stopped['methods']['standard']['seeds']['0']
    assert "- status: complete" in (out / 'q.md').read_text()
    assert "seeds [0, 1]; mixed precision: no in every retraining" in (out / 'q.md').read_text()


def test_retraining_precision_names_the_runs_of_each_when_they_differ(sq):
    """A search and a retraining in one process once shared Accelerate's precision: a report says which
    retrainings ran at which precision when they differ."""
    summary = {'methods': {'aps': {'seeds': {'0': {'mixed_precision': 'bf16'}, '1': {'mixed_precision': 'no'}}},
                           'uniform': {'seeds': {'0': {'mixed_precision': 'no'}, '1': {}}}}}
    assert sq.retraining_precision(summary) == ('mixed precision: bf16 in aps:0; no in aps:1, uniform:0; '
                                                'not recorded in uniform:1')
    older = {'methods': {'aps': {'seeds': {'0': {}}}}}
    assert sq.retraining_precision(older) == 'mixed precision: not recorded (the runs are older than the record)'


def test_a_part_waits_for_the_search_another_process_holds_then_the_search_runs_once(sq, tmp_path):
    """Parts of one method can start together: a part whose search another part holds says so in one line
    naming its process and waits; the two parts then run the search once between them."""
    recipe = tmp_path / 'q.yaml'
    recipe.write_text(f"base: {ROOT / 'recipes' / 'search_resnet20_digits.yaml'}\n"
                      "search: {epochs: 2, warmup_epochs: 1, steps_per_epoch: 3, decode_candidates: 8, decode_top_k: 2,"
                      " band_samples: 4, controller: {steps_per_epoch: 2}}\n"
                      "train: {epochs: 1, steps_per_epoch: 2}\n"
                      "quality: {seeds: [0, 1], methods: [aps]}\n")
    runs = tmp_path / 'runs'
    holder = sq.PartClaim(runs / 'aps' / 'search')
    holder.acquire()  # another part, searching
    second = subprocess.Popen([sys.executable, str(ROOT / 'benchmarks' / 'search_quality.py'), str(recipe), '--runs',
                               str(runs), '--methods', 'aps', '--seeds', '1'], stderr=subprocess.PIPE, text=True,
                              stdout=subprocess.DEVNULL)
    waiting = next((line for line in second.stderr if 'waiting: ' in line), None)  # after a progress bar's text
    assert waiting is not None and f"is in use by process {os.getpid()}" in waiting, second.communicate()[1][-2000:]
    holder.release()
    first = sq.run_setting(recipe, None, runs, True, 'first', methods=['aps'], seeds=[0])
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    parts = [json.loads((runs / 'parts' / f'aps_{s}' / 'q.json').read_text())['invocations'][-1] for s in (0, 1)]
    assert sorted((p['ran'], p['reused']) for p in parts) == [(1, 1), (2, 0)]  # one search, two retrainings
    assert first['methods']['aps']['widths'] == json.loads((runs / 'parts' / 'aps_1' / 'q.json').read_text())[
        'methods']['aps']['widths']


def test_parts_started_in_the_same_instant_search_once(sq, tmp_path, monkeypatch):
    """Two parts of one method reach the search together (here two threads; the search stands in for one whose
    data load comes before the run's own lock): the one that checked first holds the search from its check
    until its result is written, so the other waits and reuses that result instead of searching again."""
    recipe = tmp_path / 'q.yaml'
    recipe.write_text(f"base: {ROOT / 'recipes' / 'search_resnet20_digits.yaml'}\nquality: {{seeds: [0, 1]}}\n")
    recipe, _ = sq.load_quality_recipe(recipe)
    searching, finish = [], threading.Event()

    def search(r, resume, cpu):
        searching.append(threading.current_thread().name)
        finish.wait(30)
        return SimpleNamespace(config=SimpleNamespace(to_dict=lambda: {'widths': [8] * 19}), val_accuracy=0.5,
                               out_dir=r.run_dir / 'search', decoded=[])
    monkeypatch.setattr(sq, 'search', search)
    results = {}
    parts = [threading.Thread(name=name, target=lambda name=name: results.__setitem__(
        name, sq.run_search(recipe, 'aps', tmp_path / 'runs', True))) for name in ('a', 'b')]
    for part in parts:
        part.start()
    deadline = time.time() + 30
    while not searching and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # time for the other part to start a second search, were it not waiting
    assert len(searching) == 1
    finish.set()
    for part in parts:
        part.join(30)
    assert searching == [next(n for n, r in results.items() if not r['reused'])]
    assert sorted(r['reused'] for r in results.values()) == [False, True]
    assert all(r['config'] == {'widths': [8] * 19} for r in results.values())


def test_searches_from_another_runs_folder_are_retrained_not_rerun(sq, tmp_path, capsys):
    """`--searches-from RUNS`: a recipe that retrains the searched networks of another runs folder differently
    (here for 2 epochs instead of 1) takes their configs and runs only its retrainings. A folder without a
    finished search, or one searched in another space or budget, is refused in one line before anything runs."""
    base = (f"base: {ROOT / 'recipes' / 'search_resnet20_digits.yaml'}\n"
            "quality: {seeds: [0, 1], methods: [random, uniform], random_samples: 2, random_proxy_epochs: 1}\n")
    short, long = tmp_path / 'short.yaml', tmp_path / 'long.yaml'
    short.write_text(base + "train: {epochs: 1, steps_per_epoch: 2}\n")
    long.write_text(base + "train: {epochs: 2, steps_per_epoch: 2}\n")
    first = sq.run_setting(short, tmp_path / 'out', tmp_path / 'a', True, 'short')
    assert first['invocations'][0]['ran'] == 1 + 2 * 2  # the random search (2 proxy trainings), 2 x 2 retrainings
    proxies = [json.loads((tmp_path / 'a' / 'random' / d / 'results.json').read_text())
               for d in ('proxy0', 'proxy1', 'proxy_uniform')]
    assert [p['epochs'] for p in proxies] == [1, 1, 1] and proxies[2]['params'] == first['methods']['uniform']['params']
    assert sorted(first['methods']['random']['proxy']['draws']) == sorted(
        t['val_top1'] for t in json.loads((tmp_path / 'a' / 'random' / 'search_result.json').read_text())['tried'])
    short_md = (tmp_path / 'out' / 'short.md').read_text()
    assert "the uniform network at the budget, trained the same way," in short_md
    assert "This recipe has no supernet search, so no sharing level." in short_md
    again = sq.run_setting(long, tmp_path / 'out', tmp_path / 'b', True, 'long', searches_from=tmp_path / 'a')
    assert again['invocations'][0]['ran'] == 2 * 2 and again['searches_from'] == str(tmp_path / 'a')
    assert again['methods']['random']['widths'] == first['methods']['random']['widths']
    assert 'proxy' not in again['methods']['random']  # the draws were scored by the other recipe's proxy
    assert not list((tmp_path / 'b' / 'random').glob('proxy*')) and list((tmp_path / 'a' / 'random').glob('proxy*'))
    assert [json.loads((tmp_path / 'b' / 'random' / f'train_seed{s}' / 'results.json').read_text())['epochs']
            for s in (0, 1)] == [2, 2]
    assert f"the searches are those of the runs folder {tmp_path / 'a'}" in (tmp_path / 'out' / 'long.md').read_text()
    tight = tmp_path / 'tight.yaml'
    tight.write_text(base + "search: {budget_macs: 4.0e5}\n")
    for recipe, searches, match in ((long, tmp_path / 'empty', 'no random/search_result.json (the random search'),
                                    (tight, tmp_path / 'a', 'the random network (resnet_cifar20, 10 classes')):
        capsys.readouterr()
        assert sq.main([str(recipe), '--runs', str(tmp_path / 'c'), '--out', str(tmp_path / 'o'),
                        '--searches-from', str(searches)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0] and '--searches-from' in err[0], err
        assert not (tmp_path / 'c').exists() and not (tmp_path / 'o').exists()


def test_parts_of_a_recipe_are_reused_by_the_whole(sq, tmp_path, capsys):
    """`--methods`/`--seeds` run a part of the recipe (parallel processes on one runs folder), each reporting to
    its own folder under the runs; the whole recipe on that folder then reuses every retraining the parts
    finished, with the same results, and lists the parts' invocations. A part outside the recipe is refused in
    one line naming the option, before anything runs."""
    recipe = tmp_path / 'q.yaml'
    recipe.write_text(f"base: {ROOT / 'recipes' / 'search_resnet20_digits.yaml'}\n"
                      "train: {epochs: 1, steps_per_epoch: 2}\n"
                      "quality: {seeds: [0, 1, 2], methods: [uniform, standard]}\n")
    runs = tmp_path / 'runs'
    parts = [sq.run_setting(recipe, None, runs, True, f'part{i}', methods=m, seeds=s)
             for i, (m, s) in enumerate([(['standard'], [2, 0]), (['standard'], [1]), (['uniform'], None)])]
    assert [(list(p['methods']), p['seeds']) for p in parts] == [(['standard'], [0, 2]), (['standard'], [1]),
                                                                 (['uniform'], [0, 1, 2])]
    folders = sorted(p.name for p in (runs / 'parts').iterdir() if p.is_dir())
    assert folders == ['standard_1', 'standard_2-0', 'uniform']
    assert [p['part_invocations'] for p in parts] == [[], [], []]
    assert [p['complete'] for p in parts] == [False] * 3  # a part is not the whole setting, and says so
    assert "missing: uniform" in (runs / 'parts' / 'standard_1.md').read_text()
    whole = sq.run_setting(recipe, tmp_path / 'out', runs, True, 'whole')
    assert [(i['ran'], i['reused']) for i in whole['invocations']] == [(0, 6)]
    assert [(i['part'], i['command'], i['ran']) for i in whole['part_invocations']] == [
        ('standard_1', 'part1', 1), ('standard_2-0', 'part0', 2), ('uniform', 'part2', 3)]
    text = (tmp_path / 'out' / 'q.md').read_text()
    assert whole['complete'] and "- status: complete" in text
    assert "  - standard_2-0: `part0` (" in text and "ran 2 searches/trainings, reused 0" in text
    seeds = {**parts[0]['methods']['standard']['seeds'], **parts[1]['methods']['standard']['seeds']}
    assert whole['methods']['standard']['seeds'] == seeds
    assert whole['methods']['uniform']['seeds'] == parts[2]['methods']['uniform']['seeds']
    for bad, match in ((['--methods', 'aps'], '--methods aps: not a part'),
                       (['--seeds', '5'], '--seeds 5: not a part')):
        capsys.readouterr()
        assert sq.main([str(recipe), '--runs', str(tmp_path / 'bad'), '--out', str(tmp_path / 'o'), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert not (tmp_path / 'bad').exists()
