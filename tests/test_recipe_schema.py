"""The one typed validator (aps_zoo._schema) behind recipes, hub configs and results, and keys that moved."""
import dataclasses
from pathlib import Path
from typing import List, Optional, Union

import pytest
import yaml

from aps_zoo._schema import INTERNAL, Schema, build, check
from aps_zoo.recipe import RecipeError, load_recipe, read_recipe_data, recipe_from_dict

RECIPES = sorted((Path(__file__).parent.parent / 'recipes').glob('*.yaml'))


class DocError(ValueError):
    pass


@dataclasses.dataclass
class Inner:
    score: float = dataclasses.field(metadata=check(lambda v: v >= 0, 'non-negative'))
    note: Optional[str] = None


@dataclasses.dataclass
class Doc:
    name: str
    size: Union[int, str] = 1
    items: List[Inner] = dataclasses.field(default_factory=list)
    where: Optional[Path] = None
    origin: Optional[str] = dataclasses.field(default=None, metadata=INTERNAL)


LOCATED = Schema(DocError)
DOTTED = Schema(DocError, noun='doc', choices={'name': ('a', 'b')})


def test_types_conversions_and_defaults():
    doc = build(Doc, {'name': 'a', 'items': [{'score': 2}, {'score': '1e3'}], 'where': 'x/y'}, LOCATED)
    assert doc == Doc('a', 1, [Inner(2.0), Inner(1000.0)], Path('x/y'))
    assert isinstance(doc.items[0].score, float) and doc.origin is None
    assert build(Doc, {'name': 'a', 'size': 'big'}, LOCATED).size == 'big'


@pytest.mark.parametrize('data, located, dotted', [
    ({'name': 'a', 'colour': 1}, "unknown key 'colour'; allowed: name, size, items, where",
     "unknown doc key 'colour'; allowed in 'top level': name, size, items, where"),
    ({'size': 1}, "'name' is required (a string)", "doc key 'name' is required (a string)"),
    ({'name': 'a', 'items': [{'score': -1}]}, "items[0]: 'score' must be non-negative, got -1.0",
     "doc key 'items[0].score' must be non-negative, got -1.0"),
    ({'name': 'a', 'items': [{'score': 1, 'x': 2}]}, "items[0]: unknown key 'x'; allowed: score, note",
     "unknown doc key 'items[0].x'; allowed in 'items[0]': score, note"),
    ({'name': 'a', 'items': 'many'}, "'items' must be a list of Inner mappings, got 'many'",
     "doc key 'items' must be a list of Inner mappings, got 'many'"),
    ({'name': 'a', 'size': 1.5}, "'size' must be an integer or a string, got 1.5",
     "doc key 'size' must be an integer or a string, got 1.5"),
    ({'name': 'a', 'size': True}, "'size' must be an integer or a string, got True",
     "doc key 'size' must be an integer or a string, got True"),
    ({'name': 'a', 'origin': 'x'}, "unknown key 'origin'", "unknown doc key 'origin'"),
    ([1], "must be a mapping with keys name, size, items, where, got [1]",
     "doc section 'top level' must be a mapping, got [1]"),
])
def test_one_line_errors_in_both_styles(data, located, dotted):
    with pytest.raises(DocError) as a:
        build(Doc, data, LOCATED)
    assert located in str(a.value) and '\n' not in str(a.value)
    with pytest.raises(DocError) as b:
        build(Doc, data if data != {'size': 1} else {'size': 1}, Schema(DocError, noun='doc'))
    assert dotted in str(b.value)


def test_choices_and_lenient_reading():
    with pytest.raises(DocError, match="doc key 'name' must be one of a, b, got 'c'"):
        build(Doc, {'name': 'c'}, DOTTED)
    assert build(Doc, {'name': 'a', 'extra': 1}, LOCATED, strict=False) == Doc('a')


def test_overlap_moved_to_space_and_old_recipes_still_load(capsys):
    new = recipe_from_dict({'space': {'overlap': 0.25}})
    data = {'search': {'overlap': 0.25}}
    old = recipe_from_dict(data, source='old.yaml')
    assert old.space.overlap == new.space.overlap == 0.25 and old.to_dict() == new.to_dict()
    assert data == {'search': {'overlap': 0.25}}  # the caller's mapping is left as it was
    note = capsys.readouterr().err
    assert note.count('\n') == 1 and "old.yaml: 'search.overlap' is now 'space.overlap'" in note
    assert 'overlap' not in old.to_dict()['search'] and old.to_dict()['space']['overlap'] == 0.25
    assert recipe_from_dict({'search': {'overlap': 0.5}, 'space': {'overlap': 0.5}}).space.overlap == 0.5
    with pytest.raises(RecipeError, match=r"'search\.overlap' \(0\.5\) and 'space\.overlap' \(1\.0\) disagree"):
        recipe_from_dict({'search': {'overlap': 0.5}, 'space': {'overlap': 1.0}})


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_state_overlap_in_space(path, capsys):
    assert 'overlap' not in (yaml.safe_load(path.read_text()).get('search') or {})
    data = read_recipe_data(path)
    recipe = recipe_from_dict({k: v for k, v in data.items() if k != 'quality'}, source=str(path))  # quality_*:
    assert capsys.readouterr().err == ''                                             # the benchmark's section
    assert recipe.space.overlap == (data.get('space') or {}).get('overlap', 1.0)


def test_base_recipe_merges_sections_and_saves_resolved(tmp_path):
    """``base:`` chains merge section by section (a list replaces the base's), relative to each file's folder;
    ``--set`` overrides go on top, and the saved recipe needs no base to load."""
    (tmp_path / 'shared').mkdir()
    root = {'name': 'root', 'data': {'dataset': 'digits', 'image_size': 8, 'batch_size': 32},
            'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8, 16]},
            'search': {'budget_macs': 1e6, 'epochs': 4, 'warmup_epochs': 2}}
    (tmp_path / 'shared' / 'root.yaml').write_text(yaml.safe_dump(root))
    (tmp_path / 'shared' / 'mid.yaml').write_text('base: root.yaml\nsearch: {epochs: 6}\n')
    (tmp_path / 'leaf.yaml').write_text('base: shared/mid.yaml\nname: leaf\nspace: {candidates: [8, 16]}\n')
    leaf = load_recipe(tmp_path / 'leaf.yaml', ['data.batch_size=16'])
    by_hand = {'name': 'leaf', 'data': {'dataset': 'digits', 'image_size': 8, 'batch_size': 16},
               'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [8, 16]},
               'search': {'budget_macs': 1e6, 'epochs': 6, 'warmup_epochs': 2}}
    assert leaf.to_dict() == recipe_from_dict(by_hand).to_dict()
    saved = tmp_path / 'saved.yaml'
    saved.write_text(leaf.to_yaml())
    assert 'base' not in yaml.safe_load(saved.read_text()) and load_recipe(saved).to_dict() == leaf.to_dict()
    assert yaml.safe_load((tmp_path / 'shared' / 'root.yaml').read_text()) == root  # bases are only read


def test_base_cycle_error_names_each_file_once(tmp_path):
    """A cycle three files long is one message that starts at the file given and follows the chain."""
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'a.yaml').write_text('base: b.yaml\n')
    (tmp_path / 'b.yaml').write_text('base: sub/c.yaml\n')
    (tmp_path / 'sub' / 'c.yaml').write_text('base: ../a.yaml\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / 'a.yaml')
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'a.yaml'}: recipe key 'base' makes a cycle (")
    assert message.count('b.yaml') == 1 and message.count('c.yaml') == 1 and message.count('a.yaml') == 3
    assert '\n' not in message


@pytest.mark.parametrize('text, message', [
    ('base: 3\n', "recipe key 'base' must be the path of another recipe"),
    ('base: ""\n', "recipe key 'base' must be the path of another recipe"),
    ('base: r.yaml\n', "recipe key 'base' makes a cycle"),
    ('base: list.yaml\n', "recipe key 'base': {dir}/list.yaml: a recipe must be a mapping"),
    ('base: ok.yaml\nsearch: {epoch: 3}\n', "unknown recipe key 'search.epoch'"),
])
def test_base_recipe_errors_name_the_files(tmp_path, text, message):
    (tmp_path / 'list.yaml').write_text('- 1\n')
    (tmp_path / 'ok.yaml').write_text('name: ok\n')
    (tmp_path / 'r.yaml').write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / 'r.yaml')
    assert str(info.value).startswith(f"{tmp_path / 'r.yaml'}: ") and message.format(dir=tmp_path) in str(info.value)
