"""A user's images from files: ImageFolder layouts and .npz files (written by the tests themselves)."""

import numpy as np
import pytest
import torch
from PIL import Image

from xcf.datasets.files import BUILTIN, open_images


def write_folder(root, images, labels, names=None, mode="L"):
    """``images`` uint8 (N, H, W) or (N, H, W, 3) as PNG files under ``root/<class>/``."""
    for i, (a, k) in enumerate(zip(images, labels)):
        d = root / (names[k] if names else str(int(k)))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, mode).save(d / f"{i:04d}.png")
    return root


def grey(n=12, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), np.arange(n) % 3


def test_grey_folder_reads_exact_pixels_and_numeric_class_names(tmp_path):
    x, y = grey()
    data = open_images(write_folder(tmp_path / "f", x, y + 2))  # folders 2, 3, 4: those classes
    assert data.shape == (1, 8, 8) and len(data) == 12 and data.labelled and data.levels == 256
    assert data.classes == ["0", "1", "2", "3", "4"]
    xs, ys = data.tensors()
    order = np.argsort(y + 2, kind="stable")  # files are listed class by class
    torch.testing.assert_close(xs[:, 0], torch.from_numpy(x[order]).float() / 255, rtol=0, atol=0)
    assert ys.tolist() == (y[order] + 2).tolist()
    x0, y0 = data.dataset[0]
    assert x0.dtype == torch.float32 and x0.shape == (1, 8, 8) and isinstance(y0, int)


def test_named_class_folders_are_sorted_and_colour_is_detected(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    data = open_images(write_folder(tmp_path / "c", rgb, [0, 1, 0, 1, 0, 1], ["zebra", "apple"], mode="RGB"))
    assert data.shape == (3, 5, 7) and data.classes == ["apple", "zebra"]
    x, y = data.tensors()
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(x[0], torch.from_numpy(rgb[1]).permute(2, 0, 1).float() / 255, rtol=0, atol=0)
    as_grey = open_images(tmp_path / "c", channels=1)
    assert as_grey.shape == (1, 5, 7)
    luma = np.asarray(Image.fromarray(rgb[1], "RGB").convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(as_grey.dataset[0][0][0].numpy(), luma)


def test_npz_variants(tmp_path):
    x, y = grey(n=10)
    np.savez(tmp_path / "hw.npz", x=x)
    d = open_images(tmp_path / "hw.npz")
    assert d.shape == (1, 8, 8) and not d.labelled and d.classes is None and d.levels == 256
    torch.testing.assert_close(d.tensors()[0][:, 0], torch.from_numpy(x).float() / 255)
    assert d.tensors()[1] is None and d.dataset[0][0].shape == (1, 8, 8)

    f = np.random.default_rng(0).random((10, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=f, y=y, classes=np.array(["a", "b", "c"]))
    d = open_images(tmp_path / "f.npz", n=4)
    assert d.shape == (3, 4, 4) and d.classes == ["a", "b", "c"] and len(d) == 4 and d.levels is None
    assert d.tensors()[1].tolist() == y[[0, 3, 6, 9]].tolist()  # spread over the set
    g = open_images(tmp_path / "f.npz", channels=1)
    torch.testing.assert_close(g.tensors()[0][:, 0], torch.from_numpy(f[:, 0] * .299 + f[:, 1] * .587 + f[:, 2] * .114))
    assert open_images(tmp_path / "hw.npz", channels=3).shape == (3, 8, 8)
    np.savez(tmp_path / "g.npz", x=x, y=y)
    assert open_images(tmp_path / "g.npz").classes == ["0", "1", "2"]


def test_fingerprint_follows_the_content(tmp_path):
    x, y = grey(n=4)
    root = write_folder(tmp_path / "f", x, y)
    a = open_images(root).fingerprint
    assert open_images(root).fingerprint == a
    Image.fromarray(255 - x[0], "L").save(next(root.glob("0/*.png")))
    Image.fromarray(x[1], "L").save(root / "1" / "extra.png")
    assert open_images(root).fingerprint != a
    np.savez(tmp_path / "a.npz", x=x)
    b = open_images(tmp_path / "a.npz").fingerprint
    np.savez(tmp_path / "a.npz", x=255 - x)
    assert open_images(tmp_path / "a.npz").fingerprint != b


def bad_folder(tmp_path, kind):
    root = tmp_path / kind
    x, y = grey(n=4)
    if kind == "no sub-folders":
        root.mkdir()
        Image.fromarray(x[0], "L").save(root / "a.png")
    elif kind == "no images":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "notes.txt").write_text("hi")
    elif kind == "mixed sizes":
        write_folder(root, x, y)
        Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(root / "0" / "big.png")
    elif kind == "broken image":
        write_folder(root, x, y)
        (root / "1" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("kind, message", [
    ("no sub-folders", "has no class sub-folders"),
    ("no images", "holds no images"),
    ("mixed sizes", "images of 2 sizes, e.g. 8x8"),
    ("broken image", "broken.png is not a readable image"),
])
def test_bad_folders_are_one_clear_error(tmp_path, kind, message):
    root = bad_folder(tmp_path, kind)
    with pytest.raises(ValueError, match=message):
        open_images(root)


def bad_npz(tmp_path, kind):
    path = tmp_path / f"{kind.replace(' ', '_')}.npz"
    x, y = grey(n=4)
    arrays = {
        "no x": {"images": x},
        "channels ambiguous": {"x": np.zeros((4, 3, 8, 3), np.uint8)},  # 3 channels on axis 1 and on the last
        "float out of range": {"x": x.astype(np.float32)},
        "nan": {"x": np.full((4, 8, 8), np.nan, np.float32)},
        "int16": {"x": x.astype(np.int16)},
        "short y": {"x": x, "y": y[:3]},
        "negative y": {"x": x, "y": -np.ones(4, np.int64)},
        "few classes": {"x": x, "y": y, "classes": np.array(["a"])},
        "one d": {"x": np.zeros(5, np.uint8)},
    }
    if kind == "object array":
        np.savez(path, x=np.array([x[0], "text"], dtype=object))
    elif kind == "not npz":
        path = tmp_path / "x.npy"
        np.save(path, x)
    else:
        np.savez(path, **arrays[kind])
    return path


@pytest.mark.parametrize("kind, message", [
    ("no x", r"holds the arrays \['images'\] but no 'x'"),
    ("channels ambiguous", "say which with --layout nchw or --layout nhwc"),
    ("float out of range", "float 'x' must lie in \\[0, 1\\]"),
    ("nan", "NaN or infinite"),
    ("int16", "must be uint8"),
    ("short y", "'y' must hold 4 integer class indices"),
    ("negative y", "negative class index"),
    ("few classes", "'classes' names only 1"),
    ("one d", "must have shape \\(N, C, H, W\\), \\(N, H, W, C\\)"),
    ("object array", "object arrays are refused"),
    ("not npz", "expected a folder of class sub-folders or an .npz"),
])
def test_bad_npz_is_one_clear_error(tmp_path, kind, message):
    path = bad_npz(tmp_path, kind)
    with pytest.raises(ValueError, match=message):
        open_images(path)


def test_builtins_and_bad_arguments():
    assert "mnist-test" in BUILTIN and "digits-shifted" in BUILTIN
    assert open_images("digits-train").shape == (1, 8, 8)
    assert open_images("digits-test", channels=3).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="channels must be 1"):
        open_images("digits-test", channels=2)
    with pytest.raises(ValueError, match="neither a built-in set"):
        open_images("no/such/place")


def test_a_folder_prefix_is_spread_over_every_class(tmp_path):
    x, y = grey(n=30)
    data = open_images(write_folder(tmp_path / "f", x, np.sort(y)), n=6)  # files listed class by class
    assert len(data) == 6 and sorted(set(data.labels().tolist())) == [0, 1, 2]
    assert data.labels().tolist() == data.tensors()[1].tolist()
    assert open_images(tmp_path / "f").labels().tolist() == np.sort(y).tolist()


def test_a_truncated_image_names_its_file_when_it_is_decoded(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (6, 16, 16), dtype=np.uint8), np.arange(6) % 2
    root = write_folder(tmp_path / "f", x, y)
    bad = root / "1" / "0003.png"
    bad.write_bytes(bad.read_bytes()[:-40])  # the header is intact: the listing accepts it, decoding fails
    data = open_images(root)
    with pytest.raises(ValueError, match=r"0003\.png cannot be decoded"):
        data.tensors()
