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

from ._schema import INTERNAL, Schema, build, load_yaml
from .channels import FAMILIES, MAX_WIDTH, ChannelConfigError, network_layout


class RecipeError(ValueError):
    """A recipe that cannot be run, with the offending key in the message."""


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
    num_classes: Optional[int] = None       # needed when streaming labels that are not a ClassLabel
    image_size: int = 32
    val_fraction: float = 0.1
    val_size: Optional[int] = None          # a stream: images taken from its head as the held-out split
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    train_split: str = 'train'              # a split name or expression: 'train[:90%]', 'train+validation'
    test_split: str = 'test'
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    max_train_samples: Optional[int] = None
    augment: bool = True
    streaming: bool = False
    test_fraction: float = 0.2              # carved from train (fixed seed) when the dataset has no test split
    crop_pct: float = 0.875                 # eval: resize to size / crop_pct, centre crop (timm convention)
    train_crop_mode: str = 'rrc'            # timm: random-resized crop, or resize-keep-ratio + centre/random crop
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # train crop area range
    hflip: float = 0.5
    color_jitter: float = 0.4
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class SpaceSection:
    """The search space: family, depth, candidate widths per layer and the meta width."""
    family: str = 'resnet_cifar'
    depth: int = 20
    candidates: List[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    stage_multipliers: Optional[List[float]] = None
    meta_width: Union[str, int] = 'sum'
    blockwise: bool = False
    overlap: float = 1.0            # initial sharing of the projections: 1 ordinal, 0 independent weights
    init_from: Optional[str] = None         # trained parent: timm name, local-dir:/hf-hub: folder or .safetensors
    init_importance: str = 'none'           # reorder the parent's channels first: none, bn_scale or l1

    def __post_init__(self):
        self.candidates = sorted(self.candidates)  # their order carries no meaning: [8, 4] is [4, 8]


@dataclass
class ControllerSection:
    """The LSTM controller and its REINFORCE updates."""
    hidden_size: int = 100
    lr: Optional[float] = None      # Adam's; null: POLICY_TRAVEL / the search's updates (strategies.policy_lr)
    entropy_weight: float = 4e-3
    baseline_decay: float = 0.99
    steps_per_epoch: int = 10       # strategy updates per search epoch (every strategy, not only reinforce)
    grad_clip: float = 5.0
    samples_per_update: int = 8     # architectures scored per update (leave-one-out baseline when >= 2)
    reward_images: int = 1024       # held-out images that score each architecture (all ranks together)


@dataclass
class EvolutionSection:
    """Aging evolution inside the band (``search.strategy: evolution``)."""
    population: int = 32
    tournament: int = 8             # members drawn per parent selection; the best scored wins
    mutation_prob: float = 0.1      # per decision: redraw its option
    crossover_prob: float = 0.5     # a child mixes two tournament winners decision by decision


@dataclass
class SearchSection:
    """APS search schedule and the MnasNet-style soft budget."""
    budget_macs: float = 2.05e7
    epochs: int = 600
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
    sharing_transition: float = 0.5
    projection_lr: Optional[float] = None   # set: this lr, whatever sharing_transition says
    # Epoch from which the projections learn (null: the end of warm-up, as the reference code). Earlier puts
    # the sharing transition inside warm-up; on Fashion-MNIST the supernet then stopped learning on band
    # architectures for the rest of warm-up (docs/design.md#how-the-projections-learn).
    projection_start_epoch: Optional[int] = None
    # Mean sharing level at which the projections stop learning for the rest of the search (null: they learn to
    # the end, as the reference code). Checked every SHARING_CHECK_EVERY steps (aps_zoo.search.loop).
    sharing_floor: Optional[float] = None
    orthogonal_weight: float = 5e-3
    orthogonal_every: int = 1       # the penalty and the projections' update on every k-th step only
    renormalize_projections: bool = True
    under_budget_exponent: float = 0.0
    over_budget_exponent: float = -0.1
    strategy: str = 'reinforce'     # what proposes architectures: reinforce (the paper's), random, evolution
    decode: str = 'beam'            # reinforce's proposals at decoding: its beam, or its greedy pick then samples
    decode_candidates: int = 100    # N architectures the strategy proposes at the end, scored on reward images
    decode_top_k: int = 8           # the best of those by that score, re-scored on the whole held-out split
    band_samples: int = 16          # band samples scored each search epoch next to the strategy's (a reference)
    band_train_fraction: float = 0.5  # after warm-up, supernet steps on band samples (SPOS), the rest on the policy's
    max_over_budget: float = 1.02   # decoded architectures above this x budget are shrunk to fit (fit_to_budget)
    min_budget_fraction: float = 0.9  # the controller samples within [this x budget, budget]
    evaluation: str = 'recalibrate'   # subnet scoring: recalibrated BN statistics, or shuffled batches
    calibration_batches: int = 4      # training batches the BN statistics are recomputed on
    steps_per_epoch: Optional[int] = None
    on_nonfinite_loss: str = 'stop'
    controller: ControllerSection = field(default_factory=ControllerSection)
    evolution: EvolutionSection = field(default_factory=EvolutionSection)


@dataclass
class TrainSection:
    """Retraining with timm's optimizer/scheduler factories."""
    epochs: int = 300
    opt: str = 'sgd'
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    sched: str = 'cosine'
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: Optional[float] = None
    grad_accum_steps: int = 1
    mixed_precision: Optional[str] = None   # None: the launcher's (accelerate launch --mixed_precision / config)
    batch_size: Optional[int] = None
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
    seed: int = 0
    output_dir: str = 'runs'
    data: DataSection = field(default_factory=DataSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    search: SearchSection = field(default_factory=SearchSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
    gpus: Optional[int] = None  # GPUs (processes) the batch sizes and learning rates were set for
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


MAX_SEED = 2 ** 32 - 1  # what numpy's and accelerate's set_seed accept


def _check_ranges(r: Recipe) -> None:
    def need(cond: bool, key: str, what: str, value):
        if not cond:
            raise RecipeError(f"recipe key '{key}' must be {what}, got {value!r}")

    need(0 < r.data.val_fraction < 1, 'data.val_fraction', 'in (0, 1)', r.data.val_fraction)
    need(r.data.batch_size > 0, 'data.batch_size', 'positive', r.data.batch_size)
    need(r.data.image_size > 0, 'data.image_size', 'positive', r.data.image_size)
    need(r.data.num_workers >= 0, 'data.num_workers', '>= 0', r.data.num_workers)
    need(r.data.eval_batch_size > 0, 'data.eval_batch_size', 'positive', r.data.eval_batch_size)
    need(0 < r.data.test_fraction < 1, 'data.test_fraction', 'in (0, 1)', r.data.test_fraction)
    need(0 < r.data.crop_pct <= 1, 'data.crop_pct', 'in (0, 1]', r.data.crop_pct)
    need(len(r.data.crop_scale) == 2 and 0 < r.data.crop_scale[0] <= r.data.crop_scale[1] <= 1,
         'data.crop_scale', '[min, max] with 0 < min <= max <= 1', r.data.crop_scale)
    need(0 <= r.data.hflip <= 1, 'data.hflip', 'in [0, 1]', r.data.hflip)
    need(r.data.color_jitter >= 0, 'data.color_jitter', '>= 0', r.data.color_jitter)
    need(len(r.data.mean) == 3, 'data.mean', 'three numbers (RGB)', r.data.mean)
    need(len(r.data.std) == 3 and all(v > 0 for v in r.data.std), 'data.std', 'three positive numbers (RGB)',
         r.data.std)
    need(r.data.num_classes is None or r.data.num_classes >= 2, 'data.num_classes', 'at least 2',
         r.data.num_classes)
    need(r.data.max_train_samples is None or r.data.max_train_samples > 0, 'data.max_train_samples', 'positive',
         r.data.max_train_samples)
    need(r.data.val_size is None or r.data.val_size > 0, 'data.val_size', 'positive', r.data.val_size)
    need(len(r.space.candidates) > 0 and all(c > 0 for c in r.space.candidates), 'space.candidates',
         'a non-empty list of positive widths', r.space.candidates)
    need(len(set(r.space.candidates)) == len(r.space.candidates), 'space.candidates', 'distinct widths',
         r.space.candidates)
    _check_widths(r.space)
    if isinstance(r.space.meta_width, str):
        need(r.space.meta_width in ('sum', 'max'), 'space.meta_width', "'sum', 'max' or an integer",
             r.space.meta_width)
    try:
        network_layout(r.space.family, r.space.depth)
    except ChannelConfigError as e:
        raise RecipeError(f"recipe key 'space.depth': {e}") from None
    need(0 <= r.space.overlap <= 1, 'space.overlap', 'in [0, 1]', r.space.overlap)
    need(r.search.budget_macs > 0, 'search.budget_macs', 'positive', r.search.budget_macs)
    need(r.search.epochs > 0, 'search.epochs', 'positive', r.search.epochs)
    need(r.search.steps_per_epoch is None or r.search.steps_per_epoch > 0, 'search.steps_per_epoch',
         'positive or null', r.search.steps_per_epoch)
    need(r.search.controller.steps_per_epoch > 0, 'search.controller.steps_per_epoch', 'positive',
         r.search.controller.steps_per_epoch)
    need(0 <= r.search.warmup_epochs <= r.search.epochs, 'search.warmup_epochs', 'between 0 and search.epochs',
         r.search.warmup_epochs)
    _check_strategy(r.search)
    need(0 <= r.search.min_budget_fraction <= 1, 'search.min_budget_fraction', 'in [0, 1]',
         r.search.min_budget_fraction)
    need(r.search.calibration_batches > 0, 'search.calibration_batches', 'positive', r.search.calibration_batches)
    need(r.search.orthogonal_every > 0, 'search.orthogonal_every', 'positive', r.search.orthogonal_every)
    need(0 < r.search.sharing_transition <= 1, 'search.sharing_transition', 'in (0, 1]', r.search.sharing_transition)
    need(r.search.projection_start_epoch is None or 0 <= r.search.projection_start_epoch < r.search.epochs,
         'search.projection_start_epoch', 'in [0, search.epochs) or null', r.search.projection_start_epoch)
    need(r.search.sharing_floor is None or 0 < r.search.sharing_floor < 1, 'search.sharing_floor',
         'in (0, 1) or null', r.search.sharing_floor)
    need(r.search.projection_lr is None or r.search.projection_lr >= 0, 'search.projection_lr', '>= 0 or null',
         r.search.projection_lr)
    need(r.search.orthogonal_weight >= 0, 'search.orthogonal_weight', '>= 0', r.search.orthogonal_weight)
    need(r.gpus is None or r.gpus > 0, 'gpus', 'a positive integer or null', r.gpus)
    need(0 <= r.seed <= MAX_SEED, 'seed', f'in [0, {MAX_SEED}]', r.seed)
    need(r.train.epochs > 0, 'train.epochs', 'positive', r.train.epochs)
    need(r.train.grad_accum_steps > 0, 'train.grad_accum_steps', 'positive', r.train.grad_accum_steps)
    need(r.train.batch_size is None or r.train.batch_size > 0, 'train.batch_size', 'positive', r.train.batch_size)
    need(r.train.steps_per_epoch is None or (r.train.steps_per_epoch > 0 and
                                             r.train.steps_per_epoch % r.train.grad_accum_steps == 0),
         'train.steps_per_epoch', 'a positive multiple of train.grad_accum_steps', r.train.steps_per_epoch)
    need(r.train.lr > 0, 'train.lr', 'positive', r.train.lr)
    need(0 <= r.train.label_smoothing < 1, 'train.label_smoothing', 'in [0, 1)', r.train.label_smoothing)
    need(r.train.mixup >= 0, 'train.mixup', '>= 0', r.train.mixup)
    need(r.train.cutmix >= 0, 'train.cutmix', '>= 0', r.train.cutmix)
    need(r.train.ema_decay is None or 0 < r.train.ema_decay < 1, 'train.ema_decay', 'in (0, 1)', r.train.ema_decay)


def _check_strategy(s: SearchSection) -> None:
    """Ranges of the strategy, decoding and evolution keys."""
    def need(cond: bool, key: str, what: str, value):
        if not cond:
            raise RecipeError(f"recipe key 'search.{key}' must be {what}, got {value!r}")

    need(s.decode_candidates > 0, 'decode_candidates', 'positive', s.decode_candidates)
    need(0 < s.decode_top_k <= s.decode_candidates, 'decode_top_k', 'between 1 and search.decode_candidates',
         s.decode_top_k)
    need(s.band_samples >= 0, 'band_samples', '>= 0', s.band_samples)
    need(0 <= s.band_train_fraction <= 1, 'band_train_fraction', 'in [0, 1]', s.band_train_fraction)
    need(s.controller.samples_per_update > 0, 'controller.samples_per_update', 'positive',
         s.controller.samples_per_update)
    need(s.controller.lr is None or s.controller.lr > 0, 'controller.lr', 'positive or null', s.controller.lr)
    need(s.controller.reward_images > 0, 'controller.reward_images', 'positive', s.controller.reward_images)
    need(s.evolution.population > 1, 'evolution.population', 'at least 2', s.evolution.population)
    need(0 < s.evolution.tournament <= s.evolution.population, 'evolution.tournament',
         'between 1 and search.evolution.population', s.evolution.tournament)
    need(0 < s.evolution.mutation_prob <= 1, 'evolution.mutation_prob', 'in (0, 1]', s.evolution.mutation_prob)
    need(0 <= s.evolution.crossover_prob <= 1, 'evolution.crossover_prob', 'in [0, 1]', s.evolution.crossover_prob)


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
        _check_ranges(recipe)
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

