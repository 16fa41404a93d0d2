"""Hub configs: ``hub_configs/<name>.yaml``, what one published model's repo holds (repo id, license,
datasets, measured metrics, card text, the training run to publish)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .. import models
from ..data import DIGITS
from .._schema import INTERNAL, Schema, build, check, load_yaml
from .errors import HubConfigError, HubError
from .results import Result

DEFAULT_LICENSE = 'apache-2.0'
DEFAULT_HUB_CONFIGS = Path(__file__).resolve().parents[2] / 'hub_configs'
SCHEMA = Schema(HubConfigError)


def check_repo_id(repo_id: str) -> None:
    """Raise HubError unless ``repo_id`` is a valid ``<org or user>/<name>``."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(str(e)) from None
    if '/' not in repo_id:
        raise HubError(f"repo id must be '<org or user>/<name>', got {repo_id!r}")


_NON_EMPTY = check(lambda v: all(v), 'a list of strings')


@dataclass
class HubConfig:
    """What one published model's repo holds: ``hub_configs/<name>.yaml``."""
    model: str
    repo_id: str
    license: str = DEFAULT_LICENSE
    datasets: List[str] = field(default_factory=list, metadata=_NON_EMPTY)
    metrics: List[Result] = field(default_factory=list)
    checkpoint: Optional[Path] = None  # training output dir holding the weights to publish
    description: str = ''
    tags: List[str] = field(default_factory=list, metadata=_NON_EMPTY)
    path: Optional[Path] = field(default=None, metadata=INTERNAL)  # the YAML file it was read from


def load_hub_config(path) -> HubConfig:
    """Read and validate ``hub_configs/<name>.yaml``; errors name the file and the bad key."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise HubConfigError(f"hub config not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HubConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        config = build(HubConfig, data if data is not None else [], SCHEMA)
    except HubConfigError as e:
        raise HubConfigError(f"{path}: {e}") from None
    if config.model not in models.zoo_names():
        raise HubConfigError(f"{path}: 'model' {config.model!r} is not a registered zoo model; "
                             f"allowed: {', '.join(models.zoo_names())}")
    try:
        check_repo_id(config.repo_id)
    except HubError as e:
        raise HubConfigError(f"{path}: 'repo_id': {e}") from None
    checkpoint = None if config.checkpoint is None else path.parent / config.checkpoint
    return dataclasses.replace(config, checkpoint=checkpoint, path=path)


def load_hub_configs(hub_configs_dir) -> List[HubConfig]:
    """Every ``*.yaml`` hub config of a folder, sorted by file name."""
    folder = Path(hub_configs_dir)
    if not folder.is_dir():
        raise HubConfigError(f"hub configs folder not found: {folder}")
    return [load_hub_config(p) for p in sorted(folder.glob('*.yaml'))]


def hub_dataset_ids(names: Iterable[str]) -> List[str]:
    """The names that can be Hub dataset ids (the card's ``datasets:`` links them); descriptions of
    data with no Hub id, and the embedded digits, stay in the card's results only."""
    ids = []
    for name in names:
        if name == DIGITS:
            continue
        try:
            validate_repo_id(name)
        except HFValidationError:
            continue
        ids.append(name)
    return ids
