"""Measured results: the ``metrics:`` of a hub config and a training run's ``results.json``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .._schema import Schema, build, check
from .errors import HubConfigError, HubError

IMAGENET_IDS = {'imagenet', 'imagenet-1k', 'imagenet1k', 'imagenet_1k', 'ilsvrc2012', 'ilsvrc/imagenet-1k',
                'timm/imagenet-1k-wds'}
DATASET_NAMES = {'imagenet-1k': 'ImageNet-1k', 'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100',
                 'digits': 'scikit-learn digits', 'fashion-mnist': 'Fashion-MNIST', 'fashion_mnist': 'Fashion-MNIST',
                 'zalando-datasets/fashion_mnist': 'Fashion-MNIST'}
SCHEMA = Schema(HubConfigError)
_ACCURACY = check(lambda v: 0 <= v <= 100, 'an accuracy in percent (0-100)')


@dataclass(frozen=True)
class Result:
    """One measured evaluation of a set of weights; accuracies in percent."""
    dataset: str = field(metadata=check(bool, 'the name of the dataset the result was measured on'))
    top1: float = field(metadata=_ACCURACY)
    top5: Optional[float] = field(default=None, metadata=_ACCURACY)
    split: Optional[str] = None
    epochs: Optional[int] = field(default=None, metadata=check(lambda v: v >= 0, 'a non-negative integer'))

    @property
    def is_imagenet(self) -> bool:
        """Whether the result was measured on ImageNet-1k (the card then compares with peer methods)."""
        return self.dataset.lower() in IMAGENET_IDS

    @property
    def dataset_label(self) -> str:
        """The dataset's display name (``cifar10`` -> ``CIFAR-10``)."""
        return DATASET_NAMES.get(self.dataset, self.dataset)


RESULT_KEYS = tuple(f.name for f in dataclasses.fields(Result))


def parse_result(data: Any, where: str, strict: bool = True) -> Result:
    """A Result from a mapping; ``strict`` rejects keys other than RESULT_KEYS (results.json may hold more).
    Errors start with ``where``."""
    try:
        return build(Result, data, SCHEMA, strict=strict)
    except HubConfigError as e:
        raise HubConfigError(f"{where}: {e}") from None


def as_results(results) -> List[Result]:
    """``results`` (None, a Result, a mapping like results.json, or a list of them) as a list of Results."""
    if results is None:
        return []
    if isinstance(results, (Result, dict)):
        results = [results]
    return [r if isinstance(r, Result) else parse_result(r, 'results', strict=False) for r in results]


def _differ(a: float, b: float) -> bool:
    """Accuracies that differ at the card's precision (0.01 points): results.json holds float32 sums, a hub
    config the rounded figure."""
    return round(a, 2) != round(b, 2)


def merge_results(*groups: Iterable[Result]) -> List[Result]:
    """One result per dataset and split, gaps (top-5, epochs) filled from repeats; different accuracies
    (at the card's 0.01-point precision) for the same dataset and split are an error."""
    merged: Dict[Tuple[str, Optional[str]], Result] = {}
    for group in groups:
        for r in group:
            old = merged.get((r.dataset, r.split))
            if old is None:
                merged[(r.dataset, r.split)] = r
                continue
            if _differ(old.top1, r.top1) or None not in (old.top5, r.top5) and _differ(old.top5, r.top5):
                raise HubError(f"two different results for {r.dataset} ({r.split or 'no split'}): {old} and {r}")
            merged[(r.dataset, r.split)] = dataclasses.replace(
                old, top5=old.top5 if old.top5 is not None else r.top5,
                epochs=old.epochs if old.epochs is not None else r.epochs)
    return list(merged.values())
