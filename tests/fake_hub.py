"""A small local stand-in for the Hugging Face Hub HTTP API, for end-to-end push tests.

It answers what huggingface_hub 2.4's ``create_repo``, ``model_info``, ``create_branch`` and
``upload_folder`` send when hf_xet is off (run the client with ``HF_HUB_DISABLE_XET=1``; Xet storage has
no local stand-in):

    POST /api/repos/create                          create a model repo (409 if it exists)
    GET  /api/agent-harnesses                       agent registry the client fetches (empty here)
    GET  /api/models/<org>/<name>                   repo info (id, private, sha, files)
    POST /api/models/<org>/<name>/branch/<branch>   create a branch from main (409 if it exists)
    POST /api/validate-yaml                         check the README metadata parses
    POST /api/models/<org>/<name>/preupload/<rev>   upload mode of each file: "lfs" or "regular"
    POST /<org>/<name>.git/info/lfs/objects/batch   Git LFS batch API, "basic" transfer
    PUT  /lfs/<sha256>                              LFS upload target (content checked against the oid)
    POST /lfs/verify                                LFS verify
    POST /api/models/<org>/<name>/commit/<rev>      NDJSON commit: header, file, lfsFile, deletedFile

API calls need ``Authorization: Bearer <token>``; a wrong or missing token gets the Hub's 401. As on the
Hub, files matching the default LFS patterns, binary files and files over 10 MB must go through LFS; the
rest are sent inline in the commit. The server listens on 127.0.0.1 on a free port, caps request bodies
and stops by itself after ``lifetime`` seconds if the test has not stopped it.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import yaml

LFS_PATTERNS = ('*.safetensors', '*.bin', '*.pt', '*.pth', '*.ckpt', '*.h5', '*.onnx', '*.npz', '*.zip')
MAX_BODY = 256 * 2 ** 20
MAX_REGULAR_FILE = 10 * 2 ** 20
REPO = r'(?P<repo>[\w.-]+/[\w.-]+)'
ROUTES = (
    ('GET', r'/api/agent-harnesses', 'agent_harnesses', False),
    ('POST', r'/api/repos/create', 'create_repo', True),
    ('GET', rf'/api/models/{REPO}', 'repo_info', True),
    ('POST', rf'/api/models/{REPO}/branch/(?P<branch>[^/]+)', 'create_branch', True),
    ('POST', r'/api/validate-yaml', 'validate_yaml', True),
    ('POST', rf'/api/models/{REPO}/preupload/(?P<rev>[^/]+)', 'preupload', True),
    ('POST', rf'/{REPO}\.git/info/lfs/objects/batch', 'lfs_batch', True),
    ('PUT', r'/lfs/(?P<oid>[0-9a-f]{64})', 'lfs_put', False),  # a pre-signed storage URL: no token
    ('POST', r'/lfs/verify', 'lfs_verify', True),
    ('POST', rf'/api/models/{REPO}/commit/(?P<rev>[^/]+)', 'commit', True),
)


class HttpError(Exception):
    """An error answer: status, message (body and X-Error-Message) and optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class Commit:
    revision: str
    summary: str
    description: str
    oid: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: Dict[str, Dict[str, bytes]] = field(default_factory=lambda: {'main': {}})
    commits: List[Commit] = field(default_factory=list)


class FakeHub:
    """The server and what it stores: ``repos`` (files per branch, commits) and ``lfs`` objects by sha256."""

    def __init__(self, token: str, lifetime: float = 120.0):
        self.token = token
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}
        self.requests: List[str] = []
        self._pending: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f'http://127.0.0.1:{self._server.server_address[1]}'
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> 'FakeHub':
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])

    # ---- endpoints: each takes the parsed body and the URL groups, returns the JSON answer

    def _repo(self, repo: str) -> Repo:
        if repo not in self.repos:
            raise HttpError(404, f'Repository {repo} not found', 'RepoNotFound')
        return self.repos[repo]

    def _branch(self, repo: str, rev: str) -> Dict[str, bytes]:
        branches = self._repo(repo).branches
        if unquote(rev) not in branches:
            raise HttpError(404, f'Invalid rev id: {unquote(rev)}', 'RevisionNotFound')
        return branches[unquote(rev)]

    def agent_harnesses(self, body: dict) -> dict:
        return {'standardEnvVars': [], 'harnesses': {}}  # the client's agent detection: nothing registered

    def create_repo(self, body: dict) -> dict:
        if body.get('type') not in (None, 'model'):
            raise HttpError(400, 'this stand-in hosts model repos only')
        if not body.get('organization') or not body.get('name'):
            raise HttpError(400, 'name and organization are required')
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.repos:
            raise HttpError(409, 'You already created this model repo', url=f'{self.url}/{repo_id}')
        self.repos[repo_id] = Repo(repo_id, private=body.get('visibility') == 'private' or body.get('private') is True)
        return {'url': f'{self.url}/{repo_id}', 'name': repo_id}

    def repo_info(self, body: dict, repo: str) -> dict:
        r = self._repo(repo)
        return {'id': repo, 'private': r.private, 'sha': r.commits[-1].oid if r.commits else '0' * 40,
                'siblings': [{'rfilename': p} for p in sorted(r.branches['main'])]}

    def create_branch(self, body: dict, repo: str, branch: str) -> dict:
        r = self._repo(repo)
        if unquote(branch) in r.branches:
            raise HttpError(409, f'Branch {unquote(branch)} already exists')
        r.branches[unquote(branch)] = dict(self._branch(repo, body.get('startingPoint', 'main')))
        return {}

    def validate_yaml(self, body: dict) -> dict:
        match = re.match(r'---\n(.*?)\n---\n', body.get('content', ''), re.S)
        if not match:
            return {'errors': [], 'warnings': [{'message': 'empty or missing yaml metadata in repo card'}]}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            raise HttpError(400, f'invalid YAML metadata: {e}')
        if not isinstance(meta, dict):
            raise HttpError(400, 'YAML metadata must be a mapping')
        return {'errors': [], 'warnings': []}

    def preupload(self, body: dict, repo: str, rev: str) -> dict:
        self._branch(repo, rev)
        answer = []
        for f in body['files']:
            sample = base64.b64decode(f['sample'])
            lfs = (any(fnmatch.fnmatch(f['path'].rsplit('/', 1)[-1], p) for p in LFS_PATTERNS)
                   or f['size'] > MAX_REGULAR_FILE or b'\0' in sample)
            answer.append({'path': f['path'], 'uploadMode': 'lfs' if lfs else 'regular', 'shouldIgnore': False})
        return {'files': answer}

    def lfs_batch(self, body: dict, repo: str) -> dict:
        self._repo(repo)
        if body.get('operation') != 'upload' or 'basic' not in body.get('transfers', ['basic']):
            raise HttpError(400, 'only basic LFS uploads are served here')
        objects = []
        for obj in body['objects']:
            if obj['oid'] in self.lfs and len(self.lfs[obj['oid']]) == obj['size']:
                objects.append({'oid': obj['oid'], 'size': obj['size']})
                continue
            self._pending[obj['oid']] = obj['size']
            objects.append({'oid': obj['oid'], 'size': obj['size'], 'authenticated': True, 'actions': {
                'upload': {'href': f"{self.url}/lfs/{obj['oid']}"},
                'verify': {'href': f'{self.url}/lfs/verify'}}})
        return {'transfer': 'basic', 'objects': objects}

    def lfs_put(self, data: bytes, oid: str) -> dict:
        if oid not in self._pending:
            raise HttpError(403, 'no upload was negotiated for this object')
        if hashlib.sha256(data).hexdigest() != oid or len(data) != self._pending[oid]:
            raise HttpError(400, 'content does not match the negotiated oid and size')
        self.lfs[oid] = data
        del self._pending[oid]
        return {}

    def lfs_verify(self, body: dict) -> dict:
        stored = self.lfs.get(body.get('oid'))
        if stored is None or len(stored) != body.get('size'):
            raise HttpError(404, 'object not uploaded')
        return {}

    def commit(self, data: bytes, repo: str, rev: str) -> dict:
        files = dict(self._branch(repo, rev))
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        if not lines or lines[0].get('key') != 'header' or not lines[0]['value'].get('summary'):
            raise HttpError(400, 'a commit starts with a header holding a summary')
        header = lines[0]['value']
        for line in lines[1:]:
            key, value = line['key'], line['value']
            if key == 'file':
                if value.get('encoding') != 'base64':
                    raise HttpError(400, 'inline files must be base64')
                files[value['path']] = base64.b64decode(value['content'])
            elif key == 'lfsFile':
                stored = self.lfs.get(value['oid'])
                if stored is None or len(stored) != value['size']:
                    raise HttpError(400, f"LFS object of {value['path']} was not uploaded")
                files[value['path']] = stored
            elif key == 'deletedFile':
                if files.pop(value['path'], None) is None:
                    raise HttpError(404, f"A file with this name doesn't exist: {value['path']}", 'EntryNotFound')
            else:
                raise HttpError(400, f'unsupported commit operation {key!r}')
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        r = self.repos[repo]
        r.branches[unquote(rev)] = files
        r.commits.append(Commit(unquote(rev), header['summary'], header.get('description', ''), oid))
        return {'commitUrl': f'{self.url}/{repo}/commit/{oid}', 'commitOid': oid, 'success': True}


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._dispatch('GET')

        def do_POST(self) -> None:
            self._dispatch('POST')

        def do_PUT(self) -> None:
            self._dispatch('PUT')

        def _body(self) -> bytes:
            if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
                chunks, total = [], 0
                while True:
                    size = int(self.rfile.readline().split(b';')[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                            pass
                        return b''.join(chunks)
                    total += size
                    if total > MAX_BODY:
                        raise HttpError(413, 'request body too large')
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get('Content-Length') or 0)
            if length > MAX_BODY:
                raise HttpError(413, 'request body too large')
            return self.rfile.read(length)

        def _send(self, status: int, payload: dict, headers: Tuple[Tuple[str, str], ...] = ()) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _dispatch(self, method: str) -> None:
            path = urlsplit(self.path).path
            hub.requests.append(f'{method} {path}')
            try:
                for verb, pattern, name, needs_token in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if verb == method and match:
                        break
                else:
                    raise HttpError(404, f'no route for {method} {path}')
                data = self._body()
                if needs_token and self.headers.get('Authorization') != f'Bearer {hub.token}':
                    raise HttpError(401, 'Invalid credentials in Authorization header')
                arg = data if name in ('lfs_put', 'commit') else (json.loads(data) if data else {})
                with hub._lock:
                    answer = getattr(hub, name)(arg, **match.groupdict())
                self._send(200, answer)
            except HttpError as e:
                if e.status == 413:
                    self.close_connection = True
                headers = (('X-Error-Message', e.message),) + ((('X-Error-Code', e.code),) if e.code else ())
                self._send(e.status, {'error': e.message, **e.extra}, headers)

    return Handler
