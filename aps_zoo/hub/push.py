"""Push: upload a checked export folder to the Hub, and publish every hub config with trained weights."""
from __future__ import annotations

import logging
import os
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Union

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, get_token
from huggingface_hub.errors import HfHubHTTPError

from ..filenames import CARD_FILE, HUB_CONFIG_FILE, WEIGHTS_FILE
from .. import __version__
from .card import UNNAMED_REPO
from .configs import check_repo_id, load_hub_configs
from .errors import HubError
from .export import export_run_checked
from .folder import EXPORT_FILES, REMOTE_ERRORS, CheckedFolder, check_folder, one_line

logger = logging.getLogger('aps_zoo.hub')
REQUIRED_FILES = (HUB_CONFIG_FILE, WEIGHTS_FILE)  # a folder re-saved by timm's save_for_hf has no card
TOKEN_PATTERN = re.compile(rb'hf_[A-Za-z0-9]{30,}')  # user access tokens: 'hf_' and 34 letters and digits
SCAN_CHUNK = 2 ** 20
SCAN_OVERLAP = 256  # bytes carried between chunks, longer than any token


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


def check_card(folder: Path) -> None:
    """Parse the card's YAML front matter as the Hub will (``ModelCard``); a broken block is refused here,
    before any Hub call, instead of by the server after the repo was created."""
    card = folder / CARD_FILE
    if not card.is_file():
        return
    try:
        ModelCard.load(card)
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
        raise HubError(f"{card}: the YAML metadata block of the card is not valid ({one_line(e)}); fix it "
                       f"or re-export the folder") from None


def _card_repo_ids(folder: Path) -> List[str]:
    text = (folder / CARD_FILE).read_text() if (folder / CARD_FILE).is_file() else ''
    return sorted(set(re.findall(r"hf-hub:([\w.-]+/[\w.-]+)", text)))


def push(folder: Union[str, Path, CheckedFolder], repo_id: str, *, private: bool = False,
         revision: Optional[str] = None, commit_message: Optional[str] = None, token: Optional[str] = None,
         extras: Sequence[str] = ()) -> str:
    """Upload the files of an exported folder's :func:`manifest` to ``repo_id`` (created if missing) in one
    commit and return the commit URL. A file that holds a Hub token, anywhere in the folder, or a manifest
    file that links outside it, stops the push before anything is sent.

    ``folder`` is a path (checked first) or a :class:`CheckedFolder` (already checked); it is never modified.
    The token is ``token``, else the saved ``hf auth login`` token or ``HF_TOKEN``. ``revision`` is a
    branch, created from main if missing.
    """
    check_repo_id(repo_id)
    path = folder.path if isinstance(folder, CheckedFolder) else Path(folder)
    names = manifest(path, extras)
    for name in names:  # links checked before anything is read
        _inside(path, name)
    folder = (folder if isinstance(folder, CheckedFolder) else check_folder(path)).path
    check_card(folder)
    if f'hf-hub:{UNNAMED_REPO}' in ((folder / CARD_FILE).read_text() if (folder / CARD_FILE).is_file() else ''):
        raise HubError(f"{folder} was exported without a repo id: re-export it with --repo-id {repo_id} "
                       f"(repo_id={repo_id!r}) so that its card names the repo")
    with ExitStack() as stack:
        files = {name: stack.enter_context(_open_inside(folder, name)) for name in names}
        card_ids = _card_repo_ids(folder)
        if card_ids and repo_id not in card_ids:
            raise HubError(f"{folder / CARD_FILE} was written for hf-hub:{card_ids[0]}, not {repo_id}: "
                           f"re-export with repo_id={repo_id!r}")
        token = token or get_token()
        if not token:
            raise HubError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
        _refuse_tokens(folder, files, token.encode())
        info = _commit(folder, repo_id, files, token, private=private, revision=revision,
                       message=commit_message or f"Upload {repo_id.split('/')[-1]} with aps-zoo")
    logger.info("pushed %s (%s) to %s (%s)", folder, ', '.join(files), repo_id, info.commit_url)
    return info.commit_url


def _commit(folder: Path, repo_id: str, files: Dict[str, BinaryIO], token: str, *, private: bool,
            revision: Optional[str], message: str):
    """Create the repo (and branch) if missing and commit exactly ``files``; one HubError line on failure."""
    api = HfApi(token=token, library_name='aps-zoo', library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.model_info(repo_id).private:
            raise HubError(f"{repo_id} already exists and is public; refusing a private push to it "
                           "(make it private on the Hub first, or push without --private)")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(repo_id, [CommitOperationAdd(name, f) for name, f in files.items()],
                                 commit_message=message, revision=revision)
    except REMOTE_ERRORS as e:
        raise HubError(f"push of {folder} to {repo_id} at {api.endpoint} failed: {_error_line(e, token)}; "
                       f"{folder} is unchanged") from None


def manifest(folder: Path, extras: Sequence[str] = ()) -> List[str]:
    """The files a push uploads: config.json, model.safetensors, the card, widths plot and recipe an export
    writes where present, and ``extras`` (paths inside ``folder``); nothing else."""
    optional = [name for name in EXPORT_FILES if name not in REQUIRED_FILES and os.path.lexists(folder / name)]
    for extra in extras:
        if Path(extra).is_absolute() or '..' in Path(extra).parts or not os.path.lexists(folder / extra):
            raise HubError(f"extra file {extra!r} is not a file inside {folder}")
    return list(dict.fromkeys([*REQUIRED_FILES, *optional, *(Path(e).as_posix() for e in extras)]))


def _inside(folder: Path, name: str) -> str:
    """The real path of ``folder / name``; refused when it (or a link on its way) leads outside ``folder``."""
    root, target = os.path.realpath(folder), os.path.realpath(folder / name)
    if os.path.commonpath([root, target]) != root:
        raise HubError(f"refusing to push: {folder / name} is a link to {target}, outside {folder}")
    return target


def _open_inside(folder: Path, name: str) -> BinaryIO:
    """``folder / name`` opened for reading (its real path, links checked again, not followed at the end)."""
    target, path = _inside(folder, name), folder / name
    try:
        return os.fdopen(os.open(target, os.O_RDONLY | os.O_NOFOLLOW), 'rb')
    except OSError as e:
        raise HubError(f"cannot read {path}: {e.strerror}") from None


def _token_in(f: BinaryIO, token: bytes) -> Optional[str]:
    """'your Hub token' or 'a Hub token (hf_...)' if the file holds one (read in chunks, left rewound), else None."""
    tail = b''
    try:
        while True:
            chunk = f.read(SCAN_CHUNK)
            if not chunk:
                return None
            data = tail + chunk
            if token in data:
                return 'your Hub token'
            if TOKEN_PATTERN.search(data):
                return 'a Hub token (hf_...)'
            tail = data[-SCAN_OVERLAP:]
    finally:
        f.seek(0)


def _refuse_tokens(folder: Path, files: Dict[str, BinaryIO], token: bytes) -> None:
    """Refuse, naming the file, a manifest file or any other file in ``folder`` (any depth) holding a token.
    Links outside the manifest are neither read nor pushed."""
    for name, f in files.items():
        found = _token_in(f, token)
        if found:
            raise HubError(f"refusing to push: {folder / name} contains {found}; remove it first")
    for root, _, names in os.walk(folder):  # does not enter linked folders
        for path in (Path(root) / n for n in names):
            if path.relative_to(folder).as_posix() in files or path.is_symlink():
                continue
            with path.open('rb') as f:
                found = _token_in(f, token)
            if found:
                raise HubError(f"refusing to push: {path} contains {found}; remove it from {folder} (every file "
                               "in the folder is checked, not only the uploaded ones)")


def push_all(hub_configs_dir, *, private: bool = False, revision: Optional[str] = None,
             commit_message: Optional[str] = None, token: Optional[str] = None) -> List[Dict[str, str]]:
    """Export and push every hub config that names a trained checkpoint; skip (and report) the others.

    All configs are validated before anything is pushed. Returns one row per config:
    ``{'name', 'repo_id', 'status': 'pushed' | 'skipped', 'detail': commit URL or reason}``.
    """
    outcomes = []
    for cfg in load_hub_configs(hub_configs_dir):
        row = {'name': cfg.model, 'repo_id': cfg.repo_id}
        if cfg.checkpoint is None or not (cfg.checkpoint / WEIGHTS_FILE).is_file():
            where = f'{cfg.checkpoint} has no {WEIGHTS_FILE}' if cfg.checkpoint else 'no checkpoint in the hub config'
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
