import struct
from collections import Counter

import pytest
import torch

from xcf.datasets import DIGITS_LEVELS, load_digits, load_torchvision


def _rows(x, y):
    return Counter((tuple((xi.flatten() * 16).round().int().tolist()), int(yi)) for xi, yi in zip(x, y))


def test_digits_shapes_dtypes_and_range():
    for split, n in (("train", 1347), ("test", 450), ("all", 1797)):
        x, y = load_digits(split)
        assert x.shape == (n, 1, 8, 8) and y.shape == (n,)
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert set(y.unique().tolist()) == set(range(10))
        # exactly DIGITS_LEVELS grey levels k / (L - 1)
        k = x * (DIGITS_LEVELS - 1)
        assert torch.equal(k, k.round())


def test_digits_split_is_deterministic_disjoint_and_covering():
    x1, y1 = load_digits("train", seed=3)
    x2, y2 = load_digits("train", seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    xt, yt = load_digits("test", seed=3)
    xa, ya = load_digits("all")
    # as multisets, train + test is exactly the whole set: disjoint and covering
    assert _rows(x1, y1) + _rows(xt, yt) == _rows(xa, ya)
    x0, _ = load_digits("train", seed=4)
    assert not torch.equal(x0, x1)


def test_digits_split_is_stratified_and_sized():
    _, y = load_digits("test", test_size=0.2)
    _, ya = load_digits("all")
    assert y.shape[0] == 360
    for c in range(10):
        assert abs(int((y == c).sum()) - 0.2 * int((ya == c).sum())) <= 1


def test_digits_returns_fresh_tensors():
    x, y = load_digits("test")
    x.zero_()
    y.zero_()
    x2, y2 = load_digits("test")
    assert float(x2.max()) == 1.0 and int(y2.max()) == 9


@pytest.mark.parametrize(
    "kwargs, match",
    [({"split": "valid"}, "split"), ({"test_size": 1.5}, "test_size"), ({"test_size": 0}, "test_size")],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


def _write_idx(path, array, dtype_code=0x08):
    """IDX: magic (0, 0, type, ndim), big-endian int32 dims, then the raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, dtype_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + bytes(array.flatten().tolist()))


def _write_set(root, folder, n_train=5, n_test=3):
    g = torch.Generator().manual_seed(0)
    data = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        _write_idx(root / folder / "raw" / f"{part}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{part}-labels-idx1-ubyte", labels)
        data[part] = (images, labels)
    return data


def test_torchvision_reads_idx_files(tmp_path):
    data = _write_set(tmp_path, "MNIST")
    x, y = load_torchvision("mnist", tmp_path)
    images, labels = data["train"]
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.long and torch.equal(y, labels.long())
    assert torch.allclose(x[:, 0] * 255, images.float())
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xt, yt = load_torchvision("MNIST", str(tmp_path), train=False, limit=2)
    assert xt.shape == (2, 1, 28, 28) and torch.equal(yt, data["t10k"][1][:2].long())


def test_torchvision_fashion_name_variants(tmp_path):
    data = _write_set(tmp_path, "FashionMNIST")
    for name in ("fashionmnist", "Fashion-MNIST", "fashion_mnist"):
        _, y = load_torchvision(name, tmp_path)
        assert torch.equal(y, data["train"][1].long())


def test_torchvision_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_torchvision("mnist", tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_torchvision_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        load_torchvision("cifar10", tmp_path)
    _write_set(tmp_path, "MNIST")
    with pytest.raises(ValueError, match="limit"):
        load_torchvision("mnist", tmp_path, limit=0)


def test_shifted_images_grow_a_set_without_copies():
    from xcf.datasets import ShiftedImages

    x, y = load_digits("test")
    data = ShiftedImages(x, y, n=20_000)
    assert len(data) == 20_000
    assert torch.equal(data[5][0], x[5]) and int(data[5][1]) == int(y[5])
    right, label = data[450 + 5]  # second offset (0, 1): one pixel to the right, zeros moved in
    assert torch.equal(right[..., 1:], x[5][..., :-1]) and float(right[..., 0].abs().sum()) == 0
    assert int(label) == int(y[5])
    up_left, _ = data[8 * 450 + 5]  # offset (-1, -1)
    assert torch.equal(up_left[..., :-1, :-1], x[5][..., 1:, 1:])
    assert torch.equal(data[9 * 450][0], x[0])  # beyond 9 N the items repeat
    assert torch.equal(data[-1][0], data[19_999][0])
    with pytest.raises(IndexError):
        data[20_000]
    with pytest.raises(ValueError, match="n must be a positive int"):
        ShiftedImages(x, y, n=0)
    with pytest.raises(ValueError, match="y must have shape"):
        ShiftedImages(x, y[:3])


def test_audit_data_sets():
    from xcf.datasets.files import open_images

    assert len(open_images("digits-test")) == 450 and len(open_images("digits-all", n=10)) == 10
    assert len(open_images("digits-shifted")) == 9 * 450 and len(open_images("digits-shifted", n=5000)) == 5000
    with pytest.raises(ValueError, match="500 images asked for, but digits-test has 450"):
        open_images("digits-test", n=500)
    with pytest.raises(ValueError, match="neither a built-in set"):
        open_images("cifar")
