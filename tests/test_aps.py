"""APS layers: overlap special cases, sharing level, regulariser, gradients, supernet coverage."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from aps_zoo.aps import (APSConv2d, aps_modules, layer_sharing_level, orthogonality_loss,
                         renormalize_projections, set_projections_trainable, sharing_levels)
from aps_zoo.aps.projection import orthogonality_penalty, overlap_offsets, required_meta_width
from aps_zoo.spaces import APSSupernet, SearchSpaceError, build_space

CANDS = [4, 8, 16]


def conv(overlap, noise=1e-3):
    torch.manual_seed(0)
    return APSConv2d(CANDS, CANDS, 28, 28, 3, overlap=overlap, noise=noise)


def test_overlap_one_is_ordinal_sharing():
    layer = conv(1.0, noise=0.0)
    for c_in, c_out in itertools.product(CANDS, CANDS):
        assert torch.equal(layer.candidate_weight(c_in, c_out), layer.weight[:c_out, :c_in])


def test_overlap_zero_gives_disjoint_blocks():
    layer = conv(0.0, noise=0.0)
    offsets = dict(zip(CANDS, overlap_offsets(CANDS, 0.0)))
    assert offsets == {4: 0, 8: 4, 16: 12}
    w = layer.candidate_weight(8, 16)
    assert torch.equal(w, layer.weight[12:28, 4:12])
    assert layer_sharing_level(layer) == 0.0


def test_sharing_level_grows_with_overlap():
    levels = [layer_sharing_level(conv(o)) for o in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert levels == sorted(levels)
    assert levels[0] < 0.01 and levels[-1] > 0.99


def test_meta_width_must_hold_candidates():
    assert required_meta_width(CANDS, 0.0) == 28 and required_meta_width(CANDS, 1.0) == 16
    with pytest.raises(SearchSpaceError, match='cannot hold candidates'):
        build_space('resnet_cifar', 20, CANDS, num_classes=10, input_size=(3, 8, 8), meta_width='max', overlap=0.0)


def test_orthogonality_penalty_and_renormalisation():
    q, _ = torch.linalg.qr(torch.randn(12, 5))
    assert orthogonality_penalty(q).item() < 1e-5
    skew = q.clone()
    skew[:, 1] += q[:, 0]
    assert orthogonality_penalty(skew).item() > 0.5
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    net = APSSupernet(space)
    with torch.no_grad():
        for m in aps_modules(net).values():
            for _, _, p in m.projections():
                p.mul_(3.0)
    renormalize_projections(net)
    norms = torch.cat([p.norm(dim=0) for m in aps_modules(net).values() for _, _, p in m.projections()])
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # the regulariser covers every searchable layer: each one contributes
    with torch.no_grad():
        per_layer = {n: sum(orthogonality_penalty(p).item() for _, _, p in m.projections())
                     for n, m in aps_modules(net).items()}
        total = orthogonality_loss(net).item()
    assert all(v > 0 for v in per_layer.values())
    assert total == pytest.approx(sum(per_layer.values()), rel=1e-5)


def test_gradients_reach_meta_weights_then_projections():
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    net = APSSupernet(space)
    widths = space.widths([1] * space.num_decisions)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    logits, penalty = net(x, widths, return_penalty=True)
    F.cross_entropy(logits, y).backward()
    assert penalty.item() == 0.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [net.stem.conv.weight, net.fc.weight])
    assert all(p.grad is None for p in net.projection_parameters())  # warm-up: projections detached
    set_projections_trainable(net, True)
    net.zero_grad()
    logits, penalty = net(x, widths, return_penalty=True)
    (F.cross_entropy(logits, y) + 5e-3 * penalty).backward()
    assert penalty.item() > 0
    used = net.stem.conv.out_proj[f'3_{widths[0]}']
    assert used.grad is not None and used.grad.abs().sum() > 0
    unused = net.stem.conv.out_proj[f'3_{CANDS[0] if widths[0] != CANDS[0] else CANDS[1]}']
    assert unused.grad is None


@pytest.mark.parametrize('family, depth, size', [('resnet_cifar', 8, 8), ('resnet', 18, 32), ('resnet', 50, 32),
                                                 ('mobilenetv2', 0, 32)])
def test_every_candidate_combination_runs(family, depth, size):
    """Every width pair the controller can produce for a layer is exercised at least once."""
    space = build_space(family, depth, [4, 8], num_classes=5, input_size=(3, size, size), blockwise=family != 'resnet_cifar')
    net = APSSupernet(space)
    n = space.num_decisions
    designs = [[0] * n, [1] * n, [d % 2 for d in range(n)], [(d + 1) % 2 for d in range(n)]]
    for choices in designs + [space.random_choices(random.Random(s)) for s in range(2)]:
        out = net(torch.randn(2, 3, size, size), space.widths(choices))
        assert out.shape == (2, 5)
        out.sum().backward()


def test_sharing_levels_report_every_layer():
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    levels = sharing_levels(APSSupernet(space))
    assert len(levels) == len(aps_modules(APSSupernet(space)))
    assert all(0.2 < v < 0.6 for v in levels.values())


def test_candidate_kernel_is_the_design_einsum():
    """W_c = einsum('ijhw,ix,jy->xyhw', W, P, Q) for every pair, whichever matmul order is used."""
    torch.manual_seed(0)
    layer = APSConv2d([4, 8, 16], [4, 8, 32], 28, 44, 3, overlap=0.5)
    for c_in, c_out in itertools.product([4, 8, 16], [4, 8, 32]):
        key = f'{c_in}_{c_out}'
        expected = torch.einsum('ijhw,ix,jy->xyhw', layer.weight, layer.out_proj[key], layer.in_proj[key])
        assert torch.allclose(layer.candidate_weight(c_in, c_out), expected, atol=1e-5)


def test_stride_one_shortcut_keeps_no_equal_width_pairs():
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8))
    net = APSSupernet(space)
    stride_one = [b.shortcut.conv for b in net.blocks if b.spec.stride == 1]
    assert stride_one and all(i != o for conv in stride_one for i, o in conv.pairs)
    assert all(len(conv.pairs) == len(CANDS) * (len(CANDS) - 1) for conv in stride_one)


def test_renormalize_only_updated_projections():
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    net = APSSupernet(space)
    set_projections_trainable(net, True)
    with torch.no_grad():
        for p in net.projection_parameters():
            p.mul_(2.0)
    net(torch.randn(2, 3, 8, 8), space.widths([0] * space.num_decisions)).sum().backward()
    renormalize_projections(net, only_updated=True)
    for p in net.projection_parameters():
        norms = p.norm(dim=0)
        target = torch.ones_like(norms) * (1.0 if p.grad is not None else 2.0)
        assert torch.allclose(norms, target, atol=0.05)
