"""Export: write a model (or a training run) as a Hub folder. The folder is built beside its target,
checked once (:func:`~aps_zoo.hub.folder.check_folder`) and swapped in when complete, with no instant at
which the target's name is missing; temp folders of an export killed mid-way are removed (and reported)
by the next export into the same target."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import timm
import torch
import yaml
from safetensors.torch import load_file
from timm.models._hub import save_config_for_hf

from ..filenames import (CARD_FILE, CHANNEL_CONFIG_FILE, HUB_CONFIG_FILE, RECIPE_FILE, RESULTS_FILE, WEIGHTS_FILE,
                         WIDTHS_PLOT_FILE)
from .. import __version__, models
from .._io import atomic_write_text, write_weights
from ..channels import ChannelConfig, ChannelConfigError
from ..models.zoo import provenance_summary
from ..plots import plot_widths
from .card import build_card
from .configs import DEFAULT_LICENSE, HubConfig, check_repo_id, load_hub_config
from .errors import HubError
from .folder import EXPORT_FILES, CheckedFolder, check_folder, check_weights, same_network
from .results import as_results, merge_results, parse_result
from .run_record import RunRecord, run_record

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


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_STALE_SUFFIXES = ('.tmp', '.old', '.link', '.v')


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS or
    file system has no such call."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), 'renameat2', None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@lru_cache(maxsize=None)
def _exchange_on_device(device: int, parent: str) -> bool:
    with tempfile.TemporaryDirectory(prefix='.aps-zoo-probe-', dir=parent) as probe:
        (Path(probe) / 'a').mkdir()
        (Path(probe) / 'b').mkdir()
        return _rename_exchange(Path(probe) / 'a', Path(probe) / 'b')


def _exchange_supported(parent: Path) -> bool:
    """Whether folders in ``parent`` can be exchanged in one step (probed once per file system)."""
    return _exchange_on_device(parent.stat().st_dev, str(parent))


def _link_swap(staging: Path, out_dir: Path) -> None:
    """Without an exchange call: ``out_dir`` is a link to a versioned folder, replaced in one rename."""
    stem = staging.name[:-len('.tmp')]
    version, link = staging.with_name(f'{stem}.v'), staging.with_name(f'{stem}.link')
    os.rename(staging, version)
    os.symlink(version.name, link)
    old = out_dir.resolve() if out_dir.is_symlink() else None
    os.replace(link, out_dir)  # atomic: the name points at the old export, then at the new one
    if old is not None and old.parent == out_dir.parent and old.name.startswith(f'.{out_dir.name}.'):
        shutil.rmtree(old)


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put the finished ``staging`` folder at ``out_dir`` with no instant at which ``out_dir`` is missing:
    a rename where nothing is there yet, else an exchange of the two folders (the old export then sits in
    ``staging`` and is removed). File systems without an exchange call get a versioned folder behind a
    link that is replaced in one rename."""
    if out_dir.is_symlink() or not _exchange_supported(out_dir.parent):
        if out_dir.exists() and not out_dir.is_symlink():
            raise HubError(f"cannot replace the folder {out_dir} in one step on this file system (no "
                           "RENAME_EXCHANGE); export into a new folder")
        _link_swap(staging, out_dir)
    elif not out_dir.exists():
        os.rename(staging, out_dir)
    elif _rename_exchange(staging, out_dir):
        shutil.rmtree(staging)
    else:
        raise HubError(f"cannot exchange {staging} and {out_dir}")


def _remove_stale(out_dir: Path) -> None:
    """Remove (and report) the temp folders of an export into ``out_dir`` that was killed mid-way."""
    current = out_dir.resolve() if out_dir.is_symlink() else None
    for path in sorted(out_dir.parent.glob(f'.{glob.escape(out_dir.name)}.*')):
        if path.suffix in _STALE_SUFFIXES and path != current:
            logger.warning("removing %s, left by an interrupted export into %s", path, out_dir)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


@contextmanager
def _export_lock(out_dir: Path) -> Iterator[None]:
    """Hold an OS lock on the parent folder: exports into one folder run one at a time."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


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


def load_line(folder) -> str:
    """The line that loads an exported folder with its weights through timm (after ``import aps_zoo``)."""
    return f"timm.create_model('local-dir:{folder}', pretrained=True)"


def weights_metadata(config: ChannelConfig, architecture: str) -> Dict[str, str]:
    """The safetensors header metadata of an export: the tensor format and where the weights come from."""
    return {'architecture': architecture, 'channel_config': json.dumps(config.to_dict()),
            'provenance': provenance_summary(config), 'aps_zoo_version': __version__}


def _write(model: torch.nn.Module, config: ChannelConfig, staging: Path, card, record: RunRecord, name: str,
           plots: bool) -> None:
    """Write the export's files into ``staging`` (readable by all: 0644): timm's config.json with the data
    config and labels of the run, weights with a metadata header, card, plot and recipe."""
    model_config = {'channel_config': config.to_dict()}
    if record.label_names:
        model_config['label_names'] = list(record.label_names)
    save_config_for_hf(model, staging / HUB_CONFIG_FILE, model_config=model_config,  # timm's save_for_hf, less weights
                       data_config={**(record.data_config or {}), 'input_size': tuple(config.input_size)})
    write_weights(model.state_dict(), staging / WEIGHTS_FILE,
                  metadata=weights_metadata(config, model.pretrained_cfg['architecture']))
    if plots:
        plot_widths(config, staging / WIDTHS_PLOT_FILE, title=f'{name}: output channels per width entry')
    if record.recipe_text:
        atomic_write_text(staging / RECIPE_FILE, record.recipe_text)
    atomic_write_text(staging / CARD_FILE, str(card))
    for path in staging.iterdir():
        path.chmod(0o644)
    staging.chmod(0o755)


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
               or model.pretrained_cfg.get('hf_hub_id'))
    if repo_id:
        check_repo_id(repo_id)
    name = repo_id.split('/')[-1] if repo_id else recipe_data.get('name') or out_dir.name
    architecture = model.pretrained_cfg['architecture']
    record = run_record(results, recipe_text, recipe_data, config, architecture)
    if isinstance(results, Mapping) and record.dataset:
        results = {**results, 'dataset': record.dataset}
    all_results = merge_results(hub_config.metrics if hub_config else [], as_results(results))
    _writable_target(out_dir)
    card = build_card(
        config, architecture, repo_id, name=name, results=all_results, record=record,
        license=(hub_config.license if hub_config else recipe_export.get('license', DEFAULT_LICENSE)),
        datasets=hub_config.datasets if hub_config else record.hub_datasets(),
        description=hub_config.description if hub_config else '', tags=hub_config.tags if hub_config else (),
        with_plot=plots)
    with _export_lock(out_dir):
        _remove_stale(out_dir)
        staging = out_dir.with_name(f'.{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp')
        staging.mkdir()
        try:
            _write(model, config, staging, card, record, name, plots)
            checked = check_folder(staging)
            _swap_in(staging, out_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    logger.info("exported %s to %s", repo_id or name, out_dir)
    return CheckedFolder(out_dir, checked.config, checked.model, out_dir / checked.weights.name)


def export(model: torch.nn.Module, out_dir, *, results=None, recipe=None, hub_config=None,
           repo_id: Optional[str] = None, plots: bool = True) -> Path:
    """Write ``model`` as a Hub folder in ``out_dir`` and return it.

    ``results``: measured results (dict like results.json, Result, or a list of them). ``recipe``: a Recipe,
    a mapping or a YAML file. ``hub_config``: a HubConfig or its YAML path; it supplies repo id, license,
    datasets, metrics and card text. The repo id is ``repo_id``, else the hub config's, else the recipe's
    ``export.repo_id``, else the registry's ``hf_hub_id`` (published zoo weights); without one the card's
    snippet names ``<org>/<name>``, marked as unpublished, and push refuses the folder. A results.json
    mapping also gives the run's preprocessing (``data_config``) and labels (``class_names``), written to
    config.json. The folder is built beside ``out_dir`` and swapped in when complete, so a failure leaves
    an existing export untouched.
    """
    return export_checked(model, out_dir, results=results, recipe=recipe, hub_config=hub_config,
                          repo_id=repo_id, plots=plots).path


def _run_model(run_dir: Path, hub_config: Optional[HubConfig]) -> torch.nn.Module:
    """The trained network of a run folder, with its weights loaded (checked against its channel config)."""
    try:
        config = ChannelConfig.load(run_dir / CHANNEL_CONFIG_FILE)
    except ChannelConfigError as e:
        raise HubError(str(e)) from None
    if hub_config is not None:
        model = timm.create_model(hub_config.model)
        if not same_network(config, model.channel_config):
            raise HubError(f"{run_dir / CHANNEL_CONFIG_FILE} is not the network of {hub_config.model} "
                           f"named by {hub_config.path}")
    else:
        model = models.create_model_from_config(config)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise HubError(f"{run_dir} has no {WEIGHTS_FILE}: train the model first (aps-zoo train)")
    check_weights(model, weights, run_dir / CHANNEL_CONFIG_FILE)
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
    if (run_dir / RESULTS_FILE).is_file():
        try:
            data = json.loads((run_dir / RESULTS_FILE).read_text())
        except json.JSONDecodeError as e:
            raise HubError(f"{run_dir / RESULTS_FILE} is not valid JSON: {e}") from None
        parse_result(data, str(run_dir / RESULTS_FILE), strict=False)  # errors name the file
        results = data
    recipe = run_dir / RECIPE_FILE if (run_dir / RECIPE_FILE).is_file() else None
    return export_checked(model, out_dir, results=results, recipe=recipe, hub_config=hub_config, repo_id=repo_id,
                          plots=plots)


def export_run(run_dir, out_dir, *, hub_config=None, repo_id: Optional[str] = None, plots: bool = True) -> Path:
    """Export a training output folder (model.safetensors, channel_config.json, optional results.json and
    recipe.yaml) with :func:`export`. With a hub config the model is built as its registered name."""
    return export_run_checked(run_dir, out_dir, hub_config=hub_config, repo_id=repo_id, plots=plots).path
