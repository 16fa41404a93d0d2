"""The zoo as people read it: labels for a ChannelConfig's family and provenance, and the zoo table
(`aps-zoo list`) of the published models with their MACs, parameters and best measured top-1."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List

from ..channels import ChannelConfig
from ..families import get_family
from ..flops import count_macs, count_params
from ._base import zoo_config


def family_label(config: ChannelConfig) -> str:
    """The network's usual name (its family's label): 'CIFAR ResNet-20', 'ResNet-50', 'MobileNetV2'."""
    return get_family(config.family).label(config.depth)


def fmt_count(n: float) -> str:
    """A MACs or parameter count with a unit: 40.81M, 2.05G."""
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
            text += f" under a {fmt_count(float(p['budget_macs']))} MACs budget"
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


def zoo_table(published: Iterable[Any]) -> List[Dict[str, Any]]:
    """One row per published model: name, family, MACs, params, provenance, best top-1 (None where not
    measured), its dataset and repo id. ``published`` holds objects with ``model``, ``repo_id`` and
    ``metrics`` (measured results with ``top1`` and ``dataset``), as hub configs do."""
    rows = []
    for entry in published:
        config = zoo_config(entry.model)
        best = max(entry.metrics, key=lambda r: r.top1, default=None)
        rows.append({
            'name': entry.model, 'family': family_label(config), 'macs': count_macs(config),
            'params': count_params(config), 'provenance': provenance_label(config),
            'top1': best.top1 if best else None, 'dataset': best.dataset if best else None,
            'repo_id': entry.repo_id})
    return rows
