"""The Hub side of the zoo: export a model as a Hub folder, load one back, push it, and the hub configs.

An exported folder holds timm's ``config.json`` (plus the ``channel_config``), ``model.safetensors``,
a ``README.md`` model card, the widths plot and, when known, the recipe. Weights are read with
safetensors only; nothing here unpickles a file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import httpx2
import timm
import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.models import save_for_hf

from . import __version__, models
from .channels import ChannelConfig, ChannelConfigError, NetworkLayout, uniform_widths
from .flops import count_macs, count_params, uniform_at_budget
from ._io import atomic_write_text
from .plots import plot_widths

logger = logging.getLogger(__name__)

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
CARD_NAME = 'README.md'
PLOT_NAME = 'widths.png'
RECIPE_NAME = 'recipe.yaml'
EXPORT_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, PLOT_NAME, RECIPE_NAME)
RUN_CONFIG_NAME = 'channel_config.json'
RUN_RESULTS_NAME = 'results.json'
DEFAULT_LICENSE = 'apache-2.0'
BASE_TAGS = ('image-classification', 'timm', 'aps-zoo', 'channel-search')
# Failures of a Hub call: HTTP errors and offline mode are OSErrors, transport errors come from httpx2,
# and huggingface_hub raises ValueError for answers it rejects (bad card metadata, malformed replies).
_REMOTE_ERRORS = (OSError, httpx2.HTTPError, ValueError)

PAPER_CITATION = """@inproceedings{wang2020aps,
  title     = {Revisiting Parameter Sharing for Automatic Neural Channel Number Search},
  author    = {Wang, Jiaxing and Bai, Haoli and Wu, Jiaxiang and Shi, Xupeng and Huang, Junzhou
               and King, Irwin and Lyu, Michael R. and Cheng, Jian},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume    = {33},
  year      = {2020}
}"""

# ImageNet top-1 of peer channel-search methods, as published in those projects' own READMEs (DESIGN §4).
# Keyed by (family, depth); each row is (method, MACs, top-1 as published).
PEER_RESULTS = {
    ('resnet', 50): (('Uniform ResNet-50 0.75x', 2.3e9, '74.8'), ('MetaPruning', 2.0e9, '75.4'),
                     ('AutoSlim', 2.0e9, '75.6'), ('EagleEye', 2.06e9, '76.4'), ('DMCP', 2.2e9, '76.5')),
    ('mobilenetv2', 0): (('Uniform MobileNetV2 1.0x', 3.0e8, '72.0-72.7'), ('DMCP', 3.0e8, '73.5'),
                         ('AutoSlim', 3.05e8, '74.2')),
    ('resnet', 18): (('DMCP', 1.04e9, '69.0'),),
}
IMAGENET_IDS = {'imagenet', 'imagenet-1k', 'imagenet1k', 'imagenet_1k', 'ilsvrc2012', 'ilsvrc/imagenet-1k',
                'timm/imagenet-1k-wds'}
DATASET_NAMES = {'imagenet-1k': 'ImageNet-1k', 'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100',
                 'digits': 'scikit-learn digits'}


class HubError(RuntimeError):
    """An export, load or push that cannot go ahead; the message says what is wrong and where."""


class HubConfigError(ValueError):
    """A hub config (or measured result) that is invalid, naming the file and key."""


@dataclass(frozen=True)
class Result:
    """One measured evaluation of a set of weights; accuracies in percent."""
    dataset: str
    top1: float
    top5: Optional[float] = None
    split: Optional[str] = None
    epochs: Optional[int] = None

    @property
    def is_imagenet(self) -> bool:
        return self.dataset.lower() in IMAGENET_IDS


RESULT_KEYS = ('dataset', 'top1', 'top5', 'split', 'epochs')


def parse_result(data: Any, where: str, strict: bool = True) -> Result:
    """A Result from a mapping; ``strict`` rejects keys other than RESULT_KEYS (results.json may hold more)."""
    if not isinstance(data, Mapping):
        raise HubConfigError(f"{where}: a result must be a mapping with keys {', '.join(RESULT_KEYS)}")
    unknown = sorted(set(data) - set(RESULT_KEYS))
    if strict and unknown:
        raise HubConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(RESULT_KEYS)}")
    if not isinstance(data.get('dataset'), str) or not data['dataset']:
        raise HubConfigError(f"{where}: 'dataset' must name the dataset the result was measured on")
    for key in ('top1', 'top5'):
        value = data.get(key)
        if value is None and key == 'top5':
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise HubConfigError(f"{where}: {key!r} must be an accuracy in percent (0-100), got {value!r}")
    epochs = data.get('epochs')
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise HubConfigError(f"{where}: 'epochs' must be a non-negative integer, got {epochs!r}")
    split = data.get('split')
    if split is not None and not isinstance(split, str):
        raise HubConfigError(f"{where}: 'split' must be a string, got {split!r}")
    top5 = data.get('top5')
    return Result(data['dataset'], float(data['top1']), None if top5 is None else float(top5), split, epochs)


def _merge_results(*groups: Iterable[Result]) -> List[Result]:
    """One result per dataset and split, gaps (top-5, epochs) filled from repeats; different accuracies
    for the same dataset and split are an error."""
    merged: Dict[Tuple[str, Optional[str]], Result] = {}
    for group in groups:
        for r in group:
            old = merged.get((r.dataset, r.split))
            if old is None:
                merged[(r.dataset, r.split)] = r
                continue
            if old.top1 != r.top1 or None not in (old.top5, r.top5) and old.top5 != r.top5:
                raise HubError(f"two different results for {r.dataset} ({r.split or 'no split'}): {old} and {r}")
            merged[(r.dataset, r.split)] = dataclasses.replace(
                old, top5=old.top5 if old.top5 is not None else r.top5,
                epochs=old.epochs if old.epochs is not None else r.epochs)
    return list(merged.values())


# ---------------------------------------------------------------------------------------------- hub configs

HUB_CONFIG_KEYS = ('model', 'repo_id', 'license', 'datasets', 'metrics', 'checkpoint', 'description', 'tags')


@dataclass
class HubConfig:
    """What one published model's repo holds: ``hub_configs/<name>.yaml``."""
    model: str
    repo_id: str
    license: str = DEFAULT_LICENSE
    datasets: List[str] = field(default_factory=list)
    metrics: List[Result] = field(default_factory=list)
    checkpoint: Optional[Path] = None  # training output dir holding the weights to publish
    description: str = ''
    tags: List[str] = field(default_factory=list)
    path: Optional[Path] = None


def _str_list(data: Mapping, key: str, where: str) -> List[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise HubConfigError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    return value


def load_hub_config(path) -> HubConfig:
    """Read and validate ``hub_configs/<name>.yaml``; errors name the file and the bad key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HubConfigError(f"hub config not found: {path}") from None
    except yaml.YAMLError as e:
        raise HubConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise HubConfigError(f"{path}: a hub config must be a mapping with keys {', '.join(HUB_CONFIG_KEYS)}")
    unknown = sorted(set(data) - set(HUB_CONFIG_KEYS))
    if unknown:
        raise HubConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(HUB_CONFIG_KEYS)}")
    for key in ('model', 'repo_id'):
        if not isinstance(data.get(key), str) or not data[key]:
            raise HubConfigError(f"{path}: {key!r} is required and must be a string")
    if data['model'] not in models.zoo_names():
        raise HubConfigError(f"{path}: 'model' {data['model']!r} is not a registered zoo model; "
                             f"allowed: {', '.join(models.zoo_names())}")
    try:
        _check_repo_id(data['repo_id'])
    except HubError as e:
        raise HubConfigError(f"{path}: 'repo_id': {e}") from None
    for key in ('license', 'description'):
        if key in data and not isinstance(data[key], str):
            raise HubConfigError(f"{path}: {key!r} must be a string, got {data[key]!r}")
    metrics = data.get('metrics', [])
    if not isinstance(metrics, list):
        raise HubConfigError(f"{path}: 'metrics' must be a list of measured results")
    checkpoint = data.get('checkpoint')
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise HubConfigError(f"{path}: 'checkpoint' must be a folder path, got {checkpoint!r}")
    return HubConfig(
        model=data['model'], repo_id=data['repo_id'], license=data.get('license', DEFAULT_LICENSE),
        datasets=_str_list(data, 'datasets', str(path)),
        metrics=[parse_result(m, f"{path}: metrics[{i}]") for i, m in enumerate(metrics)],
        checkpoint=None if checkpoint is None else (path.parent / checkpoint),
        description=data.get('description', ''), tags=_str_list(data, 'tags', str(path)), path=path)


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(str(e)) from None
    if '/' not in repo_id:
        raise HubError(f"repo id must be '<org or user>/<name>', got {repo_id!r}")


def _hub_dataset_ids(names: Iterable[str]) -> List[str]:
    """The names that can be Hub dataset ids (the card's ``datasets:`` links them); descriptions of
    data with no Hub id, such as the embedded digits, stay in the card's results only."""
    ids = []
    for name in names:
        try:
            validate_repo_id(name)
        except HFValidationError:
            continue
        ids.append(name)
    return ids


def _hub_configs(hub_configs_dir) -> List[HubConfig]:
    folder = Path(hub_configs_dir)
    if not folder.is_dir():
        raise HubConfigError(f"hub configs folder not found: {folder}")
    return [load_hub_config(p) for p in sorted(folder.glob('*.yaml'))]


# ------------------------------------------------------------------------------------------ describing

def _same_network(a: ChannelConfig, b: ChannelConfig) -> bool:
    """Same layers and weight shapes (provenance and input resolution aside)."""
    return all(getattr(a, k) == getattr(b, k) for k in ('family', 'depth', 'widths', 'num_classes', 'in_chans'))


def _family_label(config: ChannelConfig) -> str:
    return {'resnet_cifar': f'CIFAR ResNet-{config.depth}', 'resnet': f'ResNet-{config.depth}',
            'mobilenetv2': 'MobileNetV2'}[config.family]


def _fmt_count(n: float) -> str:
    for scale, unit in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if n >= scale:
            return f'{n / scale:.2f}{unit}'
    return str(int(n))


def provenance_summary(config: ChannelConfig) -> str:
    """One line saying where the widths came from (the paper, a search here, or uniform scaling)."""
    p = config.provenance
    source = p.get('source')
    if source == 'paper':
        searched = f", searched by its authors on {p['dataset']}" if p.get('dataset') else ''
        return f"published in the APS paper (Wang et al., NeurIPS 2020){searched}; not searched here"
    if source == 'search':
        text = 'searched by aps-zoo with APS'
        if p.get('dataset'):
            text += f" on {p['dataset']}"
        if p.get('budget_macs'):
            text += f" under a {_fmt_count(float(p['budget_macs']))} MACs budget"
        return text
    if source == 'uniform':
        return f"uniform scaling (x{p.get('multiplier')}) of the standard network; not searched"
    return f"source: {source}" if source else 'not recorded'


def provenance_label(config: ChannelConfig) -> str:
    """Short provenance for tables: 'APS paper', 'searched (<dataset>)', 'uniform x<m>', or '-'."""
    p = config.provenance
    source = p.get('source')
    if source == 'paper':
        return 'APS paper'
    if source == 'search':
        return f"searched ({p['dataset']})" if p.get('dataset') else 'searched'
    if source == 'uniform':
        return f"uniform x{p.get('multiplier')}"
    return source or '-'


def _entry_layers(layout: NetworkLayout) -> List[Tuple[str, str]]:
    """(layer name, stage) of every width entry, in forward order (names as in ``flops.layer_table``)."""
    rows = [('stem.conv', '')]
    for i, b in enumerate(layout.blocks):
        convs = {'basic': ('conv1', 'conv2'), 'bottleneck': ('conv1', 'conv2', 'conv3')}.get(
            b.kind, ('conv_pw', 'conv_dw', 'conv_pwl')[-len(b.entries):])
        rows += [(f'blocks.{i}.{c}', str(b.stage + 1)) for c in convs]
    if layout.head_entry is not None:
        rows.append(('head.conv', ''))
    return rows


def _uniform_like(config: ChannelConfig) -> ChannelConfig:
    """The family's standard network scaled by one multiplier to the MACs of ``config``."""
    return uniform_at_budget(config.family, config.depth, count_macs(config), num_classes=config.num_classes,
                             input_size=config.input_size)


# ---------------------------------------------------------------------------------------------- export

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


def _as_results(results) -> List[Result]:
    if results is None:
        return []
    if isinstance(results, (Result, Mapping)):
        results = [results]
    return [r if isinstance(r, Result) else parse_result(r, 'results', strict=False) for r in results]


def _usage_snippet(repo_id: str) -> str:
    return f"""```python
import aps_zoo  # registers the aps_* architectures with timm
import timm
import torch

model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()
data_config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**data_config)  # for PIL images
with torch.inference_mode():
    logits = model(torch.randn(1, *data_config['input_size']))
print(logits.softmax(dim=-1).topk(min(5, model.num_classes)))
```"""


def _results_section(results: Sequence[Result]) -> str:
    if not results:
        return ("**No results measured yet.** These weights have not been evaluated, so no accuracy is "
                "reported; treat them as untrained until a measured result is published here.")
    lines = ['| Dataset | Split | Top-1 (%) | Top-5 (%) | Epochs |', '|---|---|---|---|---|']
    for r in results:
        top5 = '' if r.top5 is None else f'{r.top5:.2f}'
        lines.append(f"| {DATASET_NAMES.get(r.dataset, r.dataset)} | {r.split or ''} | {r.top1:.2f} | {top5} | "
                     f"{'' if r.epochs is None else r.epochs} |")
    return '\n'.join(lines)


def _comparison_section(config: ChannelConfig, results: Sequence[Result], macs: int) -> Optional[str]:
    peers = PEER_RESULTS.get((config.family, config.depth))
    measured = [r for r in results if r.is_imagenet]
    if not peers or not measured:
        return None
    lines = ['| Method | MACs | ImageNet top-1 (%) | Source |', '|---|---|---|---|',
             f'| **this model** | {_fmt_count(macs)} | {measured[0].top1:.2f} | measured by aps-zoo |']
    lines += [f'| {name} | {_fmt_count(m)} | {top1} | reported in that project\'s README |'
              for name, m, top1 in peers]
    return ('Other channel-search methods at a similar budget. Their figures are the ones published in '
            'each project\'s own README, not measured by aps-zoo.\n\n' + '\n'.join(lines))


def _widths_section(config: ChannelConfig, with_plot: bool) -> str:
    matched = _uniform_like(config)
    multiplier = matched.provenance['multiplier']
    standard = uniform_widths(config.family, config.depth)
    head = f'![Per-layer widths against the uniform network]({PLOT_NAME})\n\n' if with_plot else ''
    rows = [f'| {i} | `{name}` | {stage} | {w} | {u} | {m} |' for i, ((name, stage), w, u, m) in
            enumerate(zip(_entry_layers(config.layout), config.widths, standard, matched.widths))]
    return (f"{head}Output channels of every conv in forward order, next to the standard {_family_label(config)} "
            f"(x1.0) and to the uniform network scaled to the same MACs (x{multiplier:.2f}, "
            f"{_fmt_count(count_macs(matched))} MACs).\n\n<details>\n<summary>Widths table "
            f"({len(config.widths)} layers)</summary>\n\n| # | Layer | Stage | Width | Uniform x1.0 | "
            f"Uniform x{multiplier:.2f} |\n|---|---|---|---|---|---|\n" + '\n'.join(rows) + '\n\n</details>')


def _provenance_section(config: ChannelConfig) -> str:
    lines = [f'Channel numbers: {provenance_summary(config)}.']
    if config.provenance:
        lines.append('')
        lines += [f'- **{k}:** {json.dumps(v) if isinstance(v, (dict, list)) else v}'
                  for k, v in config.provenance.items()]
    return '\n'.join(lines)


def build_card(config: ChannelConfig, architecture: str, repo_id: str, *, results: Sequence[Result] = (),
               recipe_text: Optional[str] = None, license: str = DEFAULT_LICENSE,
               datasets: Sequence[str] = (), description: str = '', tags: Sequence[str] = (),
               with_plot: bool = True) -> ModelCard:
    """The model card of an exported model: YAML metadata (model-index from measured results only) and body."""
    name = repo_id.split('/')[-1]
    macs, params = count_macs(config), count_params(config)
    eval_results = []
    for r in results:
        for metric, value in (('Top-1 accuracy', r.top1), ('Top-5 accuracy', r.top5)):
            if value is not None:
                eval_results.append(EvalResult(
                    task_type='image-classification', task_name='Image Classification', dataset_type=r.dataset,
                    dataset_name=DATASET_NAMES.get(r.dataset, r.dataset), dataset_split=r.split,
                    metric_type='accuracy', metric_name=metric, metric_value=round(value, 3)))
    data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=license,
        tags=[*BASE_TAGS, config.family.replace('_', '-'), *tags],
        datasets=_hub_dataset_ids(list(datasets) or sorted({r.dataset for r in results})) or None,
        model_name=name, eval_results=eval_results or None, architecture=architecture)
    trained = [f"{r.epochs} epochs on {DATASET_NAMES.get(r.dataset, r.dataset)}" for r in results if r.epochs]
    summary = [
        f"- **Architecture:** timm `{architecture}` ({_family_label(config)})",
        f"- **MACs:** {_fmt_count(macs)} at {'x'.join(map(str, config.input_size))} "
        "(all convs and the classifier, the timm/fvcore convention)",
        f"- **Parameters:** {_fmt_count(params)}",
        f"- **Classes:** {config.num_classes}",
        f"- **Channel numbers:** {provenance_summary(config)}",
        f"- **Weights:** {'trained ' + ', '.join(trained) if trained else 'see Results'}",
    ]
    sections = [
        f"# {name}",
        description or (f"A {_family_label(config)} whose per-layer channel numbers come from Affine Parameter "
                        "Sharing (APS) channel search, packaged as a timm model by aps-zoo."),
        '\n'.join(summary),
        f"## Results\n\n{_results_section(results)}",
    ]
    comparison = _comparison_section(config, results, macs)
    if comparison:
        sections.append(f"## Comparison\n\n{comparison}")
    sections += [
        f"## Channel widths\n\n{_widths_section(config, with_plot)}",
        f"## Search provenance\n\n{_provenance_section(config)}",
        "## Recipe\n\n" + (f"```yaml\n{recipe_text.rstrip()}\n```" if recipe_text else
                           "No recipe was recorded with these weights."),
        "## Usage\n\nNeeds the `aps-zoo` package, which registers the `aps_*` architectures with timm. "
        "A local copy of this folder loads with `timm.create_model('local-dir:<folder>', pretrained=True)`.\n\n"
        + _usage_snippet(repo_id),
        f"## Citation\n\n```bibtex\n{PAPER_CITATION}\n```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + '\n\n'.join(sections) + '\n')


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
    out_dir = Path(out_dir)
    config = getattr(model, 'channel_config', None)
    if not isinstance(config, ChannelConfig):
        raise HubError(f"{type(model).__name__} has no channel_config: export only aps_* models "
                       "(timm.create_model('aps_...') or aps_zoo.models.create_model_from_config)")
    if hub_config is not None and not isinstance(hub_config, HubConfig):
        hub_config = load_hub_config(hub_config)
    if hub_config is not None and not _same_network(config, models.zoo_config(hub_config.model)):
        raise HubError(f"{hub_config.path}: the model being exported is not {hub_config.model} "
                       f"(its channel config {config.name} {list(config.widths)} differs)")
    recipe_text = _recipe_text(recipe)
    recipe_data = _recipe_data(recipe_text)
    recipe_export = recipe_data.get('export') if isinstance(recipe_data.get('export'), dict) else {}
    repo_id = (repo_id or (hub_config and hub_config.repo_id) or recipe_export.get('repo_id')
               or model.pretrained_cfg.get('hf_hub_id') or f"aps-zoo/{recipe_data.get('name') or out_dir.name}")
    _check_repo_id(repo_id)
    all_results = _merge_results(hub_config.metrics if hub_config else [], _as_results(results))
    _writable_target(out_dir)

    architecture = model.pretrained_cfg['architecture']
    card = build_card(
        config, architecture, repo_id, results=all_results, recipe_text=recipe_text,
        license=(hub_config.license if hub_config else recipe_export.get('license', DEFAULT_LICENSE)),
        datasets=hub_config.datasets if hub_config else (), description=hub_config.description if hub_config else '',
        tags=hub_config.tags if hub_config else (), with_plot=plots)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f'.{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp')
    staging.mkdir()
    try:
        save_for_hf(model, staging, model_config={'channel_config': config.to_dict()},
                    safe_serialization=True, data_config={'input_size': tuple(config.input_size)})
        if plots:
            plot_widths(config, staging / PLOT_NAME, title=f'{repo_id.split("/")[-1]}: output channels per width entry')
        if recipe_text:
            atomic_write_text(staging / RECIPE_NAME, recipe_text)
        atomic_write_text(staging / CARD_NAME, str(card))
        check_folder(staging)
        _swap_in(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("exported %s to %s", repo_id, out_dir)
    return out_dir


def export_run(run_dir, out_dir, *, hub_config=None, repo_id: Optional[str] = None, plots: bool = True) -> Path:
    """Export a training output folder (model.safetensors, channel_config.json, optional results.json and
    recipe.yaml) with :func:`export`. With a hub config the model is built as its registered name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HubError(f"training output folder not found: {run_dir}")
    try:
        config = ChannelConfig.load(run_dir / RUN_CONFIG_NAME)
    except ChannelConfigError as e:
        raise HubError(str(e)) from None
    if hub_config is not None and not isinstance(hub_config, HubConfig):
        hub_config = load_hub_config(hub_config)
    if hub_config is not None:
        model = timm.create_model(hub_config.model)
        if not _same_network(config, model.channel_config):
            raise HubError(f"{run_dir / RUN_CONFIG_NAME} is not the network of {hub_config.model} "
                           f"named by {hub_config.path}")
    else:
        model = models.create_model_from_config(config)
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise HubError(f"{run_dir} has no {WEIGHTS_NAME}: train the model first (aps-zoo train)")
    _check_weights(model, weights, run_dir / RUN_CONFIG_NAME)
    model.load_state_dict(load_file(weights))
    results = None
    if (run_dir / RUN_RESULTS_NAME).is_file():
        try:
            data = json.loads((run_dir / RUN_RESULTS_NAME).read_text())
            results = parse_result(data, str(run_dir / RUN_RESULTS_NAME), strict=False)
        except json.JSONDecodeError as e:
            raise HubError(f"{run_dir / RUN_RESULTS_NAME} is not valid JSON: {e}") from None
    recipe = run_dir / RECIPE_NAME if (run_dir / RECIPE_NAME).is_file() else None
    return export(model, out_dir, results=results, recipe=recipe, hub_config=hub_config, repo_id=repo_id,
                  plots=plots)


# ------------------------------------------------------------------------------------------------ load

def _tensor_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    try:
        with safe_open(str(path), framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise HubError(f"{path} is not a readable safetensors file (corrupt or truncated): {e}") from None


def _check_weights(model: torch.nn.Module, weights: Path, config_path: Path) -> None:
    """Raise HubError naming the file and the first layer whose weights don't fit the model."""
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


def _checked_model(folder: Path, timm_name: str, cache_dir=None) -> Tuple[torch.nn.Module, Path, ChannelConfig]:
    """Build the network ``folder``'s config.json describes (through timm) and check the weights fit it.

    Returns the (randomly initialised) model, the weights file and the folder's ChannelConfig.
    """
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise HubError(f"{folder} has no {CONFIG_NAME}: not an exported model folder")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HubError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or 'architecture' not in raw:
        raise HubError(f"{config_path} is not a timm config (no 'architecture')")
    if 'channel_config' not in raw:
        raise HubError(f"{config_path} has no 'channel_config': not an aps-zoo export")
    try:
        config = ChannelConfig.from_dict(raw['channel_config'])
    except (ChannelConfigError, TypeError) as e:
        raise HubError(f"{config_path}: channel_config: {e}") from None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in ('.bin', '.pth', '.pt', '.ckpt'))
        hint = f" (found {', '.join(pickles)}: pickle files are never loaded)" if pickles else ''
        raise HubError(f"{folder} has no {WEIGHTS_NAME}{hint}")
    if not timm.is_model(raw['architecture']):
        raise HubError(f"{config_path}: architecture {raw['architecture']!r} is not registered with timm "
                       "(import aps_zoo first)")
    try:
        model = timm.create_model(timm_name, cache_dir=cache_dir)
    except (ChannelConfigError, TypeError, ValueError) as e:
        raise HubError(f"{config_path}: cannot build {raw['architecture']}: {e}") from None
    built = getattr(model, 'channel_config', None)
    if built is None or not _same_network(built, config):
        raise HubError(f"{config_path}: architecture {raw['architecture']} with its model_args builds "
                       f"{built.name if built else 'a network without channel config'} "
                       f"{list(built.widths) if built else ''}, not the channel_config's {config.name} "
                       f"{list(config.widths)}")
    _check_weights(model, weights, config_path)
    return model, weights, config


def check_folder(folder) -> ChannelConfig:
    """Validate an exported folder (config, weights file, weights against config); return its ChannelConfig."""
    folder = Path(folder)
    return _checked_model(folder, f'local-dir:{folder}')[2]


def _one_line(exc: BaseException, token: Optional[str] = None) -> str:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        text = f"HTTP {exc.response.status_code}: {exc.server_message or str(exc).splitlines()[0]}"
        if exc.response.status_code == 401:
            text += ' (log in with `hf auth login` or set HF_TOKEN to a token with write access)'
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = ' '.join(text.split())
    return text.replace(token, '***') if token else text


def _fetch(repo: str, cache_dir=None) -> Path:
    """Download (or find in the local Hub cache) config.json and model.safetensors of ``repo[@revision]``."""
    repo_id, _, revision = repo.partition('@')
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir,
                                              library_name='aps-zoo')))
        except RemoteEntryNotFoundError:
            raise HubError(f"Hub repo {repo} has no {filename}"
                           + (": no weights are published for it" if filename == WEIGHTS_NAME else '')) from None
        except (LocalEntryNotFoundError, *_REMOTE_ERRORS) as e:
            raise HubError(f"cannot get {filename} of Hub repo {repo}: {_one_line(e)}") from None
    return paths[0].parent


def load(path_or_repo, *, cache_dir=None) -> torch.nn.Module:
    """Validate, then build and load an exported model (safetensors only; the model is left in train mode).

    ``path_or_repo``: a folder, ``local-dir:<folder>``, ``hf-hub:<org>/<name>[@revision]`` or ``<org>/<name>``
    (a Hub repo, read from the local cache when ``HF_HUB_OFFLINE=1``).
    """
    spec = str(path_or_repo)
    if spec.startswith('local-dir:'):
        spec = spec[len('local-dir:'):]
    elif spec.startswith('hf-hub:') or (not Path(spec).exists() and spec.count('/') == 1):
        repo = spec[len('hf-hub:'):] if spec.startswith('hf-hub:') else spec
        model, weights, _ = _checked_model(_fetch(repo, cache_dir), f'hf-hub:{repo}', cache_dir)
        model.load_state_dict(load_file(weights))
        return model
    model, weights, _ = _checked_model(Path(spec), f'local-dir:{spec}')
    model.load_state_dict(load_file(weights))
    return model


# ------------------------------------------------------------------------------------------------ push

def _card_repo_ids(folder: Path) -> List[str]:
    text = (folder / CARD_NAME).read_text() if (folder / CARD_NAME).is_file() else ''
    return sorted(set(re.findall(r"hf-hub:([\w.-]+/[\w.-]+)", text)))


def push(folder, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
         commit_message: Optional[str] = None, token: Optional[str] = None) -> str:
    """Upload an exported folder to ``repo_id`` (created if missing) and return the commit URL.

    The token is ``token``, else the saved ``hf auth login`` token or ``HF_TOKEN``. ``revision`` is a
    branch, created from main if missing. The folder is validated first and never modified.
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    check_folder(folder)
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
    except _REMOTE_ERRORS as e:
        raise HubError(f"push of {folder} to {repo_id} at {api.endpoint} failed: {_one_line(e, token)}; "
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
    for cfg in _hub_configs(hub_configs_dir):
        row = {'name': cfg.model, 'repo_id': cfg.repo_id}
        if cfg.checkpoint is None or not (cfg.checkpoint / WEIGHTS_NAME).is_file():
            where = f'{cfg.checkpoint} has no {WEIGHTS_NAME}' if cfg.checkpoint else 'no checkpoint in the hub config'
            outcomes.append({**row, 'status': 'skipped',
                             'detail': f'no trained weights ({where}); train it with aps-zoo train and set '
                                       f'checkpoint: in {cfg.path}'})
            continue
        with tempfile.TemporaryDirectory(prefix='aps-zoo-push-') as tmp:
            folder = export_run(cfg.checkpoint, Path(tmp) / cfg.model, hub_config=cfg)
            url = push(folder, cfg.repo_id, private=private, revision=revision, commit_message=commit_message,
                       token=token)
        outcomes.append({**row, 'status': 'pushed', 'detail': url})
    return outcomes


# ------------------------------------------------------------------------------------------------ list

DEFAULT_HUB_CONFIGS = Path(__file__).resolve().parent.parent / 'hub_configs'


def zoo_table(hub_configs_dir=DEFAULT_HUB_CONFIGS) -> List[Dict[str, Any]]:
    """One row per hub config: name, family, MACs, params, provenance, top-1 (None where not measured)."""
    rows = []
    for cfg in _hub_configs(hub_configs_dir):
        config = models.zoo_config(cfg.model)
        best = max(cfg.metrics, key=lambda r: r.top1, default=None)
        rows.append({
            'name': cfg.model, 'family': _family_label(config), 'macs': count_macs(config),
            'params': count_params(config), 'provenance': provenance_label(config),
            'top1': best.top1 if best else None, 'dataset': best.dataset if best else None,
            'repo_id': cfg.repo_id})
    return rows
