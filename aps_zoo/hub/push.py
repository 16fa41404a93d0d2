"""Push: upload a checked export folder to the Hub, and publish every hub config with trained weights."""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Union

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from .. import __version__
from .configs import check_repo_id, load_hub_configs
from .errors import HubError
from .export import export_run_checked
from .folder import CARD_NAME, REMOTE_ERRORS, WEIGHTS_NAME, CheckedFolder, check_folder, one_line

logger = logging.getLogger('aps_zoo.hub')


def _error_line(exc: BaseException, token: str) -> str:
    """One line for a failed Hub call, the token masked; a 401 says how to log in."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        text = f"HTTP {exc.response.status_code}: {exc.server_message or str(exc).splitlines()[0]}"
        if exc.response.status_code == 401:
            text += ' (log in with `hf auth login` or set HF_TOKEN to a token with write access)'
        text = ' '.join(text.split())
    else:
        text = one_line(exc)
    return text.replace(token, '***')


def _card_repo_ids(folder: Path) -> List[str]:
    text = (folder / CARD_NAME).read_text() if (folder / CARD_NAME).is_file() else ''
    return sorted(set(re.findall(r"hf-hub:([\w.-]+/[\w.-]+)", text)))


def push(folder: Union[str, Path, CheckedFolder], repo_id: str, *, private: bool = False,
         revision: Optional[str] = None, commit_message: Optional[str] = None, token: Optional[str] = None) -> str:
    """Upload an exported folder to ``repo_id`` (created if missing) and return the commit URL.

    ``folder`` is a path (checked first) or a :class:`CheckedFolder` (already checked); it is never modified.
    The token is ``token``, else the saved ``hf auth login`` token or ``HF_TOKEN``. ``revision`` is a
    branch, created from main if missing.
    """
    check_repo_id(repo_id)
    folder = (folder if isinstance(folder, CheckedFolder) else check_folder(folder)).path
    card_ids = _card_repo_ids(folder)
    if card_ids and repo_id not in card_ids:
        raise HubError(f"{folder / CARD_NAME} was written for hf-hub:{card_ids[0]}, not {repo_id}: "
                       f"re-export with repo_id={repo_id!r}")
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
    for path in folder.iterdir():
        if path.is_file() and token.encode() in path.read_bytes():
            raise HubError(f"refusing to push: {path} contains your Hub token")
    api = HfApi(token=token, library_name='aps-zoo', library_version=__version__)
    message = commit_message or f"Upload {repo_id.split('/')[-1]} with aps-zoo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.model_info(repo_id).private:
            raise HubError(f"{repo_id} already exists and is public; refusing a private push to it "
                           "(make it private on the Hub first, or push without --private)")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=message)
    except REMOTE_ERRORS as e:
        raise HubError(f"push of {folder} to {repo_id} at {api.endpoint} failed: {_error_line(e, token)}; "
                       f"{folder} is unchanged") from None
    logger.info("pushed %s to %s (%s)", folder, repo_id, info.commit_url)
    return info.commit_url


def push_all(hub_configs_dir, *, private: bool = False, revision: Optional[str] = None,
             commit_message: Optional[str] = None, token: Optional[str] = None) -> List[Dict[str, str]]:
    """Export and push every hub config that names a trained checkpoint; skip (and report) the others.

    All configs are validated before anything is pushed. Returns one row per config:
    ``{'name', 'repo_id', 'status': 'pushed' | 'skipped', 'detail': commit URL or reason}``.
    """
    outcomes = []
    for cfg in load_hub_configs(hub_configs_dir):
        row = {'name': cfg.model, 'repo_id': cfg.repo_id}
        if cfg.checkpoint is None or not (cfg.checkpoint / WEIGHTS_NAME).is_file():
            where = f'{cfg.checkpoint} has no {WEIGHTS_NAME}' if cfg.checkpoint else 'no checkpoint in the hub config'
            outcomes.append({**row, 'status': 'skipped',
                             'detail': f'no trained weights ({where}); train it with aps-zoo train and set '
                                       f'checkpoint: in {cfg.path}'})
            continue
        with tempfile.TemporaryDirectory(prefix='aps-zoo-push-') as tmp:
            folder = export_run_checked(cfg.checkpoint, Path(tmp) / cfg.model, hub_config=cfg)
            url = push(folder, cfg.repo_id, private=private, revision=revision, commit_message=commit_message,
                       token=token)
        outcomes.append({**row, 'status': 'pushed', 'detail': url})
    return outcomes
