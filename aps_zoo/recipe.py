"""YAML recipes for search and retraining, validated against typed sections.

A recipe has up to five sections: ``data``, ``space``, ``search``, ``train``, ``export``,
plus ``name``, ``seed`` and ``output_dir``. Every key is checked: an unknown key or a value
of the wrong type ends with an error naming the key and what is allowed.

A recipe file may start from another: ``base: other.yaml`` (a path relative to the recipe's folder)
reads that recipe first, and the file's own keys go over it: a section merges key by key, any other
value (a list too) replaces the base's. Bases may chain; a cycle is refused.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from ._schema import INTERNAL, Schema, build, check, load_yaml
from .channels import FAMILIES, MAX_WIDTH, ChannelConfigError, network_layout


class RecipeError(ValueError):
    """A recipe that cannot be run, with the offending key in the message."""


MAX_SEED = 2 ** 32 - 1  # what numpy's and accelerate's set_seed accept

# Value checks of single keys (a null is not checked: Optional keys say "or null" in their own rule).
POSITIVE = check(lambda v: v > 0, 'positive')
POSITIVE_OR_NULL = check(lambda v: v > 0, 'positive or null')
NON_NEGATIVE = check(lambda v: v >= 0, '>= 0')
IN_OPEN_UNIT = check(lambda v: 0 < v < 1, 'in (0, 1)')
IN_UNIT = check(lambda v: 0 <= v <= 1, 'in [0, 1]')
IN_HALF_OPEN_UNIT = check(lambda v: 0 < v <= 1, 'in (0, 1]')


def _field(default, rule: dict):
    """A recipe key with its default (a callable: a factory, for lists) and its value check."""
    if callable(default):
        return field(default_factory=default, metadata=rule)
    return field(default=default, metadata=rule)


@dataclass
class DataFiles:
    """``data_files`` per split, as ``datasets.load_dataset`` takes them (a path, glob or list of either)."""
    train: Optional[Union[str, List[str]]] = None
    validation: Optional[Union[str, List[str]]] = None
    test: Optional[Union[str, List[str]]] = None


@dataclass
class DataSection:
    """Where images come from: ``digits`` (embedded), a Hub dataset id or ``datasets`` builder name, a local
    folder (imagefolder, parquet files, or a ``save_to_disk`` folder) or a single parquet/arrow file."""
    dataset: str = 'digits'
    config_name: Optional[str] = None       # load_dataset(name=...)
    revision: Optional[str] = None          # load_dataset(revision=...): a Hub branch, tag or commit
    data_files: Optional[Union[str, List[str], DataFiles]] = None  # load_dataset(data_files=...)
    num_classes: Optional[int] = _field(None, check(lambda v: v >= 2, 'at least 2'))  # needed when streaming labels that are not a ClassLabel
    image_size: int = _field(32, POSITIVE)
    val_fraction: float = _field(0.1, IN_OPEN_UNIT)
    val_size: Optional[int] = _field(None, POSITIVE)  # a stream: images taken from its head as the held-out split
    batch_size: int = _field(64, POSITIVE)
    eval_batch_size: int = _field(256, POSITIVE)
    num_workers: int = _field(0, NON_NEGATIVE)
    train_split: str = 'train'              # a split name or expression: 'train[:90%]', 'train+validation'
    test_split: str = 'test'
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    max_train_samples: Optional[int] = _field(None, POSITIVE)
    augment: bool = True
    streaming: bool = False
    test_fraction: float = _field(0.2, IN_OPEN_UNIT)  # carved from train (fixed seed) when the dataset has no test split
    crop_pct: float = _field(0.875, IN_HALF_OPEN_UNIT)  # eval: resize to size / crop_pct, centre crop (timm convention)
    train_crop_mode: str = 'rrc'            # timm: random-resized crop, or resize-keep-ratio + centre/random crop
    crop_scale: List[float] = _field(lambda: [0.08, 1.0], check(  # train crop area range
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, '[min, max] with 0 < min <= max <= 1'))
    hflip: float = _field(0.5, IN_UNIT)
    color_jitter: float = _field(0.4, NON_NEGATIVE)
    mean: List[float] = _field(lambda: [0.485, 0.456, 0.406], check(lambda v: len(v) == 3, 'three numbers (RGB)'))
    std: List[float] = _field(lambda: [0.229, 0.224, 0.225], check(
        lambda v: len(v) == 3 and all(x > 0 for x in v), 'three positive numbers (RGB)'))


@dataclass
class SpaceSection:
    """The search space: family, depth, candidate widths per layer and the meta width."""
    family: str = 'resnet_cifar'
    depth: int = 20
    candidates: List[int] = _field(lambda: [4, 8, 16, 32, 64], check(
        lambda v: len(v) > 0 and all(c > 0 for c in v), 'a non-empty list of positive widths'))
    stage_multipliers: Optional[List[float]] = None
    meta_width: Union[str, int] = _field('sum', check(lambda v: not isinstance(v, str) or v in ('sum', 'max'),
                                                      "'sum', 'max' or an integer"))
    blockwise: bool = False
    overlap: float = _field(1.0, IN_UNIT)  # initial sharing of the projections: 1 ordinal, 0 independent weights
    init_from: Optional[str] = None         # trained parent: timm name, local-dir:/hf-hub: folder or .safetensors
    init_importance: str = 'none'           # reorder the parent's channels first: none, bn_scale or l1

    def __post_init__(self):
        self.candidates = sorted(self.candidates)  # their order carries no meaning: [8, 4] is [4, 8]


@dataclass
class ControllerSection:
    """The LSTM controller and its REINFORCE updates."""
    hidden_size: int = 100
    lr: Optional[float] = _field(None, POSITIVE_OR_NULL)  # Adam's; null: POLICY_TRAVEL / the search's updates (strategies.policy_lr)
    entropy_weight: float = 4e-3
    baseline_decay: float = 0.99
    steps_per_epoch: int = _field(10, POSITIVE)  # strategy updates per search epoch (every strategy, not only reinforce)
    grad_clip: float = 5.0
    samples_per_update: int = _field(8, POSITIVE)  # architectures scored per update (leave-one-out baseline when >= 2)
    reward_images: int = _field(1024, POSITIVE)  # held-out images that score each architecture (all ranks together)


@dataclass
class EvolutionSection:
    """Aging evolution inside the band (``search.strategy: evolution``)."""
    population: int = _field(32, check(lambda v: v > 1, 'at least 2'))
    tournament: int = 8             # members drawn per parent selection; the best scored wins
    mutation_prob: float = _field(0.1, IN_HALF_OPEN_UNIT)  # per decision: redraw its option
    crossover_prob: float = _field(0.5, IN_UNIT)  # a child mixes two tournament winners decision by decision


@dataclass
class SearchSection:
    """APS search schedule and the MnasNet-style soft budget."""
    budget_macs: float = _field(2.05e7, POSITIVE)
    epochs: int = _field(600, POSITIVE)
    warmup_epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    learn_projections: bool = True   # false: projections stay at their init (frozen ordinal/independent sharing)
    # Where projections learn from after warm-up: 'penalty' (the reference code: P, Q enter the forward
    # detached and learn from the grouped orthogonality penalty alone) or 'task_and_penalty'.
    projection_grad: str = 'penalty'
    # Fraction of the post-warm-up search by which sharing should be near its end value; under 'penalty'
    # the projection lr is derived from it (aps_zoo.aps.sharing.transition_projection_lr) unless
    # projection_lr is set. Under 'task_and_penalty' the default is the reference code's lr (1e-3): the
    # derived lr, applied to the task gradient too, wrecks the supernet (docs/results.md).
    sharing_transition: float = _field(0.5, IN_HALF_OPEN_UNIT)
    projection_lr: Optional[float] = _field(None, check(lambda v: v >= 0, '>= 0 or null'))  # set: this lr, whatever sharing_transition says
    # Epoch from which the projections learn (null: the end of warm-up, as the reference code). Earlier puts
    # the sharing transition inside warm-up; on Fashion-MNIST the supernet then stopped learning on band
    # architectures for the rest of warm-up (docs/design.md#how-the-projections-learn).
    projection_start_epoch: Optional[int] = None
    # Mean sharing level at which the projections stop learning for the rest of the search (null: they learn to
    # the end, as the reference code). Checked every SHARING_CHECK_EVERY steps (aps_zoo.search.loop).
    sharing_floor: Optional[float] = _field(None, check(lambda v: 0 < v < 1, 'in (0, 1) or null'))
    orthogonal_weight: float = _field(5e-3, NON_NEGATIVE)
    orthogonal_every: int = _field(1, POSITIVE)  # the penalty and the projections' update on every k-th step only
    renormalize_projections: bool = True
    under_budget_exponent: float = 0.0
    over_budget_exponent: float = -0.1
    strategy: str = 'reinforce'     # what proposes architectures: reinforce (the paper's), random, evolution
    decode: str = 'beam'            # reinforce's proposals at decoding: its beam, or its greedy pick then samples
    decode_candidates: int = _field(100, POSITIVE)  # N architectures the strategy proposes at the end, scored on reward images
    decode_top_k: int = 8           # the best of those by that score, re-scored on the whole held-out split
    band_samples: int = _field(16, NON_NEGATIVE)  # band samples scored each search epoch next to the strategy's (a reference)
    band_train_fraction: float = _field(0.5, IN_UNIT)  # after warm-up, supernet steps on band samples (SPOS), the rest on the policy's
    max_over_budget: float = 1.02   # decoded architectures above this x budget are shrunk to fit (fit_to_budget)
    min_budget_fraction: float = _field(0.9, IN_UNIT)  # the controller samples within [this x budget, budget]
    evaluation: str = 'recalibrate'   # subnet scoring: recalibrated BN statistics, or shuffled batches
    calibration_batches: int = _field(4, POSITIVE)  # training batches the BN statistics are recomputed on
    steps_per_epoch: Optional[int] = _field(None, POSITIVE_OR_NULL)
    on_nonfinite_loss: str = 'stop'
    controller: ControllerSection = field(default_factory=ControllerSection)
    evolution: EvolutionSection = field(default_factory=EvolutionSection)


@dataclass
class TrainSection:
    """Retraining with timm's optimizer/scheduler factories."""
    epochs: int = _field(300, POSITIVE)
    opt: str = 'sgd'
    lr: float = _field(0.1, POSITIVE)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    sched: str = 'cosine'
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    label_smoothing: float = _field(0.0, check(lambda v: 0 <= v < 1, 'in [0, 1)'))
    mixup: float = _field(0.0, NON_NEGATIVE)
    cutmix: float = _field(0.0, NON_NEGATIVE)
    ema_decay: Optional[float] = _field(None, IN_OPEN_UNIT)
    grad_accum_steps: int = _field(1, POSITIVE)
    mixed_precision: Optional[str] = None   # None: the launcher's (accelerate launch --mixed_precision / config)
    batch_size: Optional[int] = _field(None, POSITIVE)
    steps_per_epoch: Optional[int] = None
    on_nonfinite_loss: str = 'stop'
    config: Optional[str] = None
    init: str = 'random'                    # 'inherited': start from the weights a search with space.init_from wrote
    sched_on_updates: bool = False          # step the LR schedule every optimizer update instead of every epoch
    select_best: bool = True                # keep the best epoch on a held-out val split; false: final weights


@dataclass
class ExportSection:
    """Where an export says it will be published, and under which license."""
    repo_id: Optional[str] = None
    license: str = 'apache-2.0'


@dataclass
class Recipe:
    """A whole experiment: data, space, search, train and export settings."""
    name: str = 'experiment'
    seed: int = _field(0, check(lambda v: 0 <= v <= MAX_SEED, f'in [0, {MAX_SEED}]'))
    output_dir: str = 'runs'
    data: DataSection = field(default_factory=DataSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    search: SearchSection = field(default_factory=SearchSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
    gpus: Optional[int] = _field(None, check(lambda v: v > 0, 'a positive integer or null'))  # GPUs (processes) the batch sizes and learning rates were set for
    source: Optional[str] = field(default=None, metadata=INTERNAL)  # the file it was read from

    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>``: the run's folder (search/ and train/ inside)."""
        return Path(self.output_dir) / self.name

    def to_dict(self) -> Dict[str, Any]:
        """Every setting, as the YAML mapping that reproduces this recipe."""
        d = dataclasses.asdict(self)
        d.pop('source')
        return d

    def to_yaml(self) -> str:
        """The recipe as YAML (what a run folder's recipe.yaml holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def recipe_schema() -> Schema:
    """The recipe's schema. The allowed values of each choice key are owned by the module that uses them;
    they are read here, when a recipe is validated (those modules import this one)."""
    from .aps.sharing import PROJECTION_GRADS
    from .data import TRAIN_CROP_MODES
    from .runs import MIXED_PRECISIONS, NONFINITE_POLICIES
    from .search.evaluation import EVALUATIONS
    from .search.strategies import DECODERS, STRATEGIES
    from .spaces.parents import IMPORTANCE
    from .train import INITS
    choices = {'space.family': FAMILIES, 'space.init_importance': IMPORTANCE, 'data.train_crop_mode': TRAIN_CROP_MODES,
               'search.strategy': tuple(STRATEGIES), 'search.decode': DECODERS, 'search.evaluation': EVALUATIONS,
               'search.projection_grad': PROJECTION_GRADS, 'search.on_nonfinite_loss': NONFINITE_POLICIES,
               'train.on_nonfinite_loss': NONFINITE_POLICIES, 'train.mixed_precision': MIXED_PRECISIONS,
               'train.init': INITS}
    return Schema(RecipeError, noun='recipe', choices=choices)



def _check_relations(r: Recipe) -> None:
    """What no single key's check sees: keys bounded by other keys, the family's depths, the width cap."""
    def need(cond: bool, key: str, what: str, value):
        if not cond:
            raise RecipeError(f"recipe key '{key}' must be {what}, got {value!r}")

    need(len(set(r.space.candidates)) == len(r.space.candidates), 'space.candidates', 'distinct widths',
         r.space.candidates)
    _check_widths(r.space)
    try:
        network_layout(r.space.family, r.space.depth)
    except ChannelConfigError as e:
        raise RecipeError(f"recipe key 'space.depth': {e}") from None
    s, t = r.search, r.train
    need(0 <= s.warmup_epochs <= s.epochs, 'search.warmup_epochs', 'between 0 and search.epochs', s.warmup_epochs)
    need(s.projection_start_epoch is None or 0 <= s.projection_start_epoch < s.epochs,
         'search.projection_start_epoch', 'in [0, search.epochs) or null', s.projection_start_epoch)
    need(0 < s.decode_top_k <= s.decode_candidates, 'search.decode_top_k',
         'between 1 and search.decode_candidates', s.decode_top_k)
    need(0 < s.evolution.tournament <= s.evolution.population, 'search.evolution.tournament',
         'between 1 and search.evolution.population', s.evolution.tournament)
    need(t.steps_per_epoch is None or (t.steps_per_epoch > 0 and t.steps_per_epoch % t.grad_accum_steps == 0),
         'train.steps_per_epoch', 'a positive multiple of train.grad_accum_steps', t.steps_per_epoch)


def _check_widths(space: SpaceSection) -> None:
    """Candidates (times each stage multiplier) within the width cap, before anything is sized from them."""
    if max(space.candidates) > MAX_WIDTH:
        raise RecipeError(f"recipe key 'space.candidates': width {max(space.candidates)} exceeds the maximum width "
                          f"{MAX_WIDTH}")
    for stage, mult in enumerate(space.stage_multipliers or (), start=1):
        if max(space.candidates) * mult > MAX_WIDTH:
            raise RecipeError(f"recipe key 'space.stage_multipliers': stage {stage} widths up to "
                              f"{max(space.candidates) * mult:g} exceed the maximum width {MAX_WIDTH}")


def check_devices(recipe: Recipe, num_processes: int, on_gpu: bool) -> None:
    """Raise if the recipe was written for more GPUs than this launch has."""
    if recipe.gpus is None:
        return
    have = num_processes if on_gpu else 0
    if have < recipe.gpus:
        import torch
        raise RecipeError(f"recipe '{recipe.name}' asks for {recipe.gpus} GPUs (key 'gpus'), but this launch has "
                          f"{have} GPU process(es) ({torch.cuda.device_count()} GPU(s) visible); run "
                          f"`accelerate launch --num_processes {recipe.gpus} ...` on such a machine, or override "
                          f"--set gpus=null and scale the batch size and learning rate")


# Keys that moved to another section: (old section, key) -> new section. Old recipes still load, with a note.
MOVED_KEYS = {('search', 'overlap'): 'space'}


def _move_old_keys(data: Any, source: Optional[str]) -> Dict[str, str]:
    """Move keys of MOVED_KEYS to their new section in ``data`` (printing a one-line note for each);
    returns {new key: old key} so that errors can name the key as the recipe wrote it."""
    moved = {}
    for (section, key), target in MOVED_KEYS.items():
        old = data.get(section) if isinstance(data, dict) else None
        if not isinstance(old, dict) or key not in old:
            continue
        new = data.get(target)
        if new is None:
            new = data[target] = {}
        if not isinstance(new, dict):
            continue  # the schema reports the bad section
        value = old.pop(key)
        if key in new and new[key] != value:
            raise RecipeError(f"recipe keys '{section}.{key}' ({value!r}) and '{target}.{key}' ({new[key]!r}) "
                              f"disagree; '{key}' is now set in '{target}' only")
        new[key] = value
        moved[f'{target}.{key}'] = f'{section}.{key}'
        if os.environ.get('RANK', '0') == '0':
            print(f"note: {source or 'recipe'}: '{section}.{key}' is now '{target}.{key}'; read it from there "
                  f"(move it in the recipe to silence this note)", file=sys.stderr)
    return moved


def recipe_from_dict(data: Dict[str, Any], source: Optional[str] = None) -> Recipe:
    """Build and validate a Recipe from a parsed YAML mapping (``data`` is not modified)."""
    data = copy.deepcopy(data)
    moved = _move_old_keys(data, source)
    try:
        recipe = build(Recipe, data, recipe_schema())
        _check_relations(recipe)
    except RecipeError as e:
        text = str(e)
        for new, old in moved.items():
            if f"'{new}'" in text:
                text += f" (written as '{old}', which moved to '{new}')"
        raise RecipeError(text) from None
    recipe.source = source
    return recipe


BASE_KEY = 'base'


def _read_mapping(path: Path) -> Dict[str, Any]:
    """The top-level mapping of one YAML recipe file; errors name the file."""
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections (name, data, space, search, train, "
                          f"...), got a {type(data).__name__}")
    return data


def merge_sections(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, any other value replaces the base's."""
    merged = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = merge_sections(base[key], value) if both else value
    return merged


class _BaseCycleError(RecipeError):
    """A ``base:`` chain that leads back to one of its files; its message already names the whole chain."""


def read_recipe_data(path, _chain: tuple = ()) -> Dict[str, Any]:
    """The mapping of a recipe file with its ``base:`` recipes (if any) merged under it, not yet validated."""
    path = Path(path)
    data = _read_mapping(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: recipe key '{BASE_KEY}' must be the path of another recipe, relative to "
                          f"{path.parent} (for example base: search_resnet20_digits.yaml), got {base!r}")
    base_path = path.parent / base
    chain = (*_chain, path)
    if base_path.resolve() in {p.resolve() for p in chain}:
        cycle = ' -> '.join(str(p) for p in (*chain, base_path))
        raise _BaseCycleError(f"{chain[0]}: recipe key '{BASE_KEY}' makes a cycle ({cycle}); a base cannot lead "
                              f"back")
    try:
        return merge_sections(read_recipe_data(base_path, chain), data)
    except _BaseCycleError:
        raise
    except RecipeError as e:
        raise RecipeError(f"{path}: recipe key '{BASE_KEY}': {e}") from None


def load_recipe(path, overrides: Optional[List[str]] = None) -> Recipe:
    """Read a YAML recipe (with its ``base:``, if any); ``overrides`` are ``section.key=value`` strings (value
    parsed as YAML)."""
    path = Path(path)
    data = read_recipe_data(path)
    for item in overrides or []:
        key, sep, value = item.partition('=')
        if not sep:
            raise RecipeError(f"override {item!r} must look like section.key=value")
        node = data
        *parents, last = key.split('.')
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: '{p}' is not a section")
        node[last] = load_yaml(value)
    try:
        return recipe_from_dict(data, source=str(path))
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None

