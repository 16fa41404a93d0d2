"""The Hub side of the zoo: export a model as a Hub folder, check and load one back, push it, and the
hub configs behind `aps-zoo push --all` / `list`.

An exported folder holds timm's ``config.json`` (plus the ``channel_config``), ``model.safetensors``,
a ``README.md`` model card, the widths plot and, when known, the recipe. Modules: ``results``
(measured results), ``configs`` (hub configs), ``card`` (the model card), ``folder`` (the one check of
an exported folder, and loading), ``export`` and ``push``.
"""
from ..models.zoo import provenance_label, provenance_summary
from ..models.zoo import zoo_table as _zoo_table
from .card import BASE_TAGS, PAPER_CITATION, build_card
from .configs import DEFAULT_HUB_CONFIGS, DEFAULT_LICENSE, HubConfig, load_hub_config, load_hub_configs
from .errors import HubConfigError, HubError
from .export import export, export_run, load_line
from .folder import EXPORT_FILES, CheckedFolder, check_folder, load
from .push import push, push_all
from .results import DATASET_NAMES, IMAGENET_IDS, RESULT_KEYS, Result, parse_result

__all__ = [
    'BASE_TAGS', 'DATASET_NAMES', 'DEFAULT_HUB_CONFIGS', 'DEFAULT_LICENSE',
    'EXPORT_FILES', 'IMAGENET_IDS', 'PAPER_CITATION', 'RESULT_KEYS',
    'CheckedFolder', 'HubConfig', 'HubConfigError', 'HubError', 'Result', 'build_card',
    'check_folder', 'export', 'export_run', 'load', 'load_hub_config', 'load_line', 'load_hub_configs', 'parse_result',
    'provenance_label', 'provenance_summary', 'push', 'push_all', 'zoo_table',
]


def zoo_table(hub_configs_dir=DEFAULT_HUB_CONFIGS):
    """The zoo table (:func:`aps_zoo.models.zoo.zoo_table`) of the hub configs in ``hub_configs_dir``."""
    return _zoo_table(load_hub_configs(hub_configs_dir))
