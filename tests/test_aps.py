"""APS layers: overlap special cases, sharing level, regulariser, gradients, supernet coverage."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from aps_zoo.aps import (APSConv2d, APSLinear, add_orthogonality_grad_, aps_modules, attach_projections,
                         layer_sharing_level, orthogonality_loss, orthogonality_terms, renormalize_projections, sharing_levels)
from aps_zoo.aps.projection import off_diagonal_l1, overlap_offsets, required_meta_width
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
    assert off_diagonal_l1(q).item() < 1e-5
    skew = q.clone()
    skew[:, 1] += q[:, 0]
    assert off_diagonal_l1(skew).item() > 0.5
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    net = APSSupernet(space)
    with torch.no_grad():
        for m in aps_modules(net).values():
            for _, _, p in m.projections():
                p.mul_(3.0)
    renormalize_projections(net)
    norms = torch.cat([p.norm(dim=0) for m in aps_modules(net).values() for _, _, p in m.projections()])
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # the regulariser covers every searchable layer once: each one contributes
    with torch.no_grad():
        per_layer = {n: v.item() for n, v in orthogonality_terms(net).items()}
        total = orthogonality_loss(net).item()
    assert list(per_layer) == list(aps_modules(net))
    assert all(v > 0 for v in per_layer.values())
    assert total == pytest.approx(sum(per_layer.values()), rel=1e-5)


def test_gradients_reach_meta_weights_then_projections():
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    net = APSSupernet(space)
    widths = space.widths([1] * space.num_decisions)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(net(x, widths), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [net.stem.conv.weight, net.fc.weight])
    assert all(p.grad is None for p in net.projection_parameters())  # detached: the task loss does not reach them
    attach_projections(net, True)
    net.zero_grad()
    F.cross_entropy(net(x, widths), y).backward()
    stem = net.stem.conv.out_proj
    assert stem.pair_grad(f'3_{widths[0]}').abs().sum() > 0
    assert stem.pair_grad(f'3_{CANDS[0] if widths[0] != CANDS[0] else CANDS[1]}').abs().sum() == 0  # unused pair


@pytest.mark.parametrize('family, depth, size', [('resnet_cifar', 8, 8), ('resnet', 18, 32), ('resnet', 50, 32),
                                                 ('mobilenetv2', 0, 32), ('mobilenetv3_large', 0, 32)])
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
    attach_projections(net, True)
    with torch.no_grad():
        for p in net.projection_parameters():
            p.mul_(2.0)
    net(torch.randn(2, 3, 8, 8), space.widths([0] * space.num_decisions)).sum().backward()
    renormalize_projections(net, only_updated=True)
    banks = [bank for m in aps_modules(net).values() for bank in m.banks()]
    assert any(b.weight.grad is None for b in banks) and any(b.weight.grad is not None for b in banks)
    for bank in banks:
        norms = torch.cat([bank[key].norm(dim=0) for key in bank.keys()])  # every projection column
        target = torch.ones_like(norms) * (1.0 if bank.weight.grad is not None else 2.0)
        assert torch.allclose(norms, target, atol=0.05)


def _reference_conv(layer, x, c_out, stride):
    """F.conv2d with the einsum kernel of docs/design.md#meta-weights-and-projections: the meaning every plan must reproduce."""
    key = f'{layer.meta_in if layer.fixed_in else x.shape[1]}_{c_out}'
    p = layer.out_proj[key]
    if layer.depthwise:
        w = torch.einsum('ijhw,ix->xjhw', layer.weight, p)
    elif layer.in_proj is None:
        w = torch.einsum('ijhw,ix->xjhw', layer.weight, p)
    else:
        w = torch.einsum('ijhw,ix,jy->xyhw', layer.weight, p, layer.in_proj[key])
    return F.conv2d(x, w, None, stride, layer.kernel_size // 2, 1, x.shape[1] if layer.depthwise else 1)


PLAN_LAYERS = {
    'conv': (dict(in_candidates=[4, 8], out_candidates=[6, 12], meta_in=12, meta_out=20, kernel_size=3, stride=2,
                  overlap=0.3), 8),
    'stem': (dict(in_candidates=None, out_candidates=[6, 12], meta_in=3, meta_out=14, kernel_size=7, stride=2), 3),
    'depthwise': (dict(in_candidates=[6, 12], out_candidates=[6, 12], meta_in=18, meta_out=18, kernel_size=3,
                       depthwise=True, overlap=0.0), 12),
}


@pytest.mark.parametrize('kind', PLAN_LAYERS)
def test_every_plan_computes_the_design_convolution(kind):
    """Projections on the kernel or on the activations: same output, same gradients."""
    kwargs, c_in = PLAN_LAYERS[kind]
    torch.manual_seed(0)
    layer = APSConv2d(**kwargs, noise=0.1)
    layer.projections_attached = True
    x = torch.randn(2, c_in, 9, 9)
    target = torch.randn_like(_reference_conv(layer, x, 12, layer.stride))
    _reference_conv(layer, x, 12, layer.stride).mul(target).sum().backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    expected_out = _reference_conv(layer, x, 12, layer.stride).detach()
    assert len(layer.plans()) == {'conv': 4, 'stem': 2, 'depthwise': 1}[kind]
    for plan in layer.plans():
        layer.zero_grad()
        layer.plan = plan
        out = layer(x, 12)
        out.mul(target).sum().backward()
        assert torch.allclose(out, expected_out, atol=1e-5), plan
        got = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
        assert got.keys() == expected.keys(), plan
        for n, g in got.items():
            assert torch.allclose(g, expected[n], rtol=1e-4, atol=1e-4), (plan, n)


@pytest.mark.parametrize('kind', PLAN_LAYERS)
@pytest.mark.parametrize('batch, size', [(1, 5), (16, 32)])
def test_plan_macs_equal_flop_counter(kind, batch, size):
    """The analytic cost that picks a plan is the multiply-add count torch's FlopCounterMode measures."""
    from torch.utils.flop_counter import FlopCounterMode
    kwargs, c_in = PLAN_LAYERS[kind]
    layer = APSConv2d(**kwargs)
    x = torch.randn(batch, c_in, size, size)
    out_pixels = batch * ((size - 1) // layer.stride + 1) ** 2
    counted = {}
    for plan in layer.plans():
        layer.plan = plan
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            layer(x, 12)
        counted[plan] = counter.get_total_flops() // 2
        assert layer.plan_macs(plan, c_in, 12, batch * size * size, out_pixels) == counted[plan], plan
    assert counted[layer.cheapest_plan(c_in, 12, batch * size * size, out_pixels)] == min(counted.values())


def test_cheapest_plan_moves_projections_to_the_side_that_costs_less():
    """Large images put the projections on the kernel; a 7x7 deep stage at batch 8 puts them on the activations."""
    layer = APSConv2d([256, 640], [256, 640], 640, 640, 3)
    assert layer.cheapest_plan(256, 256, 64 * 56 * 56, 64 * 56 * 56) == ('weight', 'weight')
    assert layer.cheapest_plan(640, 640, 8 * 7 * 7, 8 * 7 * 7) == ('activation', 'activation')
    layer.plan = ('weight', None)
    with pytest.raises(ValueError, match=r"plan \('weight', None\) is not one of this layer's plans"):
        layer(torch.randn(1, 256, 7, 7), 256)


def test_orthogonality_penalty_gradient_matches_autograd():
    """The one-matmul backward equals autograd through the plain formula (float64), batched too."""
    torch.manual_seed(0)
    p = torch.randn(3, 9, 5, dtype=torch.float64, requires_grad=True)
    gram = p.transpose(1, 2) @ p
    plain = (gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))).abs().sum((1, 2))
    weights = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    expected, = torch.autograd.grad((weights * plain).sum(), p)
    value = off_diagonal_l1(p)
    got, = torch.autograd.grad((weights * value).sum(), p)
    assert torch.allclose(value, plain)
    assert torch.allclose(got, expected)
    assert torch.autograd.gradcheck(off_diagonal_l1, (p.detach().requires_grad_(),))
    assert off_diagonal_l1(p[1]).item() == pytest.approx(plain[1].item())


def learning_supernet():
    """A small supernet with attached projections, one architecture and a batch: (net, widths, x, y)."""
    space = build_space('resnet_cifar', 8, CANDS, num_classes=3, input_size=(3, 8, 8), overlap=0.5)
    torch.manual_seed(0)
    net = APSSupernet(space)
    attach_projections(net, True)
    return net, space.widths([1] * space.num_decisions), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])


def test_penalty_gradient_adds_to_the_task_gradient():
    """``add_orthogonality_grad_`` after the task's backward leaves every projection with exactly the
    gradient autograd gives the task loss plus the weighted penalty, and returns the penalty."""
    net, widths, x, y = learning_supernet()
    banks = net.projection_parameters()
    expected = torch.autograd.grad(F.cross_entropy(net(x, widths), y) + 0.5 * orthogonality_loss(net), banks)
    F.cross_entropy(net(x, widths), y).backward()
    penalty = add_orthogonality_grad_(net, 0.5)
    assert penalty.item() == pytest.approx(orthogonality_loss(net).item())
    assert all(torch.allclose(p.grad, e, atol=1e-6) for p, e in zip(banks, expected))


@pytest.mark.parametrize('batch', [1, 64])
def test_linear_applies_its_projection_where_cheaper(batch):
    """APSLinear computes ``(W Q) x`` or ``W (Q x)``, the one FlopCounterMode finds cheaper, same logits."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    layer = APSLinear([8, 16], 40, 30, overlap=0.5, noise=0.1)
    x = torch.randn(batch, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = layer(x)
    expected = F.linear(x, layer.weight @ layer.in_proj['16_30'], layer.bias)
    assert torch.allclose(out, expected, atol=1e-5)
    kernel_side, activation_side = 30 * 40 * 16 + batch * 16 * 30, batch * 40 * (16 + 30)
    assert counter.get_total_flops() // 2 == min(kernel_side, activation_side)


def test_supernet_trains_under_bf16_autocast():
    """Mixed precision (Accelerate's bf16 autocast): the step runs and the penalty stays float32."""
    net, widths, x, y = learning_supernet()
    reference = orthogonality_loss(net)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = net(x, widths)
        loss = F.cross_entropy(logits, y)
        assert orthogonality_loss(net).dtype == torch.float32  # the Gram stays in the projections' precision
    loss.backward()
    penalty = add_orthogonality_grad_(net, 5e-3)
    assert logits.dtype == torch.bfloat16 and penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(reference.item(), rel=1e-5)
    used = net.stem.conv.out_proj.pair_grad(f'3_{widths[0]}')
    assert used.dtype == torch.float32 and torch.isfinite(used).all() and used.abs().sum() > 0
    assert net.stem.conv.weight.grad.abs().sum() > 0
