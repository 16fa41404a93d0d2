"""benchmarks/compare_quality.py and quality_overview.py: networks of different search_quality reports compared by
the paired bootstrap."""
import json
from pathlib import Path

import pytest
from conftest import import_benchmark


@pytest.fixture(scope='module')
def cq():
    return import_benchmark('compare_quality')


@pytest.fixture(scope='module')
def overview():
    return import_benchmark('quality_overview')


def report(path: Path, dataset: str, methods: dict, images: int = 200, budget_macs: float = 2.551e6,
           train_epochs: int = 5, params: dict = None) -> Path:
    """A search_quality report whose methods get the given count of correct images per seed (first ones)."""
    rows = {m: {'macs': 2.5e6, 'params': (params or {}).get(m, 6.0e4), 'widths': [8] * 19,
                'seeds': {str(s): {'top1': 100 * k / images, 'correct': '1' * k + '0' * (images - k)}
                          for s, k in enumerate(per_seed)}} for m, per_seed in methods.items()}
    path.write_text(json.dumps({'dataset': dataset, 'test_images': images, 'budget_macs': budget_macs,
                                'train_epochs': train_epochs, 'methods': rows}))
    return path


def test_networks_of_two_reports_are_compared_on_the_same_images(cq, tmp_path, capsys):
    """One report's random search against another's APS-T and uniform: the differences are those of the
    per-image correctness (here 190/200 and 180/200 against 170/200: +10 and +5 points, resolved)."""
    a = report(tmp_path / 'a.json', 'fmnist', {'random': [190, 190, 190]})
    b = report(tmp_path / 'b.json', 'fmnist', {'aps': [170, 170], 'uniform': [180, 180, 180, 180]})
    assert cq.main([f'{a}:random', f'{b}:aps', f'{b}:uniform']) == 0
    out = capsys.readouterr().out
    assert '| random search (best of N) | a | 2.500M | 2.551M | 60.0k | 95.00 ± 0.00 | 3 |' in out
    rows = {line.split(' | ')[0].strip('| '): line.split(' | ')[1:] for line in out.splitlines() if ' vs ' in line}
    assert rows.keys() == {'a:random vs b:aps', 'a:random vs b:uniform', 'b:aps vs b:uniform'}
    assert [rows[k][0] for k in ('a:random vs b:aps', 'a:random vs b:uniform', 'b:aps vs b:uniform')] == \
        ['+10.00', '+5.00', '-5.00']
    assert rows['a:random vs b:aps'][2].startswith('better') and rows['b:aps vs b:uniform'][2].startswith('worse')


def test_common_seeds_compare_each_network_on_the_seeds_all_of_them_have(cq, tmp_path, capsys):
    """Seeds 0-1 of a network with two against seeds 0-1 of one with four, whose later seeds score higher: with
    --common-seeds the difference is that of seeds 0-1 alone (the same as a report holding only those), not of all
    seeds (-5 against -10 points)."""
    few = report(tmp_path / 'few.json', 'fmnist', {'ordinal': [170, 170]})
    many = report(tmp_path / 'many.json', 'fmnist', {'aps': [180, 180, 200, 200]})
    first = report(tmp_path / 'first.json', 'fmnist', {'aps': [180, 180]})
    diffs = {}
    for name, args in {'all': [f'{few}:ordinal', f'{many}:aps'],
                       'common': [f'{few}:ordinal', f'{many}:aps', '--common-seeds'],
                       'first': [f'{few}:ordinal', f'{first}:aps']}.items():
        assert cq.main(args) == 0
        out = capsys.readouterr().out
        diffs[name] = [line.split(' | ')[1:3] for line in out.splitlines() if ' vs ' in line]
        assert ('| 2 |' if name != 'all' else '| 4 |') in out.splitlines()[3]
    assert diffs['all'][0][0] == '-10.00' and diffs['common'][0][0] == '-5.00'
    assert diffs['common'] == diffs['first']


def test_the_plot_names_a_method_of_two_reports_by_what_tells_the_reports_apart(cq, tmp_path):
    fine = report(tmp_path / 'q25_fine.json', 'fmnist', {'aps': [170, 172]})
    floor = report(tmp_path / 'q25_fine_floor.json', 'fmnist', {'aps': [180, 181], 'uniform': [185, 186]})
    assert cq.main([f'{fine}:aps', f'{floor}:aps', f'{floor}:uniform', '--plot', str(tmp_path / 'c.png')]) == 0
    assert (tmp_path / 'c.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    networks = [cq.load_network(f'{path}:aps') for path in (fine, floor)]
    assert [cq.short_report(n, 'q25_fine') for n in networks] == ['fine', 'floor']


@pytest.mark.parametrize('names, match', [
    (['{a}:random'], 'name at least two networks'),
    (['{a}:random', '{a}'], 'name a network as REPORT.json:METHOD'),
    (['{a}:random', '{a}:aps'], "has no retrained method 'aps' (it has: random)"),
    (['{a}:random', '{missing}:aps'], 'not a readable search_quality report'),
    (['{a}:random', '{digits}:aps'], 'not the same test images'),
    (['{a}:random', '{cut}:aps'], 'aps seed 1 has no per-image results for its 200 test images'),
    (['{a}:random', '{listed}:aps'], "has no retrained method 'aps' (it has: none)"),
    (['{a}:random', '{array}:aps'], 'not a readable search_quality report (not a JSON object)'),
    (['{a}:random', '{later}:aps', '--common-seeds'], 'share no retraining seed; compare them without --common-seeds'),
])
def test_what_cannot_be_compared_is_refused_in_one_line(cq, tmp_path, capsys, names, match):
    paths = {'a': report(tmp_path / 'a.json', 'fmnist', {'random': [190, 180]}),
             'digits': report(tmp_path / 'd.json', 'digits', {'aps': [190, 180]}, images=360),
             'missing': tmp_path / 'missing.json', 'cut': report(tmp_path / 'c.json', 'fmnist', {'aps': [190, 180]}),
             'listed': tmp_path / 'l.json', 'array': tmp_path / 'array.json',
             'later': report(tmp_path / 'later.json', 'fmnist', {'aps': [190, 180]})}
    cut = json.loads(paths['cut'].read_text())
    cut['methods']['aps']['seeds']['1']['correct'] = '1' * 150  # a report cut short
    paths['cut'].write_text(json.dumps(cut))
    paths['listed'].write_text(json.dumps({'methods': ['aps']}))
    paths['array'].write_text(json.dumps([{'methods': {}}]))
    later = json.loads(paths['later'].read_text())
    later['methods']['aps']['seeds'] = {'2': later['methods']['aps']['seeds']['0']}  # retrained with seed 2 only
    paths['later'].write_text(json.dumps(later))
    assert cq.main([n.format(**paths) for n in names]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_overview_compares_each_searched_network_with_the_uniform_network_of_its_setting(overview, tmp_path, capsys):
    """APS-T against its own report's uniform network; random search, run in a report of its own, against the
    uniform network of its setting with most seeds (not the one retrained longer, nor the one of another budget);
    a search with no uniform network in its setting is left out."""
    floor = report(tmp_path / 'q_floor.json', 'fmnist', {'aps': [170, 172], 'uniform': [180, 180, 180],
                                                         'standard': [190, 190]}, params={'uniform': 8.0e4})
    few = report(tmp_path / 'q_few.json', 'fmnist', {'uniform': [100, 100]})
    longer = report(tmp_path / 'q_long.json', 'fmnist', {'uniform': [199, 199, 199, 199]}, train_epochs=10)
    other = report(tmp_path / 'q_other.json', 'fmnist', {'uniform': [10] * 5}, budget_macs=5.1e6)
    alone = report(tmp_path / 'q_random.json', 'fmnist', {'random': [190, 190]})
    orphan = report(tmp_path / 'q_orphan.json', 'fmnist', {'aps': [150, 150]}, train_epochs=3)
    assert overview.main([str(p) for p in (floor, few, longer, other, alone, orphan)]) == 0
    out = capsys.readouterr().out
    rows = [line.split(' | ') for line in out.splitlines() if line.startswith('| q_')]
    assert [(r[0], r[1], r[2], r[3], r[6], r[8].split(' ')[0]) for r in rows] == [
        ('| q_floor', 'aps', 'q_floor', '0.75', '-4.50', 'worse'),
        ('| q_random', 'random', 'q_floor', '0.75', '+5.00', 'better')]
    assert '2 searched networks against uniform width: 1 better, 0 tie, 1 worse (95% CI); mean above ' \
           "uniform's: 1." in out


def test_overview_draws_every_difference_and_rank_correlations_follow_the_rows(overview, tmp_path, capsys):
    """Three searches whose differences from uniform rise with their parameters: rank correlation +1."""
    path = report(tmp_path / 'q.json', 'fmnist', {'aps': [170, 170], 'ordinal': [175, 176], 'random': [185, 186],
                                                  'uniform': [180, 180]},
                  params={'aps': 3.0e4, 'ordinal': 4.0e4, 'random': 5.0e4, 'uniform': 6.0e4})
    assert overview.main([str(path), '--plot', str(tmp_path / 'o.png')]) == 0
    assert (tmp_path / 'o.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    out = capsys.readouterr().out
    assert "parameters relative to uniform's vs the difference: Spearman rho +1.00" in out
    assert 'share of the budget used: the same for every network, so no rank correlation.' in out


def test_overview_without_a_comparison_is_refused_in_one_line(overview, tmp_path, capsys):
    only_uniform = report(tmp_path / 'u.json', 'fmnist', {'uniform': [180, 180]})
    assert overview.main([str(only_uniform), str(tmp_path / 'missing.json')]) == 2
    assert overview.main([str(only_uniform)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and 'missing.json: not a readable search_quality report' in err[0], err
    assert 'no searched network with a uniform network in its setting' in err[1]
