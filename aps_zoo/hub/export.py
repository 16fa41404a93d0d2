"""Export: write a model (or a training run) as a Hub folder. The folder is built beside its target,
checked once (:func:`~aps_zoo.hub.folder.check_folder`) and swapped in when complete."""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import timm
import torch
import yaml
from safetensors.torch import load_file
from timm.models import save_for_hf

from .. import models
from .._io import atomic_write_text
from ..channels import ChannelConfig, ChannelConfigError
from ..plots import plot_widths
from ..runs import RUN_CONFIG, RUN_RECIPE, RUN_RESULTS, RUN_WEIGHTS
from .card import build_card, uniform_like
from .configs import DEFAULT_LICENSE, HubConfig, check_repo_id, load_hub_config
from .errors import HubError
from .folder import (CARD_NAME, EXPORT_FILES, PLOT_NAME, RECIPE_NAME, CheckedFolder, check_folder, check_weights,
                     same_network)
from .results import as_results, merge_results, parse_result

logger = logging.getLogger('aps_zoo.hub')


def _recipe_text(recipe) -> Optional[str]:
    if recipe is None:
        return None
    if hasattr(recipe, 'to_yaml'):
        return recipe.to_yaml()
    if isinstance(recipe, Mapping):
        return yaml.safe_dump(dict(recipe), sort_keys=False)
    path = Path(recipe)
    if not path.is_file():
        raise HubError(f"recipe file not found: {path}")
    return path.read_text()


def _recipe_data(text: Optional[str]) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError as e:
        raise HubError(f"the recipe is not valid YAML: {e}") from None
    return data if isinstance(data, dict) else {}


def _writable_target(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise HubError(f"{out_dir} exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
    if foreign:
        raise HubError(f"refusing to replace {out_dir}: it holds files an export does not write "
                       f"({', '.join(foreign[:5])}); export into a new or empty folder")


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``out_dir``; an existing folder is kept until the move is done."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    backup = out_dir.with_name(f'.{out_dir.name}.{uuid.uuid4().hex[:8]}.old')
    os.rename(out_dir, backup)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup)


def _model_config(model: torch.nn.Module, hub_config: Optional[HubConfig]) -> ChannelConfig:
    """The ChannelConfig of ``model``, which must be the hub config's zoo model when one is given."""
    config = getattr(model, 'channel_config', None)
    if not isinstance(config, ChannelConfig):
        raise HubError(f"{type(model).__name__} has no channel_config: export only aps_* models "
                       "(timm.create_model('aps_...') or aps_zoo.models.create_model_from_config)")
    if hub_config is not None and not same_network(config, models.zoo_config(hub_config.model)):
        raise HubError(f"{hub_config.path}: the model being exported is not {hub_config.model} "
                       f"(its channel config {config.name} {list(config.widths)} differs)")
    return config


def _write(model: torch.nn.Module, config: ChannelConfig, staging: Path, card, recipe_text: Optional[str],
           repo_id: str, plots: bool) -> None:
    """Write the export's files into ``staging``."""
    save_for_hf(model, staging, model_config={'channel_config': config.to_dict()},
                safe_serialization=True, data_config={'input_size': tuple(config.input_size)})
    if plots:
        matched = uniform_like(config)
        plot_widths(config.widths, staging / PLOT_NAME, reference=matched.widths,
                    reference_label=f"uniform, same MACs (x{matched.provenance['multiplier']:.2f})",
                    title=f'{repo_id.split("/")[-1]}: output channels per layer')
    if recipe_text:
        atomic_write_text(staging / RECIPE_NAME, recipe_text)
    atomic_write_text(staging / CARD_NAME, str(card))


def export_checked(model: torch.nn.Module, out_dir, *, results=None, recipe=None, hub_config=None,
                   repo_id: Optional[str] = None, plots: bool = True) -> CheckedFolder:
    """:func:`export`, returning the checked folder (for callers that go on to push it)."""
    out_dir = Path(out_dir)
    if hub_config is not None and not isinstance(hub_config, HubConfig):
        hub_config = load_hub_config(hub_config)
    config = _model_config(model, hub_config)
    recipe_text = _recipe_text(recipe)
    recipe_data = _recipe_data(recipe_text)
    recipe_export = recipe_data.get('export') if isinstance(recipe_data.get('export'), dict) else {}
    repo_id = (repo_id or (hub_config and hub_config.repo_id) or recipe_export.get('repo_id')
               or model.pretrained_cfg.get('hf_hub_id') or f"aps-zoo/{recipe_data.get('name') or out_dir.name}")
    check_repo_id(repo_id)
    all_results = merge_results(hub_config.metrics if hub_config else [], as_results(results))
    _writable_target(out_dir)
    card = build_card(
        config, model.pretrained_cfg['architecture'], repo_id, results=all_results, recipe_text=recipe_text,
        license=(hub_config.license if hub_config else recipe_export.get('license', DEFAULT_LICENSE)),
        datasets=hub_config.datasets if hub_config else (), description=hub_config.description if hub_config else '',
        tags=hub_config.tags if hub_config else (), with_plot=plots)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f'.{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp')
    staging.mkdir()
    try:
        _write(model, config, staging, card, recipe_text, repo_id, plots)
        checked = check_folder(staging)
        _swap_in(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("exported %s to %s", repo_id, out_dir)
    return CheckedFolder(out_dir, checked.config, checked.model, out_dir / checked.weights.name)


def export(model: torch.nn.Module, out_dir, *, results=None, recipe=None, hub_config=None,
           repo_id: Optional[str] = None, plots: bool = True) -> Path:
    """Write ``model`` as a Hub folder in ``out_dir`` and return it.

    ``results``: measured results (dict like results.json, Result, or a list of them). ``recipe``: a Recipe,
    a mapping or a YAML file. ``hub_config``: a HubConfig or its YAML path; it supplies repo id, license,
    datasets, metrics and card text. The repo id is ``repo_id``, else the hub config's, else the recipe's
    ``export.repo_id``, else the registry's ``hf_hub_id``, else ``aps-zoo/<recipe name or folder name>``
    (a placeholder: push checks the card names the repo it goes to). The folder is built
    beside ``out_dir`` and swapped in when complete, so a failure leaves an existing export untouched.
    """
    return export_checked(model, out_dir, results=results, recipe=recipe, hub_config=hub_config,
                          repo_id=repo_id, plots=plots).path


def _run_model(run_dir: Path, hub_config: Optional[HubConfig]) -> torch.nn.Module:
    """The trained network of a run folder, with its weights loaded (checked against its channel config)."""
    try:
        config = ChannelConfig.load(run_dir / RUN_CONFIG)
    except ChannelConfigError as e:
        raise HubError(str(e)) from None
    if hub_config is not None:
        model = timm.create_model(hub_config.model)
        if not same_network(config, model.channel_config):
            raise HubError(f"{run_dir / RUN_CONFIG} is not the network of {hub_config.model} "
                           f"named by {hub_config.path}")
    else:
        model = models.create_model_from_config(config)
    weights = run_dir / RUN_WEIGHTS
    if not weights.is_file():
        raise HubError(f"{run_dir} has no {RUN_WEIGHTS}: train the model first (aps-zoo train)")
    check_weights(model, weights, run_dir / RUN_CONFIG)
    model.load_state_dict(load_file(weights))
    return model


def export_run_checked(run_dir, out_dir, *, hub_config=None, repo_id: Optional[str] = None,
                       plots: bool = True) -> CheckedFolder:
    """:func:`export_run`, returning the checked folder (for callers that go on to push it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HubError(f"training output folder not found: {run_dir}")
    if hub_config is not None and not isinstance(hub_config, HubConfig):
        hub_config = load_hub_config(hub_config)
    model = _run_model(run_dir, hub_config)
    results = None
    if (run_dir / RUN_RESULTS).is_file():
        try:
            data = json.loads((run_dir / RUN_RESULTS).read_text())
        except json.JSONDecodeError as e:
            raise HubError(f"{run_dir / RUN_RESULTS} is not valid JSON: {e}") from None
        results = parse_result(data, str(run_dir / RUN_RESULTS), strict=False)
    recipe = run_dir / RUN_RECIPE if (run_dir / RUN_RECIPE).is_file() else None
    return export_checked(model, out_dir, results=results, recipe=recipe, hub_config=hub_config, repo_id=repo_id,
                          plots=plots)


def export_run(run_dir, out_dir, *, hub_config=None, repo_id: Optional[str] = None, plots: bool = True) -> Path:
    """Export a training output folder (model.safetensors, channel_config.json, optional results.json and
    recipe.yaml) with :func:`export`. With a hub config the model is built as its registered name."""
    return export_run_checked(run_dir, out_dir, hub_config=hub_config, repo_id=repo_id, plots=plots).path
