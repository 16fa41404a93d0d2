"""The model card of an exported model: metadata as ``ModelCardData`` with ``EvalResult``s (the
``model-index`` block, from measured results only) and a body rendered from ``card_template.md`` with
``ModelCard.from_template``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..filenames import WIDTHS_PLOT_FILE
from .. import __version__
from ..channels import ChannelConfig, NetworkLayout, uniform_widths
from ..data import DIGITS
from ..families import get_family
from ..flops import count_macs, count_params, uniform_like
from ..models.zoo import family_label, fmt_count, provenance_summary
from .configs import DEFAULT_LICENSE, hub_dataset_ids
from .results import Result
from .run_record import RunRecord

TEMPLATE = Path(__file__).with_name('card_template.md')
BASE_TAGS = ('image-classification', 'timm', 'aps-zoo', 'channel-search')
UNNAMED_REPO = '<org>/<name>'  # the card's repo id when exported without one (push refuses it)
# (Result field, model-index metric type, metric name): distinct types, so the Hub tells them apart
METRICS = (('top1', 'accuracy', 'Top-1 accuracy'), ('top5', 'top_5_accuracy', 'Top-5 accuracy'))
MAX_LABELS_SHOWN = 10
PAPER_CITATION = """@inproceedings{wang2020aps,
  title     = {Revisiting Parameter Sharing for Automatic Neural Channel Number Search},
  author    = {Wang, Jiaxing and Bai, Haoli and Wu, Jiaxiang and Shi, Xupeng and Huang, Junzhou
               and King, Irwin and Lyu, Michael R. and Cheng, Jian},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume    = {33},
  year      = {2020}
}"""
def entry_layers(layout: NetworkLayout) -> List[Tuple[str, str]]:
    """(layer name, stage from 1, '' outside the blocks) of every width entry, in forward order."""
    return [(layer.spec.name if layer.block is None else layer.name, '' if layer.stage < 0 else str(layer.stage + 1))
            for layer in layout.entry_layers()]


def _card_data(config: ChannelConfig, architecture: str, name: str, results: Sequence[Result], license: str,
               datasets: Optional[Sequence[str]], tags: Sequence[str]) -> ModelCardData:
    """The card's YAML metadata; one EvalResult per measured accuracy. ``datasets`` None: the results'
    datasets that are Hub ids."""
    eval_results = [
        EvalResult(task_type='image-classification', task_name='Image Classification', dataset_type=r.dataset,
                   dataset_name=r.dataset_label, dataset_split=r.split, metric_type=metric_type,
                   metric_name=metric, metric_value=round(getattr(r, key), 3))
        for r in results for key, metric_type, metric in METRICS if getattr(r, key) is not None]
    return ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=license,
        tags=[*BASE_TAGS, config.family.replace('_', '-'), *tags],
        datasets=hub_dataset_ids(sorted({r.dataset for r in results}) if datasets is None else datasets) or None,
        model_name=name, eval_results=eval_results or None, architecture=architecture)


def _comparison(config: ChannelConfig, results: Sequence[Result]) -> dict:
    """Template fields of the peer comparison (the family's published peers, docs/design.md#peer-results):
    shown only next to a measured ImageNet result."""
    peers = get_family(config.family).peers.get(config.depth)
    measured = [r for r in results if r.is_imagenet]
    if not peers or not measured:
        return {'peers': None, 'imagenet_top1': None}
    return {'peers': [(method, fmt_count(macs), top1) for method, macs, top1 in peers],
            'imagenet_top1': measured[0].top1}


def _widths(config: ChannelConfig) -> dict:
    """Template fields of the widths table: each layer next to the standard and the MACs-matched uniform."""
    matched = uniform_like(config)
    rows = [(name, stage, w, u, m) for (name, stage), w, u, m in zip(
        entry_layers(config.layout), config.widths, uniform_widths(config.family, config.depth), matched.widths)]
    return {'widths': rows, 'multiplier': matched.provenance['multiplier'],
            'uniform_macs': fmt_count(count_macs(matched))}


def _labels(names: Optional[Sequence[str]]) -> Optional[str]:
    """The first class names, for the card's intended-use line."""
    if not names:
        return None
    shown = ', '.join(map(str, names[:MAX_LABELS_SHOWN]))
    return shown + (f', ... ({len(names)} in all)' if len(names) > MAX_LABELS_SHOWN else '')


def build_card(config: ChannelConfig, architecture: str, repo_id: Optional[str], *, name: Optional[str] = None,
               results: Sequence[Result] = (), record: Optional[RunRecord] = None, license: str = DEFAULT_LICENSE,
               datasets: Optional[Sequence[str]] = None, description: str = '', tags: Sequence[str] = (),
               with_plot: bool = True) -> ModelCard:
    """The model card of an exported model: YAML metadata (model-index from measured results only) and body.

    ``repo_id`` None: the usage snippet names ``<org>/<name>`` and the card says it is not published yet.
    ``record``: what the training run recorded (recipe, reproduce command, training facts, labels)."""
    record = record or RunRecord()
    name = name or (repo_id or UNNAMED_REPO).split('/')[-1]
    trained = [f"{r.epochs} epochs on {r.dataset_label}" for r in results if r.epochs]
    return ModelCard.from_template(
        _card_data(config, architecture, name, results, license, datasets, tags), template_path=str(TEMPLATE),
        name=name, architecture=architecture, family=family_label(config), repo_id=repo_id or UNNAMED_REPO,
        published=repo_id is not None,
        description=description or (f"A {family_label(config)} whose per-layer channel numbers come from Affine "
                                    "Parameter Sharing (APS) channel search, packaged as a timm model by aps-zoo."),
        macs=fmt_count(count_macs(config)), params=fmt_count(count_params(config)),
        input_size='x'.join(map(str, config.input_size)), num_classes=config.num_classes,
        provenance_summary=provenance_summary(config), parent=config.provenance.get('parent'),
        parent_revision=config.provenance.get('parent_revision', 'unknown'),
        trained='trained ' + ', '.join(trained) if trained else '',
        results=list(results), **_comparison(config, results), **_widths(config),
        plot=WIDTHS_PLOT_FILE if with_plot else None,
        provenance=[(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in config.provenance.items()],
        recipe=record.recipe_text.rstrip() if record.recipe_text else None, reproduce=record.reproduce,
        evaluation=record.evaluation, training=record.training, labels=_labels(record.label_names),
        toy_data=any(r.dataset == DIGITS for r in results) or record.dataset == DIGITS,
        version=__version__, citation=PAPER_CITATION)
