"""APS-T: the grouped orthogonality penalty, where projections learn from, and the sharing transition."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aps_zoo.aps import (APSConv2d, APSLinear, add_orthogonality_grad_, aps_modules, attach_projections,
                         grouped_orthogonality, layer_sharing_level, orthogonality_loss, orthogonality_terms)
from aps_zoo.aps.sharing import (MAX_LR_WEIGHT, REFERENCE_PROJECTION_LR, TRANSITION_LR_WEIGHT_UPDATES,
                                 transition_projection_lr)
from aps_zoo.recipe import RecipeError, recipe_from_dict
from aps_zoo.search.loop import Searcher, make_accelerator, search
from aps_zoo.spaces import APSSupernet, build_space
from conftest import import_benchmark

RESNET20 = [4, 8, 16, 32, 64]


def numpy_groups(layer):
    """The penalty's groups from their definition, as numpy matrices (not through the library)."""
    def mat(table, pair):
        return table[f'{pair[0]}_{pair[1]}'].detach().double().numpy()

    if isinstance(layer, APSLinear):
        return [np.concatenate([mat(layer.in_proj, p) for p in layer.pairs], axis=1)]
    if layer.depthwise or layer.fixed_in:  # one group of every candidate
        return [np.concatenate([mat(layer.out_proj, p) for p in layer.pairs], axis=1)]
    groups = []
    for c_in in sorted({i for i, _ in layer.pairs}):  # out axis: one input width, every output candidate
        groups.append(np.concatenate([mat(layer.out_proj, p) for p in layer.pairs if p[0] == c_in], axis=1))
    for c_out in sorted({o for _, o in layer.pairs}):  # in axis: one output width, every input candidate
        groups.append(np.concatenate([mat(layer.in_proj, p) for p in layer.pairs if p[1] == c_out], axis=1))
    return groups


def numpy_term(a):
    total = 0.0
    gram = a.T @ a
    for i in range(gram.shape[0]):
        for j in range(gram.shape[1]):
            if i != j:
                total += abs(gram[i, j])
    return total


@pytest.mark.parametrize('family, depth', [('resnet_cifar', 8), ('mobilenetv2', 0)])
def test_grouped_penalty_matches_its_definition(family, depth):
    """Every layer's term equals the definition computed with plain loops on random projections; every
    searchable layer (stem, block convs, shortcuts, depthwise, classifier) is there once."""
    space = build_space(family, depth, [4, 8, 12], num_classes=5, input_size=(3, 16, 16),
                        blockwise=family != 'resnet_cifar')
    torch.manual_seed(0)
    net = APSSupernet(space)
    with torch.no_grad():
        for p in net.projection_parameters():
            p.copy_(torch.randn_like(p))
    terms = orthogonality_terms(net)
    layers = aps_modules(net)
    assert list(terms) == list(layers)
    kinds = {'stem': 0, 'shortcut': 0, 'depthwise': 0, 'fc': 0}
    for name, layer in layers.items():
        expected = sum(numpy_term(a) for a in numpy_groups(layer))
        assert terms[name].item() == pytest.approx(expected, rel=1e-5), name
        kinds['stem'] += name.startswith('stem')
        kinds['shortcut'] += 'shortcut' in name
        kinds['depthwise'] += bool(getattr(layer, 'depthwise', False))
        kinds['fc'] += name == 'fc'
    assert kinds['stem'] == kinds['fc'] == 1
    assert kinds['shortcut' if family == 'resnet_cifar' else 'depthwise'] > 0
    assert orthogonality_loss(net).item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-5)


def test_grouped_penalty_sees_sharing():
    """A ResNet-20 layer (candidates 4..64, meta 124): each group's term is ~225 at overlap 1, ~77 at 0.5,
    ~17 at 0 (docs/design.md#grouped-orthogonality-penalty); 208 of the 225 are the exactly shared columns, 2 x sum over candidate pairs of
    the smaller width."""
    per_group = {}
    for overlap in (1.0, 0.5, 0.0):
        torch.manual_seed(0)
        layer = APSConv2d(RESNET20, RESNET20, 124, 124, 3, overlap=overlap)
        terms = grouped_orthogonality(layer)
        assert terms.shape == (10,)  # 5 input widths (out axis) + 5 output widths (in axis)
        per_group[overlap] = terms.mean().item()
    assert per_group[1.0] == pytest.approx(225, abs=3)
    assert per_group[0.5] == pytest.approx(77, abs=3)
    assert per_group[0.0] == pytest.approx(17, abs=2)
    shared = 2 * sum(min(a, b) for i, a in enumerate(RESNET20) for b in RESNET20[i + 1:])
    assert shared == 208 and per_group[1.0] - per_group[0.0] == pytest.approx(shared, abs=2)


@pytest.mark.parametrize('skip_equal', [False, True])
def test_projection_bank_keeps_each_group_contiguous(skip_equal):
    """One parameter per layer axis; each penalty group is one contiguous slab of it, equal to the group's
    projections concatenated side by side (transposed); equal-width groups share one batched slab."""
    torch.manual_seed(0)
    layer = APSConv2d(RESNET20, RESNET20, 124, 124, 1, overlap=0.5, skip_equal=skip_equal)
    assert [n for n, _ in layer.named_parameters()] == ['weight', 'out_proj.weight', 'in_proj.weight']
    for bank in layer.banks():
        slabs = list(bank.group_slabs())
        assert all(slab.is_contiguous() for slab in slabs)
        assert len(slabs) == (5 if skip_equal else 1)  # skip_equal: every group a different width
        per_group = [g for slab in slabs for g in slab.unbind()]
        groups = list(bank.groups().values())
        assert len(per_group) == len(groups) == 5
        assert all(torch.equal(g, torch.cat(ps, dim=1).t()) for g, ps in zip(per_group, groups))
        assert sum(p.shape[1] for _, p in bank.items()) == bank.weight.shape[0]


def small_net():
    space = build_space('resnet_cifar', 8, [4, 8, 16], num_classes=3, input_size=(3, 8, 8), overlap=1.0)
    torch.manual_seed(0)
    net = APSSupernet(space)
    return net, space.widths([1] * space.num_decisions), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])


def test_projection_grad_penalty_gives_projections_only_the_penalty_gradient():
    """Detached projections (``projection_grad: penalty``): the task loss gives them no gradient; with the
    penalty every projection of every group gets exactly the penalty's gradient."""
    net, widths, x, y = small_net()
    F.cross_entropy(net(x, widths), y).backward()
    assert all(p.grad is None for p in net.projection_parameters())
    assert net.stem.conv.weight.grad.abs().sum() > 0
    net.zero_grad()
    F.cross_entropy(net(x, widths), y).backward()
    add_orthogonality_grad_(net, 5e-3)  # as the search step does it
    got = [p.grad.clone() for p in net.projection_parameters()]
    expected = torch.autograd.grad(5e-3 * orthogonality_loss(net), net.projection_parameters())
    assert all(torch.allclose(g, e, atol=1e-7) for g, e in zip(got, expected))
    # the gradient reaches every projection of every group
    assert all(bank.pair_grad(key).abs().sum() > 0 for m in aps_modules(net).values() for bank in m.banks()
               for key in bank.keys())


def test_projection_grad_task_and_penalty_lets_the_task_loss_through():
    net, widths, x, y = small_net()
    attach_projections(net, True)
    F.cross_entropy(net(x, widths), y).backward()
    assert net.stem.conv.out_proj.pair_grad(f'3_{widths[0]}').abs().sum() > 0


@pytest.fixture(scope='module')
def transition():
    return import_benchmark('sharing_transition')


def test_transition_lr_completes_the_transition_on_time(transition):
    """The lr derived for N updates takes a ResNet-20 layer from ordinal sharing to near independence
    (<= 0.1) in N penalty-only updates, and not in the first N / 2; that moves a third of the projections' mass
    off the 64 meta channels ordinal sharing trains (0.66 measured)."""
    updates = 400
    lr = transition_projection_lr(1.0, updates, 5e-3)
    assert lr == pytest.approx(TRANSITION_LR_WEIGHT_UPDATES / (updates * 5e-3))
    assert transition_projection_lr(0.5, 20, 5e-3) == pytest.approx(MAX_LR_WEIGHT / 5e-3)  # capped
    layer = transition.make_model('layer')
    before = orthogonality_loss(layer).item()
    assert transition.trained_share(layer, 64) > 0.99
    curve = dict(transition.simulate(layer, lr, 5e-3, updates, updates // 2))
    assert curve[0] > 0.99 and curve[updates // 2] > 0.4 and curve[updates] <= 0.1
    assert orthogonality_loss(layer).item() < 0.5 * before  # the shared columns' share of the penalty is gone
    assert layer_sharing_level(layer) == pytest.approx(curve[updates])
    assert 0.5 < transition.trained_share(layer, 64) < 0.8


def tiny(tmp_path, **search):
    return {'name': 'tiny', 'seed': 3, 'output_dir': str(tmp_path),
            'data': {'dataset': 'digits', 'image_size': 8, 'val_fraction': 0.2, 'batch_size': 64, 'augment': False},
            'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8, 16]},
            'search': {'budget_macs': 2e5, 'epochs': 4, 'warmup_epochs': 1, 'steps_per_epoch': 4,
                       'decode_candidates': 8, 'decode_top_k': 2, 'band_samples': 4,
                       'controller': {'steps_per_epoch': 2}, **search}}


def test_projection_lr_precedence(tmp_path):
    """An explicit ``projection_lr`` wins; otherwise under ``penalty`` it is derived from ``sharing_transition``
    over the search's post-warm-up projection updates (3 epochs x 4 steps / orthogonal_every), under
    ``task_and_penalty`` it is the reference's."""
    acc = make_accelerator(cpu=True)
    derived = Searcher(recipe_from_dict(tiny(tmp_path, sharing_transition=0.25, orthogonal_every=2)), acc, tmp_path)
    assert derived.projection_lr == pytest.approx(transition_projection_lr(0.25, 3 * 4 // 2, 5e-3))
    explicit = Searcher(recipe_from_dict(tiny(tmp_path, sharing_transition=0.25, projection_lr=0.01)), acc, tmp_path)
    assert explicit.projection_lr == 0.01
    with_task = Searcher(recipe_from_dict(tiny(tmp_path, projection_grad='task_and_penalty')), acc, tmp_path)
    assert with_task.projection_lr == REFERENCE_PROJECTION_LR == 1e-3  # the law is for penalty-only updates


@pytest.mark.parametrize('key, value, match', [
    ('projection_grad', 'task', "'search.projection_grad' must be one of penalty, task_and_penalty, got 'task'"),
    ('sharing_transition', 0.0, r"'search.sharing_transition' must be in \(0, 1\]"),
    ('projection_lr', -1.0, "'search.projection_lr' must be >= 0 or null"),
    ('projection_start_epoch', 4, r"'search.projection_start_epoch' must be in \[0, search.epochs\) or null, got 4"),
    ('sharing_floor', 1.0, r"'search.sharing_floor' must be in \(0, 1\) or null, got 1.0"),
])
def test_bad_projection_keys(tmp_path, key, value, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict(tiny(tmp_path, **{key: value}))


def test_search_moves_sharing_after_warm_up(tmp_path):
    """A tiny search under the defaults (projection_grad: penalty, derived lr): sharing stays ordinal
    through warm-up, then falls every epoch; metrics.jsonl records the projection lr of every epoch."""
    search(recipe_from_dict(tiny(tmp_path)), cpu=True)
    records = [json.loads(line) for line in (tmp_path / 'tiny' / 'search' / 'metrics.jsonl').read_text().splitlines()]
    assert records[0]['phase'] == 'warmup' and records[0]['projection_lr'] == 0.0
    assert records[0]['sharing_mean'] > 0.99
    assert all(r['projection_lr'] == pytest.approx(transition_projection_lr(0.5, 12, 5e-3)) for r in records[1:])
    sharing = [r['sharing_mean'] for r in records]
    # 12 updates at the capped lr move it only a little (the transition itself: the simulation test above)
    assert all(a > b for a, b in zip(sharing, sharing[1:]))


def test_projection_start_epoch_moves_sharing_inside_warm_up(tmp_path):
    """``projection_start_epoch: 1`` with 2 warm-up epochs: the projections learn from epoch 1, inside warm-up,
    at the lr derived over the updates from there on (3 epochs x 4 steps), and sharing falls from that epoch."""
    search(recipe_from_dict(tiny(tmp_path, warmup_epochs=2, projection_start_epoch=1)), cpu=True)
    records = [json.loads(line) for line in (tmp_path / 'tiny' / 'search' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['phase'] for r in records] == ['warmup', 'warmup', 'search', 'search']
    derived = transition_projection_lr(0.5, 3 * 4, 5e-3)
    assert [r['projection_lr'] for r in records] == [0.0] + [pytest.approx(derived)] * 3
    sharing = [r['sharing_mean'] for r in records]
    assert sharing[0] > 0.99 and all(a > b for a, b in zip(sharing, sharing[1:]))


def test_sharing_floor_stops_the_projections_and_survives_resume(tmp_path):
    """``sharing_floor: 0.9`` at a fast projection lr: the first check in the learning phase (step 20, the end of
    epoch 1) finds sharing below 0.9, and the projections stop there: sharing stays at that level and the lr at 0
    for the rest of the search (without the floor the same lr takes sharing to 0.48 by epoch 3). A run resumed
    from epoch 2 keeps the floor: its last epoch matches the uninterrupted run's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical resume
    try:
        recipe = tiny(tmp_path / 'a', steps_per_epoch=10, projection_lr=2.0, sharing_floor=0.9)
        search(recipe_from_dict(recipe), cpu=True)
        run_a = tmp_path / 'a' / 'tiny' / 'search'
        shutil.copytree(tmp_path / 'a', tmp_path / 'b')
        shutil.rmtree(tmp_path / 'b' / 'tiny' / 'search' / 'checkpoints' / 'epoch_0003')
        search(recipe_from_dict({**recipe, 'output_dir': str(tmp_path / 'b')}), resume=True, cpu=True)
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (run_a / 'metrics.jsonl').read_text().splitlines()]
    assert [r['floor_step'] for r in records] == [None, 20, 20, 20]
    assert [r['projection_lr'] for r in records] == [0.0] * 4  # epoch 1 ends frozen
    sharing = [r['sharing_mean'] for r in records]
    assert sharing[0] > 0.99 and 0.5 < sharing[1] <= 0.9 and sharing[1] == sharing[2] == sharing[3]
    resumed = json.loads((tmp_path / 'b' / 'tiny' / 'search' / 'metrics.jsonl').read_text().splitlines()[-1])
    assert resumed['floor_step'] == 20 and resumed['sharing_mean'] == sharing[3]
