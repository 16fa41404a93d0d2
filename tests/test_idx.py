"""MNIST-format (IDX) folders: pixels and labels round-trip, hostile files refused in one line, a search runs."""
import gzip
import os
import struct
import tracemalloc

import datasets
import numpy as np
import pytest
import torch
import yaml

from aps_zoo.channels import ChannelConfig
from aps_zoo.data import build_loaders
from aps_zoo.idx import IMAGES_MAGIC, LABELS_MAGIC, IdxError, idx_dataset, read_idx
from aps_zoo.recipe import DataSection, recipe_from_dict
from aps_zoo.search.loop import search


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path / 'hf_cache'))


def write_idx(path, array, zipped=False, dims=None):
    """An IDX file written by hand: big-endian magic and dimensions, then the uint8 bytes."""
    array = np.asarray(array, dtype=np.uint8)
    dims = array.shape if dims is None else dims
    magic = IMAGES_MAGIC if len(dims) == 3 else LABELS_MAGIC
    raw = struct.pack(f'>{1 + len(dims)}I', magic, *dims) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if zipped else raw)
    return path


def mnist_folder(root, n_train=40, n_test=10, shape=(8, 8), zipped=False, seed=0):
    """A folder in MNIST's layout with random pixels; class k images have mean brightness ~ k (learnable)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = '.gz' if zipped else ''
    arrays = {}
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        if not n:
            continue
        labels = np.arange(n) % 4
        images = np.clip(rng.integers(0, 64, (n, *shape)) + 60 * labels[:, None, None], 0, 255).astype(np.uint8)
        write_idx(root / f'{prefix}-images-idx3-ubyte{ext}', images, zipped)
        write_idx(root / f'{prefix}-labels-idx1-ubyte{ext}', labels, zipped)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize('zipped', [False, True])
def test_pixels_and_labels_round_trip(tmp_path, zipped):
    arrays = mnist_folder(tmp_path / 'm', shape=(7, 5), zipped=zipped)  # rows != cols: orientation checked
    dd = idx_dataset(tmp_path / 'm')
    assert list(dd) == ['train', 'test']
    assert dd['train'].features['label'].names == ['0', '1', '2', '3']
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        images, labels = arrays[prefix]
        assert len(dd[split]) == len(images)
        decoded = np.stack([np.asarray(ex['image']) for ex in dd[split]])
        assert dd[split][0]['image'].size == (5, 7) and dd[split][0]['image'].mode == 'L'
        np.testing.assert_array_equal(decoded, images)
        assert dd[split]['label'] == labels.tolist()


def test_idx_folder_through_the_loaders(tmp_path):
    arrays = mnist_folder(tmp_path / 'm', n_train=40, n_test=12)
    data = DataSection(dataset=str(tmp_path / 'm'), image_size=8, crop_pct=1.0, batch_size=8, eval_batch_size=12,
                       augment=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    bundle = build_loaders(data, seed=0, holdout=True)
    assert bundle.num_classes == 4 and bundle.sizes == {'train': 36, 'val': 4, 'test': 12}
    assert bundle.description.startswith(f"IDX folder {tmp_path / 'm'} (4 classes")
    pixels, labels = next(iter(bundle.test))
    images, expected = arrays['t10k']
    assert pixels.shape == (12, 3, 8, 8) and labels.tolist() == expected.tolist()
    grey = torch.as_tensor(images, dtype=torch.float32) / 255  # greyscale copied to R, G and B
    torch.testing.assert_close(pixels, grey[:, None].expand(-1, 3, -1, -1))


def test_train_only_folder_gets_a_carved_test_split_and_plain_file_wins(tmp_path):
    mnist_folder(tmp_path / 'm', n_train=50, n_test=0)
    (tmp_path / 'm' / 'train-images-idx3-ubyte.gz').write_bytes(b'not gzip')  # the uncompressed file is read
    data = DataSection(dataset=str(tmp_path / 'm'), image_size=8, batch_size=8, augment=False)
    bundle = build_loaders(data, seed=0, holdout=False)
    assert bundle.sizes == {'train': 40, 'val': None, 'test': 10}
    assert 'carved from the train split' in bundle.description


def _tiny_bomb(path, claimed_images=10, extra=8 << 20):
    """A gzip file whose header claims ``claimed_images`` 8x8 images but which inflates to ``extra`` more bytes."""
    raw = struct.pack('>4I', IMAGES_MAGIC, claimed_images, 8, 8) + bytes(64 * claimed_images + extra)
    path.write_bytes(gzip.compress(raw, compresslevel=9))


def test_gzip_bomb_and_huge_headers_refused_before_allocating(tmp_path):
    cases = {
        'bomb.gz': (_tiny_bomb, 'holds more data than the 640 bytes its header says'),
        'huge': (lambda p: write_idx(p, np.zeros((1, 8, 8)), dims=(2 ** 31, 2 ** 10, 2 ** 10)), 'header'),
        'huge.gz': (lambda p: write_idx(p, np.zeros((1, 8, 8)), zipped=True, dims=(2 ** 20, 2 ** 10, 2 ** 10)),
                    'more than a'),
    }
    for name, (make, message) in cases.items():
        make(tmp_path / name)
        tracemalloc.start()
        with pytest.raises(IdxError, match=message):
            read_idx(tmp_path / name, IMAGES_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 << 20, (name, peak)  # the 8 MiB of zeros (and the claimed terabytes) never held


def test_files_over_the_memory_limit_refused(tmp_path, monkeypatch):
    import aps_zoo.idx
    path = write_idx(tmp_path / 'images', np.zeros((40, 8, 8)))
    assert read_idx(path, IMAGES_MAGIC).shape == (40, 8, 8)
    monkeypatch.setattr(aps_zoo.idx, 'MAX_BYTES', 40 * 64 - 1)
    with pytest.raises(IdxError, match=r'claims 2560 bytes, more than the 2559 an IDX dataset may hold'):
        read_idx(path, IMAGES_MAGIC)


def _make(root, case):
    """An MNIST folder under ``root`` with the defect ``case``; returns the expected parts of the error line."""
    folder = root / 'm'
    mnist_folder(folder, zipped=case.endswith('gz'))
    train_images, train_labels = folder / 'train-images-idx3-ubyte', folder / 'train-labels-idx1-ubyte'
    if case == 'wrong magic':
        write_idx(train_labels, np.zeros((40, 8, 8)))  # an image file under the labels name
        return [str(train_labels), 'magic number 2051, expected 2049']
    if case == 'count larger than the file':
        write_idx(train_images, np.zeros((40, 8, 8)), dims=(41, 8, 8))
        return [str(train_images), 'is 2576 bytes but its header [41, 8, 8] says 2640']
    if case == 'truncated gz':
        gz = folder / 'train-images-idx3-ubyte.gz'
        gz.write_bytes(gz.read_bytes()[:-40])
        return [str(gz), 'cannot be read']
    if case == 'short gz':
        gz = folder / 'train-labels-idx1-ubyte.gz'
        gz.write_bytes(gzip.compress(struct.pack('>2I', LABELS_MAGIC, 40) + bytes(30)))
        return [str(gz), 'holds 30 bytes of data, fewer than the 40 its header says']
    if case == 'labels and images disagree':
        write_idx(train_labels, np.zeros(39))
        return [str(train_images), str(train_labels), '40 images, 39 labels']
    if case == 'missing labels':
        train_labels.unlink()
        return [str(folder), 'train-labels-idx1-ubyte[.gz]', 'train split']
    if case == 'link out of the folder':
        outside = write_idx(root / 'elsewhere', np.zeros(40))
        train_labels.unlink()
        train_labels.symlink_to(outside)
        return [str(train_labels), f'links to {outside}, outside the folder']
    if case == 'fifo':
        train_labels.unlink()
        os.mkfifo(train_labels)  # opening it would block forever
        return [str(train_labels), 'not a regular file']
    raise AssertionError(case)


@pytest.mark.parametrize('case', ['wrong magic', 'count larger than the file', 'truncated gz', 'short gz',
                                  'labels and images disagree', 'missing labels', 'link out of the folder', 'fifo'])
def test_cli_refuses_bad_idx_folder_in_one_line(tmp_path, monkeypatch, capsys, case):
    from aps_zoo.cli import main
    expected = _make(tmp_path, case)
    recipe = {'name': 'x', 'output_dir': str(tmp_path / 'runs'), 'data': {'dataset': 'digits', 'image_size': 8},
              'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8]},
              'search': {'budget_macs': 1e6, 'epochs': 2, 'warmup_epochs': 1}}
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(recipe))
    code = main(['search', str(tmp_path / 'r.yaml'), '--cpu', '--set', f"data.dataset={tmp_path / 'm'}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith('aps-zoo search: error: IDX '), lines
    assert all(part in lines[0] for part in expected), lines
    assert not (tmp_path / 'runs').exists()  # refused before writing


def test_search_on_an_idx_folder(tmp_path):
    mnist_folder(tmp_path / 'm', n_train=160, n_test=40, zipped=True)
    recipe = recipe_from_dict({
        'name': 'idx', 'seed': 0, 'output_dir': str(tmp_path / 'runs'),
        'data': {'dataset': str(tmp_path / 'm'), 'image_size': 8, 'batch_size': 32, 'augment': False},
        'space': {'family': 'resnet_cifar', 'depth': 8, 'candidates': [4, 8]},
        'search': {'budget_macs': 2e5, 'epochs': 2, 'warmup_epochs': 1, 'steps_per_epoch': 2, 'decode_candidates': 8,
                   'decode_top_k': 2, 'band_samples': 4, 'controller': {'steps_per_epoch': 2}}})
    result = search(recipe, cpu=True)
    config = ChannelConfig.load(tmp_path / 'runs' / 'idx' / 'search' / 'channel_config.json')
    assert config == result.config and config.num_classes == 4
    assert config.provenance['dataset'].startswith(f"IDX folder {tmp_path / 'm'} (4 classes; train 144, val 16")


def test_fashion_mnist_names_the_hub_dataset(tmp_path, monkeypatch):
    from aps_zoo.data import DataError
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    with pytest.raises(DataError, match=r"'fashion_mnist': Couldn't reach 'zalando-datasets/fashion_mnist'"):
        build_loaders(DataSection(dataset='fashion_mnist'), seed=0, holdout=True)  # offline in tests
