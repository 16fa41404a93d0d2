"""Data: digits through `datasets`, imagefolder and parquet directories, seeded splits and loader order."""
import logging

import datasets
import numpy as np
import pytest
import torch
from accelerate.utils import set_seed
from PIL import Image

from aps_zoo.data import DataError, _split, build_loaders, digits_dataset
from aps_zoo.recipe import DataSection

DIGITS8 = dict(dataset='digits', image_size=8, crop_pct=1.0, batch_size=32, eval_batch_size=500)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path / 'hf_cache'))


def _all_images(loader):
    """Every example of a loader's dataset (its own transform), as hashable bytes -> label."""
    ds = loader.dataset
    return {ds[i]['pixel_values'].numpy().tobytes(): ds[i]['label'] for i in range(len(ds))}


def _labels_of_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_digits_splits_shapes_and_disjoint_holdout():
    bundle = build_loaders(DataSection(**DIGITS8, augment=False), seed=0, holdout=True)
    assert bundle.num_classes == 10 and bundle.class_names == [str(i) for i in range(10)]
    assert bundle.input_size == (3, 8, 8)
    assert bundle.sizes == {'train': 1293, 'val': 144, 'test': 360}  # 20% test carved, then 10% of the rest
    assert 'scikit-learn digits (1797 8x8 images' in bundle.description and 'carved' in bundle.description
    images, labels = next(iter(bundle.train))
    assert images.shape == (32, 3, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert len(bundle.train) == 1293 // 32  # drop_last
    train, val, test = _all_images(bundle.train), _all_images(bundle.val), _all_images(bundle.test)
    assert (len(train), len(val), len(test)) == (1293, 144, 360)  # all 1797 digits are distinct images
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(set(val.values())) == list(range(10))  # stratified
    # normalised with the recipe's mean/std: a blank pixel is (0 - mean) / std
    assert images.min().item() == pytest.approx(-0.485 / 0.229, abs=1e-4)


def test_digits_holdout_off_and_test_split_fixed_across_seeds():
    a = build_loaders(DataSection(**DIGITS8, augment=False), seed=0, holdout=False)
    b = build_loaders(DataSection(**DIGITS8, augment=False), seed=5, holdout=True)
    assert a.val is None and a.sizes['train'] == 1437
    assert set(_all_images(a.test)) == set(_all_images(b.test))


@pytest.mark.parametrize('fraction,seed', [(0.2, 0), (0.1, 3), (0.33, 7)])
def test_stratified_split_carves_the_images_train_test_split_carves(fraction, seed):
    """The carved split reads the labels as one array, and carves exactly what datasets' own stratified
    `train_test_split` does, also from a dataset that is itself a selection (an indices mapping)."""
    rng = np.random.default_rng(1)
    whole = datasets.Dataset.from_dict({'x': list(range(700)), 'label': rng.integers(0, 7, 700).tolist()},
                                       features=datasets.Features({'x': datasets.Value('int64'),
                                                                   'label': datasets.ClassLabel(num_classes=7)}))
    ds = whole.select(rng.permutation(700)[:650])
    rest, carved = _split(ds, fraction, seed, 'label', 'validation')
    oracle = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column='label')
    assert rest['x'][:] == oracle['train']['x'][:] and carved['x'][:] == oracle['test']['x'][:]
    plain = ds.cast_column('label', datasets.Value('int64'))  # not a class label: not stratified, still seeded
    assert _split(plain, fraction, seed, 'label', 'test')[1]['x'][:] == plain.train_test_split(
        test_size=fraction, seed=seed)['test']['x'][:]


def test_a_class_with_one_image_cannot_be_stratified():
    ds = datasets.Dataset.from_dict({'label': [0] * 9 + [1]},
                                    features=datasets.Features({'label': datasets.ClassLabel(num_classes=2)}))
    with pytest.raises(DataError, match=r"^cannot carve the validation split \(20% of 10 images\): a class of "
                                        r"column 'label' has 1 image; a stratified split needs 2$"):
        _split(ds, 0.2, 0, 'label', 'validation')


def _first_batch(loader, global_seed):
    set_seed(global_seed)
    loader.sampler.set_epoch(0)
    return next(iter(loader))[0]


def test_digits_order_depends_only_on_seed_and_epoch():
    def loader(seed):
        return build_loaders(DataSection(**DIGITS8, max_train_samples=320), seed=seed, holdout=True).train
    a, b = loader(0), loader(0)
    assert _labels_of_epoch(a, 0) == _labels_of_epoch(b, 0)
    assert _labels_of_epoch(a, 3) == _labels_of_epoch(b, 3) != _labels_of_epoch(a, 0)
    assert _labels_of_epoch(a, 0) != _labels_of_epoch(loader(1), 0)
    x0, x1 = [_first_batch(loader, global_seed=7) for loader in (a, b)]
    assert torch.equal(x0, x1)  # augmentation follows the global RNGs (which Accelerate checkpoints restore)
    assert not torch.equal(x0, _first_batch(a, global_seed=8))


def test_digits_dataset_is_a_datasets_dataset():
    ds = digits_dataset()['train']
    assert isinstance(ds.features['image'], datasets.Image) and ds.features['label'].num_classes == 10
    img = ds[5]['image']
    assert img.mode == 'RGB' and img.size == (8, 8) and ds[5]['label'] == 5
    from sklearn.datasets import load_digits
    expected = np.round(load_digits().images[5] * 255 / 16)  # 0..16 intensities scaled to 0..255
    assert np.array_equal(np.asarray(img)[..., 1], expected)


def _write_imagefolder(root, classes=('cat', 'dog', 'fox'), per_class=6, splits=('train', 'test')):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


def test_imagefolder_skips_unreadable_files_with_a_count(tmp_path, caplog):
    root = _write_imagefolder(tmp_path / 'pets')
    (root / 'train' / 'cat' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    (root / 'test' / 'dog' / 'empty.jpg').write_bytes(b'')
    data = DataSection(dataset=str(root), image_size=16, batch_size=4, eval_batch_size=8)
    with caplog.at_level(logging.WARNING, logger='aps_zoo.data'):
        bundle = build_loaders(data, seed=0, holdout=False)
    assert bundle.skipped == 2
    assert 'skipped 1 unreadable image file(s)' in caplog.text and 'corrupt.png' in caplog.text
    assert 'empty.jpg' in caplog.text
    assert bundle.num_classes == 3 and bundle.class_names == ['cat', 'dog', 'fox']
    assert bundle.sizes == {'train': 18, 'val': None, 'test': 18}
    batches = list(bundle.train)
    assert len(batches) == 4 and batches[0][0].shape == (4, 3, 16, 16)
    assert sorted(torch.cat([y for _, y in bundle.test]).tolist()) == [0] * 6 + [1] * 6 + [2] * 6


def test_parquet_dir_detects_columns_encodes_labels_and_carves_test(tmp_path):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(40)]
    labels = [(i % 4) * 4 for i in range(40)]  # integer classes 0, 4, 8, 12 keep their values
    ds = datasets.Dataset.from_dict({'img': images, 'target': labels, 'note': ['x'] * 40},
                                    features=datasets.Features({'img': datasets.Image(),
                                                                'target': datasets.Value('int64'),
                                                                'note': datasets.Value('string')}))
    (tmp_path / 'pq').mkdir()
    ds.to_parquet(str(tmp_path / 'pq' / 'train-00000-of-00001.parquet'))
    data = DataSection(dataset=str(tmp_path / 'pq'), image_size=8, batch_size=8, test_fraction=0.25, val_fraction=0.2)
    bundle = build_loaders(data, seed=0, holdout=True)
    assert bundle.num_classes == 13
    assert bundle.sizes == {'train': 24, 'val': 6, 'test': 10}
    assert 'parquet' in bundle.description and 'test: 10 images carved' in bundle.description
    x, y = next(iter(bundle.train))
    assert x.shape == (8, 3, 8, 8)
    assert sorted(set(torch.cat([y for _, y in bundle.test]).tolist())) == [0, 4, 8, 12]


def test_streaming_imagefolder_skips_unreadable_images(tmp_path, caplog):
    root = _write_imagefolder(tmp_path / 'pets', classes=('cat', 'dog'), per_class=12)
    (root / 'train' / 'dog' / 'corrupt.png').write_bytes(b'not an image')
    data = DataSection(dataset=str(root), image_size=8, batch_size=5, eval_batch_size=8, streaming=True)
    with caplog.at_level(logging.WARNING, logger='aps_zoo.data'):
        bundle = build_loaders(data, seed=0, holdout=False)
        assert bundle.num_classes == 2
        assert [len(y) for _, y in bundle.train] == [5, 5, 5, 5]  # 24 readable images, last partial batch dropped
    assert 'skipped unreadable image' in caplog.text and 'corrupt.png' in caplog.text
    assert sum(len(y) for _, y in bundle.test) == 24
    with pytest.raises(DataError, match='size of the train split is unknown'):
        build_loaders(data, seed=0, holdout=True)


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match='does not exist'):
        build_loaders(DataSection(dataset=str(tmp_path / 'missing')), seed=0, holdout=False)
    with pytest.raises(DataError, match="cannot load dataset 'no-such-org/no-such-dataset'"):
        build_loaders(DataSection(dataset='no-such-org/no-such-dataset'), seed=0, holdout=False)
    root = _write_imagefolder(tmp_path / 'pets', per_class=3)
    with pytest.raises(DataError, match=r"data.image_column 'photo' is not a column; columns: \['image', 'label'\]"):
        build_loaders(DataSection(dataset=str(root), image_column='photo'), seed=0, holdout=False)
    with pytest.raises(DataError, match=r"split 'validation' not found .* splits: \['train', 'test'\]"):
        build_loaders(DataSection(dataset=str(root), test_split='validation'), seed=0, holdout=False)
    with pytest.raises(DataError, match='fewer than one batch'):
        build_loaders(DataSection(dataset=str(root), batch_size=64), seed=0, holdout=False)


def _labelled_images(n=40, classes=4, size=12, seed=1):
    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict(
        {'image': [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)],
         'label': [i % classes for i in range(n)]},
        features=datasets.Features({'image': datasets.Image(),
                                    'label': datasets.ClassLabel(names=[f'c{i}' for i in range(classes)])}))


def _labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_split_expressions_select_what_load_dataset_selects(tmp_path):
    root = _write_imagefolder(tmp_path / 'pets', per_class=10)
    data = DataSection(dataset=str(root), image_size=8, batch_size=4, augment=False,
                       train_split='train[:80%]', test_split='train[80%:]+test[:5]')
    bundle = build_loaders(data, seed=0, holdout=False)
    expected_train = datasets.load_dataset(str(root), split='train[:80%]')
    expected_test = datasets.load_dataset(str(root), split='train[80%:]+test[:5]')
    assert bundle.sizes == {'train': 24, 'val': None, 'test': 11} == {
        'train': len(expected_train), 'val': None, 'test': len(expected_test)}
    assert _labels(bundle.test) == list(expected_test['label'])
    assert sorted(_labels(bundle.train)) == sorted(expected_train['label'])[:len(bundle.train) * 4]
    with pytest.raises(DataError, match=r"split 'train\[:200%\]': Percent slice boundaries"):
        build_loaders(DataSection(dataset=str(root), train_split='train[:200%]'), seed=0, holdout=False)
    with pytest.raises(DataError, match=r"split 'validation\[:10%\]' not found"):
        build_loaders(DataSection(dataset=str(root), test_split='validation[:10%]'), seed=0, holdout=False)


def test_save_to_disk_folders_and_single_parquet_and_arrow_files(tmp_path):
    import pyarrow as pa
    full = _labelled_images()
    datasets.DatasetDict({'train': full.select(range(30)), 'test': full.select(range(30, 40))}).save_to_disk(
        str(tmp_path / 'dict'))
    full.save_to_disk(str(tmp_path / 'single'))
    full.to_parquet(str(tmp_path / 'all.parquet'))
    table = full.with_format('arrow')[:]
    with pa.OSFile(str(tmp_path / 'all.arrow'), 'wb') as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    common = dict(image_size=8, batch_size=4, augment=False)
    sizes = {}
    for name in ('dict', 'single', 'all.parquet', 'all.arrow'):
        bundle = build_loaders(DataSection(dataset=str(tmp_path / name), **common), seed=0, holdout=False)
        assert bundle.num_classes == 4 and bundle.class_names == ['c0', 'c1', 'c2', 'c3'], name
        sizes[name] = (bundle.sizes['train'], bundle.sizes['test'])
    assert sizes == {'dict': (30, 10), 'single': (32, 8), 'all.parquet': (32, 8), 'all.arrow': (32, 8)}
    assert 'save_to_disk folder' in build_loaders(DataSection(dataset=str(tmp_path / 'dict'), **common), seed=0,
                                                  holdout=False).description
    with pytest.raises(DataError, match='data.revision cannot be used with a save_to_disk folder'):
        build_loaders(DataSection(dataset=str(tmp_path / 'dict'), revision='main'), seed=0, holdout=False)
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(DataError, match='is a file but not .parquet or .arrow'):
        build_loaders(DataSection(dataset=str(tmp_path / 'notes.txt')), seed=0, holdout=False)


def test_data_files_per_split_with_a_builder_name(tmp_path):
    full = _labelled_images()
    full.select(range(32)).to_parquet(str(tmp_path / 'a.parquet'))
    full.select(range(32, 40)).to_parquet(str(tmp_path / 'b.parquet'))
    from aps_zoo.recipe import recipe_from_dict
    recipe = recipe_from_dict({'data': {'dataset': 'parquet', 'image_size': 8, 'batch_size': 4, 'data_files': {
        'train': str(tmp_path / 'a.parquet'), 'test': [str(tmp_path / 'b.parquet')]}}})
    bundle = build_loaders(recipe.data, seed=0, holdout=True)
    assert bundle.sizes == {'train': 28, 'val': 4, 'test': 8}  # stratified: one val image per class
    assert bundle.description.startswith('parquet {')


def test_config_name_and_revision_reach_load_dataset(monkeypatch):
    seen = {}

    def fake_load_dataset(path, **kwargs):
        seen.update(path=path, **kwargs)
        return datasets.DatasetDict({'train': _labelled_images(), 'test': _labelled_images(8, seed=2)})

    monkeypatch.setattr(datasets, 'load_dataset', fake_load_dataset)
    data = DataSection(dataset='someone/pets', config_name='small', revision='v1.0', image_size=8, batch_size=4)
    bundle = build_loaders(data, seed=0, holdout=False)
    assert seen == {'path': 'someone/pets', 'name': 'small', 'revision': 'v1.0', 'streaming': False}
    assert 'someone/pets (Hugging Face Hub, name small, revision v1.0)' in bundle.description


def test_streaming_integer_labels_need_num_classes(tmp_path):
    rng = np.random.default_rng(3)
    ds = datasets.Dataset.from_dict(
        {'img': [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(20)],
         'target': [i % 5 for i in range(20)]},
        features=datasets.Features({'img': datasets.Image(), 'target': datasets.Value('int64')}))
    (tmp_path / 'pq').mkdir()
    ds.to_parquet(str(tmp_path / 'pq' / 'train.parquet'))
    ds.to_parquet(str(tmp_path / 'pq' / 'test.parquet'))
    data = dict(dataset=str(tmp_path / 'pq'), image_size=8, batch_size=4, streaming=True)
    with pytest.raises(DataError, match='is not a ClassLabel; set data.num_classes'):
        build_loaders(DataSection(**data), seed=0, holdout=False)
    bundle = build_loaders(DataSection(**data, num_classes=6), seed=0, holdout=False)
    assert bundle.num_classes == 6 and bundle.class_names == ['0', '1', '2', '3', '4', '5']
    assert sorted(_labels(bundle.test)) == sorted(i % 5 for i in range(20))
    with pytest.raises(DataError, match='split expressions need streaming: false'):
        build_loaders(DataSection(**data, num_classes=6, train_split='train[:50%]'), seed=0, holdout=False)


def test_imagefolder_is_listed_and_checked_once_per_process(tmp_path, monkeypatch):
    import datasets.data_files as data_files
    root = _write_imagefolder(tmp_path / 'pets', per_class=6)
    globs, loads = [], []
    resolve, load = data_files.resolve_pattern, datasets.load_dataset
    monkeypatch.setattr(data_files, 'resolve_pattern', lambda *a, **k: globs.append(a[0]) or resolve(*a, **k))
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: loads.append(a) or load(*a, **k))
    data = DataSection(dataset=str(root), image_size=8, batch_size=4, val_fraction=0.2)
    search = build_loaders(data, seed=0, holdout=True)
    after_first = len(globs)
    train = build_loaders(DataSection(dataset=str(root), image_size=16, batch_size=2), seed=1, holdout=False)
    assert len(loads) == 1 and after_first > 0 and len(globs) == after_first  # the second build lists nothing
    assert search.sizes['test'] == train.sizes['test'] == 18 and train.sizes['train'] == 18


def test_16_bit_pngs_load_like_their_8_bit_equivalent(tmp_path):
    rng = np.random.default_rng(4)
    for bits, root in ((8, tmp_path / 'eight'), (16, tmp_path / 'sixteen')):
        for split in ('train', 'test'):
            for c in ('a', 'b'):
                (root / split / c).mkdir(parents=True)
    for split in ('train', 'test'):
        for c in ('a', 'b'):
            for i in range(4):
                values = rng.integers(0, 256, (10, 10))
                Image.fromarray(values.astype(np.uint8)).save(tmp_path / 'eight' / split / c / f'{i}.png')
                Image.fromarray((values * 257).astype(np.uint16)).save(tmp_path / 'sixteen' / split / c / f'{i}.png')
    assert Image.open(tmp_path / 'sixteen' / 'test' / 'a' / '0.png').mode == 'I;16'
    common = dict(image_size=10, crop_pct=1.0, batch_size=4, augment=False)
    eight, sixteen = [build_loaders(DataSection(dataset=str(tmp_path / name), **common), seed=0, holdout=False)
                      for name in ('eight', 'sixteen')]
    x8, x16 = next(iter(eight.test))[0], next(iter(sixteen.test))[0]
    assert x16.std() > 0.5 and torch.allclose(x8, x16, atol=1e-6)  # not all white: the same pixels


def test_device_loader_normalises_on_the_device_and_marks_only_the_last_batch():
    """device_loaders: uint8 batches through Accelerate, normalised by timm's PrefetchLoader to what the loader
    used on its own yields; although the prefetcher reads one batch ahead, Accelerate's end-of-data flag (read
    by gather_for_metrics and gradient accumulation) is set for the last batch handed out and no other."""
    from accelerate import Accelerator
    from aps_zoo.prefetch import collate_uint8, device_loaders
    accelerator = Accelerator(cpu=True)
    bundle = build_loaders(DataSection(**{**DIGITS8, 'eval_batch_size': 100}, augment=False), seed=0, holdout=True)
    train, val, test = device_loaders(accelerator, bundle, seed=0)
    assert train.shard.collate_fn is collate_uint8 and next(iter(train.shard))[0].dtype == torch.uint8
    train.end()  # left after one batch
    flags, batches = [], []
    for images, labels in test:
        flags.append(accelerator.gradient_state.end_of_dataloader)
        batches.append((images, labels))
    assert flags == [False] * 3 + [True]  # 360 test images in batches of 100
    assert not accelerator.gradient_state.in_dataloader
    for (images, labels), (x, y) in zip(batches, bundle.test):
        assert images.dtype == torch.float32 and torch.equal(labels, y)
        torch.testing.assert_close(images, x)
    assert sum(len(y) for _, y in val) == bundle.sizes['val'] and len(train) == len(bundle.train)


def test_stream_holdout_takes_val_size_images_from_the_head(tmp_path):
    rng = np.random.default_rng(4)
    ds = datasets.Dataset.from_dict(
        {'image': [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(20)],
         'label': [i % 2 for i in range(20)]},
        features=datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=['a', 'b'])}))
    (tmp_path / 'pq').mkdir()
    ds.to_parquet(str(tmp_path / 'pq' / 'train.parquet'))
    ds.to_parquet(str(tmp_path / 'pq' / 'test.parquet'))
    data = dict(dataset=str(tmp_path / 'pq'), image_size=8, batch_size=4, eval_batch_size=3, streaming=True,
                augment=False)
    with pytest.raises(DataError, match='set data.val_size'):
        build_loaders(DataSection(**data), seed=0, holdout=True)
    bundle = build_loaders(DataSection(**data, val_size=6), seed=0, holdout=True)
    val = [x for x, _ in bundle.val]
    train = [x for x, _ in bundle.train]
    assert sum(len(x) for x in val) == 6 and bundle.sizes['val'] == 6
    assert sum(len(x) for x in train) == 12  # 14 left, whole batches of 4
    seen_val = {x.numpy().tobytes() for batch in val for x in batch}
    assert not seen_val & {x.numpy().tobytes() for batch in train for x in batch}


def test_interpolation_is_the_callers_and_reaches_the_resize_and_the_data_config():
    from aps_zoo.families import interpolation
    section = DataSection(**{**DIGITS8, 'image_size': 32}, augment=False)
    bundles = {mode: build_loaders(section, seed=0, holdout=False, interpolation=mode)
               for mode in ('bilinear', 'bicubic')}
    assert {m: b.data_config['interpolation'] for m, b in bundles.items()} == {'bilinear': 'bilinear',
                                                                             'bicubic': 'bicubic'}
    first = {m: b.test.dataset[0]['pixel_values'] for m, b in bundles.items()}
    assert first['bilinear'].shape == first['bicubic'].shape == (3, 32, 32)
    assert not torch.equal(first['bilinear'], first['bicubic'])  # 8 -> 32 upsampled two ways
    assert (interpolation('mobilenetv2'), interpolation('resnet_cifar')) == ('bicubic', 'bilinear')
