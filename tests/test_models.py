"""The aps_* timm models: registry, paper configs, MACs/params against independent counts, timm model API."""
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf
from torch.utils.flop_counter import FlopCounterMode

from aps_zoo.channels import ChannelConfig, ChannelConfigError, network_layout, tied_entries, uniform_widths
from aps_zoo.flops import count_macs, count_params, layer_table
from aps_zoo.models import (ApsMobileNetV2, ApsResNet, PretrainedWeightsNotFoundError, architecture_for,
                            create_model_from_config, train_recipe, zoo_config, zoo_names)

# docs/design.md#published-channel-configs: widths as published, the paper's MACs, our conv+linear count (FlopCounterMode / 2), params.
PAPER = {
    'aps_resnet20_cifar_20m': dict(
        family='resnet_cifar', depth=20, classes=10, size=32, paper_macs=20.6e6, budget=20e6,
        macs=20_865_664, params=205_138,
        widths=[8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64]),
    'aps_resnet56_cifar_60m': dict(
        family='resnet_cifar', depth=56, classes=10, size=32, paper_macs=60.3e6, budget=60e6,
        macs=60_818_048, params=558_218,
        widths=[16, 16, 16] + [8] * 20 + [16] * 10 + [32] * 10 + [64] * 12),
    'aps_resnet18_1g8': dict(
        family='resnet', depth=18, classes=1000, size=224, paper_macs=1.83e9, budget=1.8e9,
        macs=1_833_669_632, params=14_109_848,
        widths=[48, 64, 64, 64, 48, 160, 128, 96, 96, 320, 256, 256, 256, 512, 512, 640, 640]),
    'aps_resnet18_1g': dict(
        family='resnet', depth=18, classes=1000, size=224, paper_macs=1.05e9, budget=1.0e9,
        macs=1_055_138_816, params=8_029_064,
        widths=[32, 48, 48, 48, 64, 96, 64, 96, 96, 192, 192, 192, 192, 384, 384, 384, 640]),
    'aps_mobilenetv2_300m': dict(
        family='mobilenetv2', depth=0, classes=1000, size=224, paper_macs=314e6, budget=300e6,
        macs=314_004_400, params=4_530_402,
        widths=[40, 40, 20, 60, 60, 30, 72, 72, 30, 90, 90, 40, 120, 120, 40, 120, 120, 40, 96, 96, 80, 192, 192, 80,
                144, 144, 80, 240, 240, 80, 480, 480, 120, 432, 432, 120, 576, 576, 120, 432, 432, 200, 1200, 1200,
                200, 960, 960, 200, 1200, 1200, 400, 1600]),
    'aps_mobilenetv2_150m': dict(
        family='mobilenetv2', depth=0, classes=1000, size=224, paper_macs=156e6, budget=150e6,
        macs=156_660_176, params=2_876_652,
        widths=[24, 24, 12, 36, 36, 24, 54, 54, 24, 90, 90, 24, 72, 72, 24, 72, 72, 24, 72, 72, 64, 192, 192, 64, 96,
                96, 64, 96, 96, 64, 192, 192, 48, 288, 288, 48, 576, 576, 48, 576, 576, 160, 960, 960, 160, 720, 720,
                160, 960, 960, 240, 1280]),
}
# This project's own searches: widths, MACs at the registered 1000 classes and 224x224, params, name budget.
SEARCHED = {
    'aps_resnet50_2g': dict(
        family='resnet', depth=50, budget=2.0e9, macs=1_926_778_880, params=9_130_808,
        widths=[80, 48, 48, 192, 32, 32, 128, 32, 32, 128] + [96, 96, 384] * 4 + [128, 128, 512] * 3
        + [192, 192, 768] * 3 + [256, 256, 1024] * 3),
}
# Searched here on Fashion-MNIST; its trained weights ship in the package (pretrained_cfg file=).
SHIPPED = {
    'aps_resnet20_fashion_mnist': dict(
        family='resnet_cifar', depth=20, macs=8_768_896, params=48_402, size=28,
        widths=[8, 16, 8, 16, 8, 8, 8, 8, 8, 8, 8, 32, 32, 8, 32, 32, 16, 8, 64]),
}
GENERIC = {'aps_resnet_cifar': ('resnet_cifar', 20), 'aps_resnet': ('resnet', 50),
           'aps_mobilenetv2': ('mobilenetv2', 0), 'aps_mobilenetv3_large_100': ('mobilenetv3_large', 0)}
# Random configs of every family: (family, depth, input size); small inputs keep the ImageNet families fast,
# odd sizes exercise the ceil-mode pooled shortcuts.
RANDOM = [('resnet_cifar', 20, 32), ('resnet_cifar', 56, 30), ('resnet', 18, 64), ('resnet', 50, 57),
          ('mobilenetv2', 0, 64), ('mobilenetv2', 0, 45), ('mobilenetv3_large', 0, 45)]


def flop_counter_macs(model: nn.Module, input_size) -> int:
    """Independent count: torch's FlopCounterMode over one forward, halved (1 MAC = 2 FLOPs)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *input_size))
    return counter.get_total_flops() // 2


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_config(family: str, depth: int, size: int, seed: int) -> ChannelConfig:
    """A random valid config: widths from a small set, so that both equal (identity) and different (projected)
    shortcut widths occur; depthwise convs keep their input width."""
    rng = random.Random(seed)
    layout = network_layout(family, depth)
    widths = [rng.choice([3, 8, 12, 16]) for _ in range(layout.num_entries)]
    for a, b in tied_entries(layout):
        widths[b] = widths[a]
    return ChannelConfig(family, widths, depth, rng.choice([7, 10]), (3, size, size), {'source': 'test'})


@pytest.fixture(scope='module')
def paper_models():
    return {name: timm.create_model(name).eval() for name in PAPER}


# --- registry and zoo configs -----------------------------------------------------------------------------------

def test_registry_lists_zoo_and_generic_architectures():
    assert set(timm.list_models('aps_*')) == set(PAPER) | set(SEARCHED) | set(SHIPPED) | set(GENERIC)
    assert zoo_names() == sorted(set(PAPER) | set(SEARCHED) | set(SHIPPED))
    for name, (family, depth) in GENERIC.items():
        config = timm.create_model(name).channel_config
        assert architecture_for(config) == name
        assert (config.family, config.depth, list(config.widths)) == (family, depth, uniform_widths(family, depth))


@pytest.mark.parametrize('name', sorted(PAPER))
def test_zoo_config_is_the_paper_config(name):
    ref, config = PAPER[name], zoo_config(name)
    assert list(config.widths) == ref['widths']
    assert (config.family, config.depth, config.num_classes) == (ref['family'], ref['depth'], ref['classes'])
    assert config.input_size == (3, ref['size'], ref['size'])
    assert config.provenance['source'] == 'paper'
    assert 'Revisiting Parameter Sharing for Automatic Neural Channel Number Search' in config.provenance['citation']
    assert config.provenance['reported_macs'] == int(ref['paper_macs'])


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_model_macs_and_params(name, paper_models):
    ref, model = PAPER[name], paper_models[name]
    config = model.channel_config
    assert config == zoo_config(name)
    assert count_macs(config) == ref['macs']
    assert flop_counter_macs(model, config.input_size) == ref['macs']
    assert count_params(config) == num_params(model) == ref['params']
    assert abs(ref['macs'] / ref['paper_macs'] - 1) <= 0.02, 'decoded differently from how the paper counts it'


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.xfail(
        strict=True, reason="1.055G MACs (all convs + fc) is 5.5% over the name's 1.0G; the paper's own figure, "
                            "1.05G, is within 5%")) if n == 'aps_resnet18_1g' else n
    for n in sorted(PAPER)])
def test_paper_model_macs_within_5pct_of_name_budget(name):
    assert abs(count_macs(zoo_config(name)) / PAPER[name]['budget'] - 1) <= 0.05


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_shipped_model_config_macs_and_weights_file(name):
    ref, config = SHIPPED[name], zoo_config(name)
    assert (config.family, config.depth, list(config.widths)) == (ref['family'], ref['depth'], ref['widths'])
    assert (config.num_classes, config.input_size) == (10, (3, ref['size'], ref['size']))
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert Path(cfg['file']).is_file() and cfg['hf_hub_id'] == f'aps-zoo/{name}'
    assert cfg['input_size'] == config.input_size
    assert model.channel_config.input_size == config.input_size  # the zoo config's size, not the family's 32x32
    assert count_macs(config) == flop_counter_macs(model, config.input_size) == ref['macs']
    assert count_params(config) == num_params(model) == ref['params']
    assert config.provenance['source'] == 'search' and 'Fashion-MNIST' in config.provenance['dataset']


@pytest.mark.parametrize('name', sorted(SEARCHED))
def test_searched_model_config_macs_and_provenance(name):
    ref, config = SEARCHED[name], zoo_config(name)
    assert (config.family, config.depth, list(config.widths)) == (ref['family'], ref['depth'], ref['widths'])
    assert (config.num_classes, config.input_size) == (1000, (3, 224, 224))
    model = timm.create_model(name)
    assert 'hf_hub_id' not in model.pretrained_cfg and model.pretrained_cfg['num_classes'] == 1000  # unpublished
    assert count_macs(config) == flop_counter_macs(model, config.input_size) == ref['macs']
    assert count_params(config) == num_params(model) == ref['params']
    assert abs(ref['macs'] / ref['budget'] - 1) <= 0.05
    p = config.provenance
    assert p['source'] == 'search' and p['budget_macs'] == ref['budget'] and p['searched_num_classes'] == 10
    assert 'digits' in p['dataset'] and p['recipe'] == 'recipes/search_resnet50_digits_2g.yaml'
    assert p['imagenet_weights'] == 'recipes/train_resnet50_imagenet.yaml'


def test_paper_figures_within_5pct_of_name_budgets():
    for ref in PAPER.values():
        assert abs(ref['paper_macs'] / ref['budget'] - 1) <= 0.05 + 1e-9


@pytest.mark.parametrize('family,depth,size', RANDOM)
def test_random_config_macs_params_and_layers(family, depth, size):
    for seed in range(2):
        config = random_config(family, depth, size, seed)
        model = create_model_from_config(config)
        assert model.channel_config == config
        assert flop_counter_macs(model, config.input_size) == count_macs(config)
        assert num_params(model) == count_params(config)
        assert_layers_match_table(model, config)


def assert_layers_match_table(model: nn.Module, config: ChannelConfig) -> None:
    """Every conv and the classifier sit where ``flops.layer_table`` says (its name is the conv's module), with
    its shape, bias and BN; nothing else."""
    seen = set()
    for layer in layer_table(config):
        module = model.get_submodule(layer.name)
        seen.add(id(module))
        if isinstance(module, nn.Linear):
            assert (module.in_features, module.out_features, layer.kernel, layer.bias) == \
                (layer.c_in, layer.c_out, 1, True), layer.name
            continue
        assert (module.in_channels, module.out_channels, module.kernel_size, module.stride, module.groups) == \
            (layer.c_in, layer.c_out, (layer.kernel,) * 2, (layer.stride,) * 2, layer.groups), layer.name
        assert (module.bias is not None) == layer.bias, layer.name
        owner = model.get_submodule(layer.name.rsplit('.', 1)[0])
        assert isinstance(getattr(owner, 'bn', None), nn.BatchNorm2d) == layer.batchnorm, layer.name
    extra = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in seen]
    assert not extra, f'layers the analytic table does not count: {extra}'


def test_uniform_generic_models_equal_timm_counterparts():
    """aps_mobilenetv2 defaults to timm's mobilenetv2_100; aps_resnet to resnet50 (stride-2 shortcuts are
    avg-pool + 1x1 conv without BN there: 2 x (512 + 1024 + 2048) fewer BN parameters)."""
    ours, theirs = timm.create_model('aps_mobilenetv2'), timm.create_model('mobilenetv2_100')
    assert num_params(ours) == num_params(theirs) == 3_504_872
    assert flop_counter_macs(ours, (3, 96, 96)) == flop_counter_macs(theirs, (3, 96, 96))
    ours, theirs = timm.create_model('aps_resnet'), timm.create_model('resnet50')
    assert num_params(ours) == num_params(theirs) - 2 * (512 + 1024 + 2048)
    assert flop_counter_macs(ours, (3, 64, 64)) == flop_counter_macs(theirs, (3, 64, 64))
    assert list(timm.create_model('aps_resnet_cifar').channel_config.widths) == [16] * 7 + [32] * 6 + [64] * 6


def test_mobilenetv3_at_timm_widths_is_timms_network():
    """aps_mobilenetv3_large_100 is timm's mobilenetv3_large_100: the same MACs (counted on timm's model by
    FlopCounterMode) and parameters, squeeze-excitation widths make_divisible(expanded * 0.25, 8)."""
    ours, theirs = timm.create_model('aps_mobilenetv3_large_100'), timm.create_model('mobilenetv3_large_100')
    config = ours.channel_config
    assert flop_counter_macs(theirs, (3, 224, 224)) == count_macs(config) == 216_589_760
    assert flop_counter_macs(ours, (3, 224, 224)) == count_macs(config)
    assert num_params(ours) == num_params(theirs) == count_params(config) == 5_483_032
    reduce = [m.conv_reduce.out_channels for m in theirs.modules() if type(m).__name__ == 'SqueezeExcite']
    assert [m.conv_reduce.out_channels for m in ours.modules() if type(m).__name__ == 'SqueezeExcite'] == reduce
    assert reduce == [24, 32, 32, 120, 168, 168, 240, 240]
    assert (ours.num_features, ours.head_hidden_size) == (theirs.num_features, theirs.head_hidden_size) == (960, 1280)
    assert ours.pretrained_cfg['interpolation'] == theirs.pretrained_cfg['interpolation'] == 'bicubic'


# --- timm model API ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(PAPER))
def test_forward_shapes_and_pretrained_cfg(name, paper_models):
    ref, model = PAPER[name], paper_models[name]
    cfg, config = model.pretrained_cfg, model.channel_config
    assert 'hf_hub_id' not in cfg and 'hf_hub_filename' not in cfg  # no weights published yet
    assert cfg['num_classes'] == ref['classes'] == model.num_classes
    assert tuple(cfg['input_size']) == (3, ref['size'], ref['size'])
    assert cfg['license'] == 'apache-2.0'
    cifar = ref['family'] == 'resnet_cifar'
    assert cfg['crop_pct'] == (1.0 if cifar else 0.875)
    assert tuple(cfg['mean']) == ((0.4914, 0.4822, 0.4465) if cifar else (0.485, 0.456, 0.406))
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    x = torch.randn(2, 3, ref['size'], ref['size'])
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, *cfg['pool_size'])
        assert model.num_features == config.widths[-1]
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, ref['classes'])


@pytest.mark.parametrize('name,channels,reductions', [
    ('aps_resnet20_cifar_20m', [8, 32, 64], [1, 2, 4]),
    ('aps_resnet56_cifar_60m', [8, 32, 64], [1, 2, 4]),
    ('aps_resnet18_1g8', [48, 48, 96, 256, 640], [2, 4, 8, 16, 32]),
    ('aps_resnet', [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    ('aps_mobilenetv2_300m', [20, 30, 40, 120, 400], [2, 4, 8, 16, 32]),
    ('aps_mobilenetv3_large_100', [16, 24, 40, 112, 960], [2, 4, 8, 16, 32]),  # timm's feature_info
])
def test_features_only(name, channels, reductions):
    size = 32 if 'cifar' in name else 64
    x = torch.randn(1, 3, size, size)
    for feature_cls in ('list', 'getter'):
        model = timm.create_model(name, features_only=True, feature_cls=feature_cls).eval()
        assert model.feature_info.channels() == channels
        assert model.feature_info.reduction() == reductions
        with torch.no_grad():
            outputs = model(x)
        assert [tuple(o.shape) for o in outputs] == [(1, c, size // r, size // r) for c, r in zip(channels, reductions)]
    model = timm.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    assert model.feature_info.channels() == channels[1:3]


def test_mobilenetv3_intermediates_checkpointing_and_head():
    """timm's forward_intermediates checks (features equal forward_features, also under grad checkpointing) and
    the efficient head: pre-logits are the 1280 hidden features, removing the classifier keeps them."""
    model = timm.create_model('aps_mobilenetv3_large_100', num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and final.shape == (2, 960, 2, 2)
        assert [t.shape[1] for t in intermediates] == [16, 24, 40, 112, 960]
        logits = model(x)
        model.set_grad_checkpointing()
        assert torch.allclose(model.forward_intermediates(x)[0], final, atol=1e-5)
        assert torch.allclose(model(x), logits, atol=1e-5)
        assert model.forward_head(final, pre_logits=True).shape == (2, 1280)
        model.reset_classifier(0)
        assert model(x).shape == (2, 1280) and count_params(model.channel_config) == num_params(model)


def test_forward_intermediates_and_pruning():
    model = timm.create_model('aps_mobilenetv2_150m').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape[1] for t in intermediates] == [12, 24, 24, 48, 240]
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)) == 2
        assert model.prune_intermediate_layers(indices=(0, 2)) == [0, 2]
        assert len(model.blocks) == 6 and model.num_classes == 0 and model.num_features == 24
        assert model(x).shape == (1, 24, 8, 8)


@pytest.mark.parametrize('name', ['aps_resnet20_cifar_20m', 'aps_mobilenetv2_150m'])
def test_reset_classifier_updates_channel_config(name):
    model = timm.create_model(name).eval()
    size = model.channel_config.input_size
    x = torch.randn(2, *size)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(x).shape == (2, 5)
    assert model.channel_config.num_classes == 5
    assert count_macs(model.channel_config) == flop_counter_macs(model, size)
    assert count_params(model.channel_config) == num_params(model)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features) and model.channel_config.num_classes == 0
    assert count_params(model.channel_config) == num_params(model)
    model.reset_classifier(0, '')
    assert model(x).ndim == 4
    model = timm.create_model(name, num_classes=3)
    assert model.channel_config.num_classes == 3 and model.pretrained_cfg['num_classes'] == PAPER[name]['classes']


def test_grad_checkpointing_group_matcher_and_drop_path():
    model = timm.create_model('aps_resnet20_cifar_20m', drop_path_rate=0.1, drop_rate=0.1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        assert torch.allclose(model(x), out, atol=1e-6)
    fine = timm.models.group_parameters(model, model.group_matcher(), reverse=True)
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert len(set(fine.values())) == 1 + 9 + 1  # stem, 9 blocks, classifier
    assert len(set(coarse.values())) == 1 + 3 + 1  # stem, 3 stages, classifier
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torchscript_bottleneck():
    """timm's torchscript/fx tests (test_timm_suite.py) cover one model per block type but the bottleneck."""
    config = random_config('resnet', 50, 48, seed=1)
    model = create_model_from_config(config).eval()
    x = torch.randn(1, *config.input_size)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)


# --- export round trip: widths travel through model_args ---------------------------------------------------------

@pytest.mark.parametrize('family,depth,size', [('resnet_cifar', 20, 32), ('resnet', 50, 48), ('mobilenetv2', 0, 40),
                                              ('mobilenetv3_large', 0, 40)])
def test_save_for_hf_local_dir_rebuilds_same_network(tmp_path, family, depth, size):
    config = random_config(family, depth, size, seed=3)
    model = create_model_from_config(config).eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert loaded.channel_config.widths == config.widths
    assert loaded.channel_config.input_size == config.input_size
    assert loaded.pretrained_cfg['input_size'] == config.input_size
    x = torch.randn(2, *config.input_size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert tuple(loaded.forward_features(x).shape[2:]) == tuple(loaded.pretrained_cfg['pool_size'])


def test_zoo_model_local_dir_round_trip(tmp_path):
    model = timm.create_model('aps_resnet20_cifar_20m').eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert type(loaded) is ApsResNet and loaded.channel_config == model.channel_config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- errors ------------------------------------------------------------------------------------------------------

def test_wrong_length_config_is_named():
    widths = list(PAPER['aps_resnet18_1g8']['widths'])[:-1]
    with pytest.raises(ChannelConfigError, match='resnet18 needs 17 widths, got 16'):
        timm.create_model('aps_resnet', widths=widths, depth=18)
    with pytest.raises(ChannelConfigError, match='mobilenetv2 needs 52 widths, got 3'):
        timm.create_model('aps_mobilenetv2', widths=[8, 8, 8])
    with pytest.raises(ChannelConfigError, match='resnet_cifar depth must be 6n\\+2'):
        timm.create_model('aps_resnet_cifar', depth=21)


def test_width_mismatch_is_named():
    widths = list(PAPER['aps_resnet18_1g8']['widths'])
    widths[3] = 65
    with pytest.raises(ChannelConfigError, match='aps_resnet18_1g8 is a fixed network .*width 3 is 65, its config '
                                                 'has 64.*aps_resnet'):
        timm.create_model('aps_resnet18_1g8', widths=widths)
    with pytest.raises(ChannelConfigError, match='depth 34 given, its config has depth 18'):
        timm.create_model('aps_resnet18_1g', depth=34)
    widths = list(PAPER['aps_mobilenetv2_150m']['widths'])
    widths[4] = 40  # depthwise conv of block 2 must keep the expansion width (entry 3)
    with pytest.raises(ChannelConfigError, match='depthwise conv at entry 4 must keep its input width 36'):
        timm.create_model('aps_mobilenetv2', widths=widths)
    with pytest.raises(ChannelConfigError, match="ApsResNet builds family 'resnet' or 'resnet_cifar'"):
        ApsResNet(widths, family='mobilenetv2')
    with pytest.raises(ChannelConfigError, match='widths come'):
        create_model_from_config(zoo_config('aps_resnet18_1g'), widths=[1])
    # the zoo's own widths are accepted, as local-dir:/hf-hub: pass them back from config.json
    assert isinstance(timm.create_model('aps_mobilenetv2_150m', widths=PAPER['aps_mobilenetv2_150m']['widths']),
                      ApsMobileNetV2)


@pytest.mark.parametrize('name', ['aps_resnet18_1g8', 'aps_resnet50_2g'])
def test_pretrained_without_published_weights_is_a_clear_fast_error(monkeypatch, name):
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        timm.create_model(name, pretrained=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    for part in (f'No weights are published for {name} (none are published)',
                 f'aps-zoo train {train_recipe(name)} --config {name}', 'aps-zoo export'):
        assert part in message
    with pytest.raises(RuntimeError, match='No pretrained weights exist for aps_resnet'):
        timm.create_model('aps_resnet', pretrained=True)


def test_names_resolve_only_after_import_aps_zoo():
    """timm has no plugin entry points and no start-up hook is installed: `import aps_zoo` registers the models."""
    code = ("import timm\n"
            "assert not timm.list_models('aps_*')\n"
            "import aps_zoo\n"
            "assert 'aps_resnet18_1g8' in timm.list_models('aps_*')\n")
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
