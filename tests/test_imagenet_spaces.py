"""ImageNet search spaces on timm backbones: layouts read from timm, MACs of the standard networks, recipes.

The ~110M MACs MobileNetV3-Large recipe is about half of timm's mobilenetv3_large_100 (216.6M)."""
import dataclasses

import pytest

from aps_zoo.channels import uniform_widths
from aps_zoo.recipe import load_recipe
from aps_zoo.spaces import build_space, space_from_recipe
from aps_zoo.spaces import timm_backbones
from aps_zoo.spaces.timm_backbones import (BackboneMismatchError, check_layout_matches_timm, layout_differences,
                                           timm_layout, timm_reference_macs, zoo_layout)

IMAGENET = (3, 224, 224)
# (family, depth, timm model, candidates, stage multipliers, blockwise, timm MACs at 224: FlopCounterMode / 2)
BACKBONES = [
    ('resnet', 18, 'resnet18', [32, 48, 64, 80], [1, 2, 4, 8], True, 1_814_073_344),
    ('resnet', 50, 'resnet50', [32, 48, 64, 80], [1, 2, 4, 8], True, 4_089_184_256),
    ('mobilenetv2', 0, 'mobilenetv2_100', [8, 12, 16, 20], [2, 1.5, 2, 4, 6, 10, 20, 80], False, 300_774_272),
    ('mobilenetv3_large', 0, 'mobilenetv3_large_100', [8, 12, 16, 20], [1, 1.5, 2.5, 5, 7, 10, 60, 80], False,
     216_589_760),
]


@pytest.mark.parametrize('family, depth, name, candidates, mults, blockwise, timm_macs', BACKBONES)
def test_standard_network_is_in_the_space_with_timm_macs(family, depth, name, candidates, mults, blockwise,
                                                         timm_macs):
    assert check_layout_matches_timm(family, depth) == name
    assert timm_reference_macs(name) == timm_macs
    space = build_space(family, depth, candidates, num_classes=1000, input_size=IMAGENET, stage_multipliers=mults,
                        blockwise=blockwise, meta_width='max')
    standard = space.choices_for(uniform_widths(family, depth))
    assert abs(space.macs(standard) - timm_macs) / timm_macs < 0.03


def test_timm_layouts_read_from_timm():
    r50, mb2 = timm_layout('resnet50'), timm_layout('mobilenetv2_100')
    assert (r50.stem, r50.stem_pool, r50.head, len(r50.blocks)) == ((64, 7, 2), True, None, 16)
    assert [b.stride for b in r50.blocks] == [1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert {(b.kind, b.expansion) for b in r50.blocks} == {('bottleneck', 4.0)}
    assert r50.blocks[3].widths == (128, 128, 512)
    assert (mb2.stem, mb2.stem_pool, mb2.head, len(mb2.blocks)) == ((32, 3, 2), False, 1280, 17)
    assert [b.expansion for b in mb2.blocks] == [1.0] + [6.0] * 16
    assert [b.stride for b in mb2.blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [i for i, b in enumerate(mb2.blocks) if b.residual] == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    assert timm_layout('resnet18').blocks[2] == timm_backbones.BackboneBlock('basic', 1, 2, 1.0, True, (128, 128), (3, 3))
    assert check_layout_matches_timm('resnet_cifar', 20) is None
    mb3 = timm_layout('mobilenetv3_large_100')
    assert (mb3.stem, mb3.stem_act, mb3.head, mb3.head_pooled, len(mb3.blocks)) == ((16, 3, 2), 'Hardswish', 1280,
                                                                                   True, 16)
    assert [i for i, b in enumerate(mb3.blocks) if b.se] == [3, 4, 5, 10, 11, 12, 13, 14]
    assert [b.act for b in mb3.blocks] == ['ReLU'] * 6 + ['Hardswish'] * 10
    assert [b.kernels[-2] for b in mb3.blocks[:15]] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [i for i, b in enumerate(mb3.blocks) if b.residual] == [0, 2, 4, 5, 7, 8, 9, 11, 13, 14]
    assert mb3.blocks[-1] == timm_backbones.BackboneBlock('conv', 6, 1, 1.0, False, (960,), (1,), 'Hardswish')


def test_layout_mismatch_is_a_clear_error(monkeypatch):
    ours = zoo_layout('mobilenetv2')
    moved = dataclasses.replace(ours, blocks=ours.blocks[:5] + (dataclasses.replace(ours.blocks[5], stride=2),)
                                + ours.blocks[6:])
    assert layout_differences(moved, timm_layout('mobilenetv2_100')) == ['block 5 stride: aps_zoo 2, timm 1']
    monkeypatch.setattr(timm_backbones, 'zoo_layout', lambda family, depth: moved)
    with pytest.raises(BackboneMismatchError, match=r'mobilenetv2 disagrees with timm .* mobilenetv2_100: '
                                                    r'block 5 stride: aps_zoo 2, timm 1'):
        check_layout_matches_timm.__wrapped__('mobilenetv2', 0)


def test_resnet50_space_has_a_config_near_2g():
    space = build_space('resnet', 50, [32, 48, 64, 80], num_classes=1000, input_size=IMAGENET,
                        stage_multipliers=[1, 2, 4, 8], blockwise=True, meta_width='max')
    assert space.candidates[3] == (128, 192, 256, 320)  # a bottleneck output is 4x its stage's candidates
    choices = space.fit_to_budget(space.largest(), 2.0e9)
    assert abs(space.macs(choices) - 2.0e9) / 2.0e9 < 0.05


@pytest.mark.parametrize('recipe, depth, budget, meta_width, decisions', [
    ('search_resnet18_imagenet', 18, 1.9e9, 'sum', 9),
    ('search_resnet50_imagenet_2g', 50, 2.0e9, 'max', 17),
    ('search_mobilenetv2_imagenet', 0, 3.2e8, 'sum', 35),
    ('search_mobilenetv3_imagenet', 0, 1.1e8, 'sum', 32),
])
def test_imagenet_search_recipes(recipe, depth, budget, meta_width, decisions):
    r = load_recipe(f'recipes/{recipe}.yaml')
    assert (r.data.dataset, r.data.image_size, r.data.batch_size * 8) == ('ILSVRC/imagenet-1k', 224, 2048)
    assert (r.space.depth, r.space.meta_width, r.search.budget_macs) == (depth, meta_width, budget)
    assert (r.search.epochs, r.search.warmup_epochs, r.search.decode, r.search.decode_top_k) == (160, 80, 'beam', 8)
    space = space_from_recipe(r, 1000, (3, r.data.image_size, r.data.image_size))
    space.check_budget(r.search.budget_macs)
    assert space.num_decisions == decisions
    assert space.macs(space.smallest()) < budget < space.macs(space.largest())
    if recipe == 'search_mobilenetv2_imagenet':  # spans the paper's MobileNetV2 configs (156.7M and 314.0M MACs)
        assert space.macs(space.smallest()) < 156e6 and space.macs(space.largest()) > 314e6
