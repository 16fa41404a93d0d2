"""pytest plugin for running timm's own ``tests/test_models.py`` on the aps_* models.

Loaded with ``-p aps_timm_plugin`` it imports aps_zoo before timm's test module lists the models at import
time, then keeps only aps_* items: the cheap per-model tests for every model, and the torchscript / fx
tests for one model of each block type (the others differ from it only in widths).
"""
import aps_zoo  # noqa: F401  (registers the aps_* models with timm)

EVERY_MODEL = ('test_model_default_cfgs', 'test_model_forward', 'test_model_backward', 'test_model_forward_features')
PER_BLOCK_TYPE = ('test_model_forward_torchscript', 'test_model_forward_fx', 'test_model_backward_fx',
                  'test_model_forward_fx_torchscript')
BLOCK_TYPE_MODELS = ('aps_resnet20_cifar_20m', 'aps_resnet18_1g', 'aps_mobilenetv2_150m', 'aps_mobilenetv3_large_100')


def selected(test: str, model: str) -> bool:
    """Whether timm's ``test`` runs on ``model``."""
    if not model.startswith('aps_'):
        return False
    return test in EVERY_MODEL or (test in PER_BLOCK_TYPE and model in BLOCK_TYPE_MODELS)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, 'callspec', None)
        model = callspec.params.get('model_name', '') if callspec else ''
        (keep if selected(item.originalname, str(model)) else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
