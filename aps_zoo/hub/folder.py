"""An exported model folder: its file names, the one check of a folder (config, network, weights) and
loading. Everything that reads an exported folder goes through :func:`check_folder`, which returns a
:class:`CheckedFolder`; callers pass that on instead of checking again. Weights are read with
safetensors only; nothing here unpickles a file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import httpx2
import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..filenames import CARD_FILE, HUB_CONFIG_FILE, RECIPE_FILE, WEIGHTS_FILE, WIDTHS_PLOT_FILE
from .._memory import check_model_memory
from ..channels import ChannelConfig, ChannelConfigError
from .errors import HubError

EXPORT_FILES = (HUB_CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, WIDTHS_PLOT_FILE, RECIPE_FILE)
# Failures of a Hub call: HTTP errors and offline mode are OSErrors, transport errors come from httpx2,
# and huggingface_hub raises ValueError for answers it rejects (bad card metadata, malformed replies).
REMOTE_ERRORS = (OSError, httpx2.HTTPError, ValueError)


@dataclass(frozen=True)
class CheckedFolder:
    """An exported folder that passed :func:`check_folder`: its ChannelConfig, the network its
    ``config.json`` builds through timm (randomly initialised) and the weights file that fits it."""
    path: Path
    config: ChannelConfig
    model: torch.nn.Module
    weights: Path

    def load(self) -> torch.nn.Module:
        """The model with the folder's weights (safetensors only), left in train mode."""
        self.model.load_state_dict(load_file(self.weights))
        return self.model


def same_network(a: ChannelConfig, b: ChannelConfig) -> bool:
    """Same layers and weight shapes (provenance and input resolution aside)."""
    return all(getattr(a, k) == getattr(b, k) for k in ('family', 'depth', 'widths', 'num_classes', 'in_chans'))


def _tensor_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    try:
        with safe_open(str(path), framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise HubError(f"{path} is not a readable safetensors file (corrupt or truncated): {e}") from None


def check_weights(model: torch.nn.Module, weights: Path, config_path: Path) -> None:
    """Raise HubError naming the file and the first layer whose weights don't fit the model (read from the
    safetensors header only, before any tensor is loaded)."""
    shapes = _tensor_shapes(weights)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise HubError(f"{weights}: layer {key!r} has shape {list(shapes[key])} but the channel config "
                           f"in {config_path} needs {list(shape)}")
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise HubError(f"{weights}: no weights for layer {missing[0]!r} ({len(missing)} missing) "
                       f"that the channel config in {config_path} has")
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise HubError(f"{weights}: layer {extra[0]!r} ({len(extra)} unexpected) is not in the network "
                       f"the channel config in {config_path} describes")


def _read_config(folder: Path) -> Tuple[dict, Optional[ChannelConfig]]:
    """``folder``'s config.json and the ChannelConfig it holds (None for a folder saved by timm's
    ``save_for_hf``, whose widths are only in ``model_args``)."""
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder")
    config_path = folder / HUB_CONFIG_FILE
    if not config_path.is_file():
        raise HubError(f"{folder} has no {HUB_CONFIG_FILE}: not an exported model folder")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HubError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or 'architecture' not in raw:
        raise HubError(f"{config_path} is not a timm config (no 'architecture')")
    if 'channel_config' not in raw:
        return raw, None
    try:
        return raw, ChannelConfig.from_dict(raw['channel_config'])
    except (ChannelConfigError, TypeError) as e:
        raise HubError(f"{config_path}: channel_config: {e}") from None


def _build(raw: dict, config: Optional[ChannelConfig], config_path: Path, timm_name: str,
           cache_dir) -> torch.nn.Module:
    """The network timm builds for ``timm_name``; it must be the one the channel config (if any) describes."""
    if not timm.is_model(raw['architecture']):
        raise HubError(f"{config_path}: architecture {raw['architecture']!r} is not registered with timm "
                       "(import aps_zoo first)")
    try:
        model = timm.create_model(timm_name, cache_dir=cache_dir)
    except (ChannelConfigError, TypeError, ValueError) as e:
        raise HubError(f"{config_path}: cannot build {raw['architecture']}: {e}") from None
    built = getattr(model, 'channel_config', None)
    if built is None and config is None:
        raise HubError(f"{config_path}: architecture {raw['architecture']} is not an aps_* model (no channel config)")
    if config is not None and (built is None or not same_network(built, config)):
        raise HubError(f"{config_path}: architecture {raw['architecture']} with its model_args builds "
                       f"{built.name if built else 'a network without channel config'} "
                       f"{list(built.widths) if built else ''}, not the channel_config's {config.name} "
                       f"{list(config.widths)}")
    return model


def check_folder(folder, timm_name: Optional[str] = None, cache_dir=None) -> CheckedFolder:
    """Check an exported folder: config.json, the network it builds through timm (``timm_name``, by default
    ``local-dir:<folder>``), a safetensors weights file that fits it (header shapes against the network built
    on the meta device), and the memory to load it. Raises HubError naming the problem.
    Without a ``channel_config`` (a folder saved by timm's ``save_for_hf``) the ChannelConfig is the one
    timm builds from ``model_args``."""
    folder = Path(folder)
    raw, config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in ('.bin', '.pth', '.pt', '.ckpt'))
        hint = f" (found {', '.join(pickles)}: pickle files are never loaded)" if pickles else ''
        raise HubError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    name = timm_name or f'local-dir:{folder}'
    with torch.device('meta'):  # shapes only: the weights file's header is compared before anything is allocated
        shapes = _build(raw, config, folder / HUB_CONFIG_FILE, name, cache_dir)
        check_weights(shapes, weights, folder / HUB_CONFIG_FILE)
    config = config or shapes.channel_config
    check_model_memory(config, str(folder / HUB_CONFIG_FILE))
    return CheckedFolder(folder, config, _build(raw, config, folder / HUB_CONFIG_FILE, name, cache_dir), weights)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, whitespace folded (the class name if it has none)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ' '.join(text.split())


def _fetch(repo: str, cache_dir=None) -> Path:
    """Download (or find in the local Hub cache) config.json and model.safetensors of ``repo[@revision]``."""
    repo_id, _, revision = repo.partition('@')
    paths = []
    for filename in (HUB_CONFIG_FILE, WEIGHTS_FILE):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir,
                                              library_name='aps-zoo')))
        except RemoteEntryNotFoundError:
            raise HubError(f"Hub repo {repo} has no {filename}"
                           + (": no weights are published for it" if filename == WEIGHTS_FILE else '')) from None
        except (LocalEntryNotFoundError, *REMOTE_ERRORS) as e:
            raise HubError(f"cannot get {filename} of Hub repo {repo}: {one_line(e)}") from None
    return paths[0].parent


def load(path_or_repo, *, cache_dir=None) -> torch.nn.Module:
    """Check, then build and load an exported model (safetensors only; the model is left in train mode).

    ``path_or_repo``: a folder, ``local-dir:<folder>``, ``hf-hub:<org>/<name>[@revision]`` or ``<org>/<name>``
    (a Hub repo, read from the local cache when ``HF_HUB_OFFLINE=1``).
    """
    spec = str(path_or_repo)
    if spec.startswith('local-dir:'):
        spec = spec[len('local-dir:'):]
    elif spec.startswith('hf-hub:') or (not Path(spec).exists() and spec.count('/') == 1):
        repo = spec[len('hf-hub:'):] if spec.startswith('hf-hub:') else spec
        return check_folder(_fetch(repo, cache_dir), f'hf-hub:{repo}', cache_dir).load()
    return check_folder(spec, f'local-dir:{spec}').load()
