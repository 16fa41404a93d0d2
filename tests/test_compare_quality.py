"""benchmarks/compare_quality.py: networks of different search_quality reports compared by the paired bootstrap."""
import json
from pathlib import Path

import pytest
from conftest import import_benchmark


@pytest.fixture(scope='module')
def cq():
    return import_benchmark('compare_quality')


def report(path: Path, dataset: str, methods: dict, images: int = 200) -> Path:
    """A search_quality report whose methods get the given count of correct images per seed (first ones)."""
    rows = {m: {'macs': 2.5e6, 'params': 6.0e4, 'widths': [8] * 19,
                'seeds': {str(s): {'top1': 100 * k / images, 'correct': '1' * k + '0' * (images - k)}
                          for s, k in enumerate(per_seed)}} for m, per_seed in methods.items()}
    path.write_text(json.dumps({'dataset': dataset, 'test_images': images, 'budget_macs': 2.551e6,
                                'methods': rows}))
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
])
def test_what_cannot_be_compared_is_refused_in_one_line(cq, tmp_path, capsys, names, match):
    paths = {'a': report(tmp_path / 'a.json', 'fmnist', {'random': [190, 180]}),
             'digits': report(tmp_path / 'd.json', 'digits', {'aps': [190, 180]}, images=360),
             'missing': tmp_path / 'missing.json', 'cut': report(tmp_path / 'c.json', 'fmnist', {'aps': [190, 180]}),
             'listed': tmp_path / 'l.json'}
    cut = json.loads(paths['cut'].read_text())
    cut['methods']['aps']['seeds']['1']['correct'] = '1' * 150  # a report cut short
    paths['cut'].write_text(json.dumps(cut))
    paths['listed'].write_text(json.dumps({'methods': ['aps']}))
    assert cq.main([n.format(**paths) for n in names]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
