"""One typed validator for every YAML/JSON document aps-zoo reads: recipes, hub configs, measured results.

A document is described by a dataclass: each field's type hint says what is allowed (``int``, ``float``,
``bool``, ``str``, ``Path``, ``List[...]``, ``Optional[...]``, ``Union[...]`` or a nested dataclass), a
field without a default is required, and ``field(metadata=check(predicate, 'what'))`` adds a value check.
Fields marked ``INTERNAL`` are set by the loader, never read from the document. Every error is one line
naming the key and what is allowed, raised as the schema's own error class.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Sequence, Tuple, Union

import yaml

INTERNAL = {'internal': True}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (plain PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        """A mapping, refused when a key repeats (PyYAML keeps the last silently)."""
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == 'tag:yaml.org,2002:merge':  # '<<: *base' merges, its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys; errors are one-line yaml.YAMLErrors naming the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ''
        raise yaml.YAMLError(f"{e.problem or e.context}{where}") from None


_TYPE_NAMES = {int: ('an integer', 'integers'), float: ('a number', 'numbers'), bool: ('true or false', 'booleans'),
               str: ('a string', 'strings'), Path: ('a path', 'paths')}


def check(predicate: Callable[[Any], bool], what: str) -> dict:
    """Field metadata: the value must satisfy ``predicate``; ``what`` completes "must be ..."."""
    return {'check': (predicate, what)}


@dataclass(frozen=True)
class Schema:
    """How errors read. With a ``noun`` (``'recipe'``) keys are dotted: "recipe key 'data.batch_size' must be
    ...". Without one, the location prefixes a bare key: "metrics[0]: 'top1' must be ..."."""
    error: type
    noun: str = ''
    choices: Mapping[str, Sequence] = field(default_factory=dict)

    def key(self, path: Tuple) -> str:
        """How the key at ``path`` is named in a message."""
        if self.noun:
            return f"{self.noun} key '{_dotted(path)}'"
        where = _dotted(path[:-1])
        return f"{where + ': ' if where else ''}'{path[-1]}'"

    def fail(self, path: Tuple, what: str, value: Any) -> None:
        """Raise the schema's error: the key at ``path`` must be ``what``."""
        raise self.error(f"{self.key(path)} must be {what}, got {value!r}")


def _dotted(path: Tuple) -> str:
    return '.'.join(f'[{p}]' if isinstance(p, int) else str(p) for p in path).replace('.[', '[')


def _type_name(hint, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return ' or '.join(_type_name(a, plural) for a in args if a is not type(None))
    if origin in (list, List):
        return f'a list of {_type_name(args[0], plural=True)}'
    name = getattr(hint, '__name__', str(hint))
    return _TYPE_NAMES.get(hint, (name, f'{name} mappings'))[plural]


def check_value(schema: Schema, path: Tuple, value: Any, hint) -> Any:
    """``value`` converted to ``hint`` (a float from an int or a YAML 1.1 '2.05e7' string, a Path from a
    string); raise the schema's error naming ``path`` when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return check_value(schema, path, value, arg)
                except schema.error:
                    continue
        schema.fail(path, _type_name(hint), value)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            schema.fail(path, _type_name(hint), value)
        return [check_value(schema, (*path, i), v, args[0]) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, schema, path)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 2.05e7 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,), Path: (str,)}.get(hint)
    if accepted is None:
        raise TypeError(f"no schema rule for {hint!r}")
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        schema.fail(path, _type_name(hint), value)
    return float(value) if hint is float else Path(value) if hint is Path else value


def build(cls, data: Any, schema: Schema, path: Tuple = (), strict: bool = True):
    """An instance of dataclass ``cls`` from mapping ``data``, every key checked; ``strict=False`` ignores
    keys ``cls`` does not have (a file that records more than the schema reads)."""
    if data is None:
        data = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get('internal')}
    if not isinstance(data, dict):
        if schema.noun:
            raise schema.error(f"{schema.noun} section '{_dotted(path) or 'top level'}' must be a mapping, "
                               f"got {data!r}")
        where = _dotted(path)
        raise schema.error(f"{where + ': ' if where else ''}must be a mapping with keys {', '.join(fields)}, "
                           f"got {data!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = (*path, key)
        if key not in fields:
            if strict:
                _unknown(schema, full, fields)
            continue
        value = check_value(schema, full, value, hints[key])
        kwargs[key] = _checked(schema, full, value, fields[key])
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise schema.error(f"{schema.key((*path, name))} is required ({_type_name(hints[name])})")
    return cls(**kwargs)


def _checked(schema: Schema, path: Tuple, value: Any, f: dataclasses.Field) -> Any:
    allowed = schema.choices.get(_dotted(path))
    if allowed is not None and value is not None and value not in allowed:
        raise schema.error(f"{schema.key(path)} must be one of {', '.join(allowed)}, got {value!r}")
    predicate, what = f.metadata.get('check', (None, None))
    if predicate is not None and value is not None and not predicate(value):
        schema.fail(path, what, value)
    return value


def _unknown(schema: Schema, path: Tuple, fields: Mapping) -> None:
    allowed = ', '.join(fields)
    if schema.noun:
        section = _dotted(path[:-1]) or 'top level'
        raise schema.error(f"unknown {schema.noun} key '{_dotted(path)}'; allowed in '{section}': {allowed}")
    where = _dotted(path[:-1])
    raise schema.error(f"{where + ': ' if where else ''}unknown key {path[-1]!r}; allowed: {allowed}")
