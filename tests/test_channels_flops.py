"""ChannelConfig validation/JSON and analytic MACs/params against torch's own counters."""
import json
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aps_zoo.aps import APSConv2d
from aps_zoo.channels import MAX_WIDTH, ChannelConfig, ChannelConfigError, network_layout, uniform_widths
from aps_zoo.flops import count_macs, count_params, uniform_at_budget
from aps_zoo.spaces import APSSupernet, build_space

R20 = [8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64]
R56 = [16, 16, 16] + [8] * 20 + [16] * 10 + [32] * 10 + [64] * 12


def cifar(widths, depth):
    return ChannelConfig('resnet_cifar', widths, depth, num_classes=10, input_size=(3, 32, 32))


@pytest.mark.parametrize('widths, depth, paper, reference', [(R20, 20, 20.6e6, 20_865_664), (R56, 56, 60.3e6, 60_818_048)])
def test_paper_cifar_configs(widths, depth, paper, reference):
    macs = count_macs(cifar(widths, depth))
    assert macs == reference  # the reference code's decoded networks, counted with FlopCounterMode / 2
    assert abs(macs - paper) / paper < 0.02


def test_layout_lengths():
    assert network_layout('resnet_cifar', 20).num_entries == 19
    assert network_layout('resnet_cifar', 56).num_entries == 55
    assert network_layout('resnet', 18).num_entries == 17
    assert network_layout('resnet', 50).num_entries == 49
    assert network_layout('mobilenetv2').num_entries == 52
    assert network_layout('mobilenetv3_large').num_entries == 47


def test_json_round_trip(tmp_path):
    c = cifar(R20, 20)
    c.provenance = {'source': 'paper'}
    path = c.save(tmp_path / 'c.json')
    assert ChannelConfig.load(path) == c
    assert json.loads(path.read_text())['widths'] == R20


@pytest.mark.parametrize('kwargs, message', [
    (dict(family='resnet_cifar', depth=20, widths=R20[:-1]), 'needs 19 widths, got 18'),
    (dict(family='resnet_cifar', depth=20, widths=R20[:-1] + [0]), 'width 18 must be positive'),
    (dict(family='resnet_cifar', depth=20, widths=R20[:-1] + [-3]), 'must be positive'),
    (dict(family='resnet_cifar', depth=20, widths=R20[:-1] + [10 ** 6]), 'exceeds the maximum'),
    (dict(family='resnet_cifar', depth=20, widths=R20[:-1] + [2.5]), 'must be an integer'),
    (dict(family='resnet_cifar', depth=21, widths=R20), r'depth must be 6n\+2'),
    (dict(family='vgg', depth=16, widths=R20), "unknown family 'vgg'"),
    (dict(family='mobilenetv2', widths=[32, 16] + uniform_widths('mobilenetv2')[2:]), 'depthwise conv at entry 1'),
])
def test_invalid_configs(kwargs, message):
    with pytest.raises(ChannelConfigError, match=message):
        ChannelConfig(**kwargs)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"family": "resnet_cifar", "widths": [1, 2]')
    with pytest.raises(ChannelConfigError, match='bad.json is not valid JSON'):
        ChannelConfig.load(bad)
    bad.write_text('{"family": "resnet_cifar", "depth": 20, "widths": [8], "colour": 1}')
    with pytest.raises(ChannelConfigError, match="unknown channel config key"):
        ChannelConfig.load(bad)


def torch_macs(model, x, *args):
    """Conv and classifier (addmm) MACs counted by torch; the supernet's projection matmuls
    (aten.mm) build candidate kernels and are not part of the subnet."""
    with FlopCounterMode(display=False) as counter:
        model(x, *args)
    counts = counter.get_flop_counts()['Global']
    return sum(v for op, v in counts.items() if 'convolution' in str(op) or 'addmm' in str(op)) // 2


@pytest.mark.parametrize('family, depth', [('resnet_cifar', 20), ('resnet_cifar', 56), ('mobilenetv3_large', 0)])
def test_analytic_macs_equal_flop_counter_on_random_configs(family, depth):
    """The supernet runs the same layers as the exported network (squeeze-excitation and an efficient head
    included); its subnets must count the same.

    Projections sit on the kernels (each conv's first plan; at batch 16 the classifier's own choice),
    so the convolutions run at the subnet's widths."""
    rng = random.Random(depth)
    space = build_space(family, depth, [4, 8, 16, 32], num_classes=10, input_size=(3, 32, 32))
    net = APSSupernet(space).eval()
    for m in net.modules():
        if isinstance(m, APSConv2d):
            m.plan = m.plans()[0]
    for _ in range(3):
        choices = space.random_choices(rng)
        config = space.config(choices)
        assert torch_macs(net, torch.randn(16, 3, 32, 32), space.widths(choices)) == 16 * count_macs(config)


def test_uniform_at_budget_is_widest_fit():
    c = uniform_at_budget('resnet_cifar', 20, 10e6, num_classes=10, input_size=(3, 32, 32))
    assert count_macs(c) <= 10e6
    wider = [w + 1 for w in c.widths]
    assert count_macs(cifar(wider, 20)) > 10e6


@pytest.mark.parametrize('budget', [2.0e9, 1e13])
def test_uniform_resnet50_stays_within_the_maximum_width(budget):
    """ResNet-50's last stage is 2048 wide: the search for the multiplier must not try a width above
    MAX_WIDTH (it raised at the first midpoint, after a whole search, when the search report scored it)."""
    c = uniform_at_budget('resnet', 50, budget, num_classes=1000, input_size=(3, 224, 224))
    assert max(c.widths) <= MAX_WIDTH and count_macs(c) <= budget
    wider = uniform_widths('resnet', 50, c.provenance['multiplier'] * 1.01)
    assert max(wider) > MAX_WIDTH or count_macs(ChannelConfig('resnet', wider, 50, 1000, (3, 224, 224))) > budget


def test_params_count_matches_standalone_network():
    """Params: conv weights + BN affine + classifier, checked against a plain torch network."""
    c = cifar(R20, 20)
    expected = count_params(c)
    # independent count straight from the layer shapes of the layout
    w, total, cin = c.widths, 3 * 9 * R20[0] + 2 * R20[0], R20[0]
    for b in c.layout.blocks:
        mid, out = (w[e] for e in b.entries)
        total += cin * mid * 9 + 2 * mid + mid * out * 9 + 2 * out
        if b.stride != 1:
            total += cin * out
        elif cin != out:
            total += cin * out + 2 * out
        cin = out
    total += cin * 10 + 10
    assert expected == total == 205_138
