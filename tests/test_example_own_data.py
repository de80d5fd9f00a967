"""The own-data tutorial's example scripts (docs/own-data.md): the data writer and the user's classifier,
on small inputs."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "own_data"))

import make_data  # noqa: E402
import my_classifier  # noqa: E402

from xcf.datasets.files import open_images  # noqa: E402
from xcf.models.loading import load_model, probe_classifier  # noqa: E402


def test_colour_digits_keep_the_shape_and_take_one_colour():
    grey = np.zeros((3, 28, 28), np.uint8)
    grey[:, 10:18, 12:16] = 200
    out = make_data.colour(grey, seed=0)
    assert out.shape == (3, 3, 32, 32) and out.dtype == np.uint8
    assert not out[:, :, :2].any() and not out[:, :, 30:].any()          # padded by 2 pixels
    lit = out.max(1) > 0
    np.testing.assert_array_equal(lit[:, 2:30, 2:30], grey > 0)          # the digit's pixels, nothing else
    for img in out:                                                       # one colour per digit, bright
        colours = {tuple(img[:, i, j]) for i, j in zip(*np.nonzero(img.max(0)))}
        assert len(colours) == 1 and max(next(iter(colours))) == 200


def test_the_users_classifier_as_torchscript_and_as_a_factory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    make_data.write_folder(tmp_path / "train", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10)
    (tmp_path / "own-data").mkdir()
    out = tmp_path / "own-data" / "user_cnn.ts"
    my_classifier.main(str(tmp_path / "train"), str(out), epochs=1)
    x = open_images(tmp_path / "train").first(4)
    monkeypatch.chdir(tmp_path)  # the factory's default weights path is relative, as in the tutorial
    ts = load_model(out, "classifier")
    factory = load_model(f"{my_classifier.__file__}:load", "classifier")
    assert ts.source == "TorchScript" and factory.source == "factory"
    with torch.no_grad():
        torch.testing.assert_close(ts.module(x), factory.module(x))
    assert probe_classifier(ts.module, x) == 10
