"""What a training run recorded, as an export shows it: the recipe sections that ran (local paths left
out), the dataset as a Hub id or a short local name, the preprocessing and labels of ``results.json``,
and the command that reproduces the weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from ..filenames import CHANNEL_CONFIG_FILE
from .. import models
from ..channels import ChannelConfig
from ..data import DIGITS
from .errors import HubError

EXTRACT_CONFIG = ("python -c \"import json; json.dump(json.load(open('config.json'))['channel_config'], "
                  f"open('{CHANNEL_CONFIG_FILE}', 'w'))\"")
# results.json keys the card lists under Training, with their labels
TRAINING_FACTS = (('epochs', 'epochs'), ('best_epoch', 'weights of epoch'), ('selected_on', 'selected on'),
                  ('batch_size', 'global batch'), ('seed', 'seed'), ('num_processes', 'processes'),
                  ('mixed_precision', 'mixed precision'))


def dataset_ref(dataset: str) -> Tuple[str, bool]:
    """(name, is a Hub id) of a recipe's ``data.dataset``: a Hub id as written; ``digits`` or a local
    folder or file by its own name, never its path."""
    path = Path(dataset).expanduser()
    if dataset == DIGITS:
        return DIGITS, False
    if path.exists() or dataset.startswith(('.', '/', '~')):
        return path.resolve().name, False
    return dataset, True


def searched_here(config: ChannelConfig, recipe: Mapping[str, Any]) -> bool:
    """Whether this recipe's own search produced ``config`` (``aps-zoo run``), not only its retraining."""
    p = config.provenance
    return p.get('source') == 'search' and bool(recipe.get('name')) and p.get('recipe') == recipe['name']


@dataclass
class RunRecord:
    """The parts of a run an export writes into its config, card and recipe file."""
    recipe_text: Optional[str] = None          # the recipe file as exported (None: no recipe known)
    reproduce: Optional[str] = None            # shell lines that retrain these weights from the exported folder
    dataset: Optional[str] = None              # Hub id or short local name of the training data
    hub_dataset: bool = False
    evaluation: Optional[str] = None           # the test data as training described it, local paths shortened
    data_config: Optional[Dict[str, Any]] = None
    label_names: Optional[List[str]] = None
    training: List[Tuple[str, Any]] = field(default_factory=list)

    def hub_datasets(self) -> Optional[List[str]]:
        """The card's ``datasets:``: the Hub id of the training data, none for local data, None if unknown."""
        if self.dataset is None:
            return None
        return [self.dataset] if self.hub_dataset else []


def _exported_recipe(recipe: Dict[str, Any], config: ChannelConfig, architecture: str) -> Tuple[dict, str]:
    """The recipe as the export writes it, and the command that retrains from it in the exported folder.

    A retraining drops the ``space``/``search`` sections that did not run; ``output_dir``, a local
    ``data.dataset`` and a run-local ``train.config`` are replaced, so no local path is published."""
    searched = searched_here(config, recipe)
    out = {k: v for k, v in recipe.items() if k != 'output_dir' and (searched or k not in ('space', 'search'))}
    data, train = dict(out.get('data') or {}), dict(out.get('train') or {})
    lines, extra = [], ''
    if isinstance(data.get('dataset'), str):
        name, on_hub = dataset_ref(data['dataset'])
        if not on_hub and name != data['dataset']:
            data['dataset'], extra = name, f' --set data.dataset=<your copy of {name}>'
    zoo = models.zoo_names()
    if train.get('config') is None and architecture in zoo:
        extra = f' --config {architecture}{extra}'
    elif train.get('config') not in zoo:
        train['config'] = CHANNEL_CONFIG_FILE
        lines.append(EXTRACT_CONFIG)
    out.update({k: v for k, v in (('data', data), ('train', train)) if v})
    lines.append(f"aps-zoo {'run' if searched else 'train'} recipe.yaml{extra}")
    return out, '\n'.join(lines)


def run_record(results: Any, recipe_text: Optional[str], recipe: Dict[str, Any], config: ChannelConfig,
               architecture: str) -> RunRecord:
    """What the export shows of a run with these ``results`` (a results.json mapping, or none) and recipe."""
    record = RunRecord(recipe_text=recipe_text)
    facts = results if isinstance(results, Mapping) else {}
    record.data_config = facts.get('data_config')
    record.label_names = facts.get('class_names')
    if record.label_names and len(record.label_names) != config.num_classes:
        raise HubError(f"the results list {len(record.label_names)} class names but {config.name} has "
                       f"{config.num_classes} classes: they are not the results of this network")
    record.training = [(label, facts[key]) for key, label in TRAINING_FACTS if facts.get(key) is not None]
    record.evaluation = facts.get('dataset')
    if recipe:
        exported, record.reproduce = _exported_recipe(recipe, config, architecture)
        if exported != recipe:
            record.recipe_text = yaml.safe_dump(exported, sort_keys=False)
        source = (recipe.get('data') or {}).get('dataset')
        if isinstance(source, str):
            record.dataset, record.hub_dataset = dataset_ref(source)
            if record.evaluation and not record.hub_dataset:
                for path in {source, str(Path(source).expanduser())}:
                    record.evaluation = record.evaluation.replace(path, record.dataset)
    return record
