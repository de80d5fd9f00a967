"""A new user's files, as they come (issue 28): each case is written by the test into tmp_path and read the way
`xcf train` / `xcf audit` read it; a valid one must give the values the files mean, a wrong one one error that
says what is wrong."""

import contextlib
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_files import write_folder
from torch import nn

from xcf.apps.cli import main
from xcf.datasets.files import DataNote, open_images

RNG = np.random.default_rng(28)


def _u8(n, h=8, w=8, c=None):
    return RNG.integers(0, 256, (n, h, w) + ((c,) if c else ()), dtype=np.uint8)


def _symlinks_work(tmp_path):
    try:
        os.symlink(tmp_path, tmp_path / "probe")
    except (OSError, NotImplementedError):
        return False
    os.unlink(tmp_path / "probe")
    return True


# ---------------------------------------------------------------------------------- data: the files
def sixteen_bit_png(tmp):
    """16-bit greyscale PNGs (PIL mode I;16) holding mean 0.30 of full scale: read as value / 65535."""
    v = (RNG.random((6, 8, 8)) * 0.6 * 65535).astype(np.uint16)
    for i, a in enumerate(v):
        (tmp / "d" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp / "d" / str(i % 2) / f"{i}.png")
    order = [0, 2, 4, 1, 3, 5]  # class 0's files, then class 1's
    return tmp / "d", {}, torch.from_numpy(v[order].astype(np.float32) / 65535).unsqueeze(1)


def palette_png_grey(tmp):
    """A palette image whose palette is grey: one channel, the palette's values."""
    index = RNG.integers(0, 4, (2, 8, 8), dtype=np.uint8)
    grey = np.array([0, 90, 180, 255], np.uint8)
    for i, a in enumerate(index):
        img = Image.fromarray(a, "P")
        img.putpalette(np.repeat(grey, 3).tolist())
        (tmp / "d" / "a").mkdir(parents=True, exist_ok=True)
        img.save(tmp / "d" / "a" / f"{i}.png")
    return tmp / "d", {}, torch.from_numpy(grey[index].astype(np.float32) / 255).unsqueeze(1)


def palette_png_colour(tmp):
    """A palette image of colours: RGB through the palette."""
    index = RNG.integers(0, 3, (2, 8, 8), dtype=np.uint8)
    colours = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 250]], np.uint8)
    for i, a in enumerate(index):
        img = Image.fromarray(a, "P")
        img.putpalette(colours.flatten().tolist())
        (tmp / "d" / "a").mkdir(parents=True, exist_ok=True)
        img.save(tmp / "d" / "a" / f"{i}.png")
    return tmp / "d", {}, torch.from_numpy(colours[index].astype(np.float32) / 255).permute(0, 3, 1, 2)


def rgba_png(tmp):
    """RGBA PNGs with transparent pixels: the alpha is dropped with a note, the colour read as stored."""
    a = _u8(2, c=4)
    write_folder(tmp / "d", a, [0, 0], mode="RGBA")
    return tmp / "d", {}, torch.from_numpy(a[..., :3].astype(np.float32) / 255).permute(0, 3, 1, 2)


def exif_rotated_jpeg(tmp):
    """A JPEG stored 12 wide and 8 high whose EXIF orientation 6 says: turn it clockwise to view."""
    (tmp / "d" / "a").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_u8(1, 8, 12)[0], "L").save(tmp / "d" / "a" / "photo.jpg", exif=exif.tobytes())
    stored = np.asarray(Image.open(tmp / "d" / "a" / "photo.jpg").convert("L")).astype(np.float32) / 255
    return tmp / "d", {}, torch.from_numpy(np.rot90(stored, -1).copy())[None, None]  # 8 wide, 12 high


def hidden_files(tmp):
    """Copies in .ipynb_checkpoints inside a class folder, a .DS_Store, a hidden top-level folder: skipped."""
    x = _u8(4)
    write_folder(tmp / "d", x, [0, 0, 1, 1])
    (tmp / "d" / "0" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(x[0], "L").save(tmp / "d" / "0" / ".ipynb_checkpoints" / "0000-checkpoint.png")
    (tmp / "d" / "1" / ".DS_Store").write_bytes(b"\0\0")
    Image.fromarray(x[1], "L").save(tmp / "d" / "1" / ".hidden.png")
    (tmp / "d" / ".trash" / "0").mkdir(parents=True)
    return tmp / "d", {}, torch.from_numpy(x.astype(np.float32) / 255).unsqueeze(1)


def symlink_loop(tmp):
    """A class folder holding a link to itself and one to its parent: every folder is read once."""
    if not _symlinks_work(tmp):
        pytest.skip("no symlinks on this platform")
    x = _u8(4)
    write_folder(tmp / "d", x, [0, 0, 1, 1])
    os.symlink(tmp / "d" / "0", tmp / "d" / "0" / "again", target_is_directory=True)
    os.symlink(tmp / "d", tmp / "d" / "1" / "up", target_is_directory=True)
    return tmp / "d", {}, torch.from_numpy(x.astype(np.float32) / 255).unsqueeze(1)


def one_level_too_high(tmp):
    """DIR/{train,test}/<class>/img.png given as DIR."""
    for split in ("train", "test"):
        write_folder(tmp / "d" / split, _u8(4), [0, 1, 0, 1])
    return tmp / "d", {}, None


def empty_class_folder(tmp):
    write_folder(tmp / "d", _u8(2), [0, 0], names=["cat"])
    (tmp / "d" / "dog").mkdir()
    (tmp / "d" / "dog" / "notes.txt").write_text("to do")
    return tmp / "d", {}, None


def npz_nhwc(tmp):
    x = _u8(3, 8, 6, c=3)
    np.savez(tmp / "x.npz", x=x)
    return tmp / "x.npz", {}, torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2)


def npz_nchw(tmp):
    x = _u8(3, 3, 8, 6)
    np.savez(tmp / "x.npz", x=x)
    return tmp / "x.npz", {}, torch.from_numpy(x.astype(np.float32) / 255)


def npz_ambiguous(tmp):
    np.savez(tmp / "x.npz", x=_u8(3, 3, 8, 3))  # RGB 8x3 or RGB 3x8?
    return tmp / "x.npz", {}, None


def npz_ambiguous_named(tmp):
    x = _u8(3, 3, 8, 3)
    np.savez(tmp / "x.npz", x=x)
    return tmp / "x.npz", {"layout": "nhwc"}, torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2)


def npz_rgba(tmp):
    x = _u8(3, 8, 8, c=4)
    x[..., 3] = 255
    np.savez(tmp / "x.npz", x=x)
    return tmp / "x.npz", {}, torch.from_numpy(x[..., :3].astype(np.float32) / 255).permute(0, 3, 1, 2)


def npz_no_channel_axis(tmp):
    np.savez(tmp / "x.npz", x=_u8(3, 2, 8, 8))  # two channels: neither axis holds 1, 3 or 4
    return tmp / "x.npz", {}, None


# outcome: "values" (decoded as expected) or "error"; keyword: in the note (valid cases) or in the error
DATA = [
    ("16-bit PNG", sixteen_bit_png, "values", ""),
    ("palette PNG, grey", palette_png_grey, "values", ""),
    ("palette PNG, colour", palette_png_colour, "values", ""),
    ("RGBA PNG", rgba_png, "values", "alpha channel"),
    ("EXIF-rotated JPEG", exif_rotated_jpeg, "values", ""),
    ("hidden files, .ipynb_checkpoints", hidden_files, "values", "skipped 4 hidden files and folders"),
    ("symlink loop", symlink_loop, "values", "reached again through links were read once"),
    ("one level too high", one_level_too_high, "error", "did you mean"),
    ("empty class folder", empty_class_folder, "error", "dog holds no images"),
    ("npz (N, H, W, C)", npz_nhwc, "values", ""),
    ("npz (N, C, H, W)", npz_nchw, "values", ""),
    ("npz ambiguous", npz_ambiguous, "error", "--layout nchw or --layout nhwc"),
    ("npz ambiguous, layout named", npz_ambiguous_named, "values", ""),
    ("npz RGBA", npz_rgba, "values", "alpha channel is dropped (opaque everywhere"),
    ("npz two channels", npz_no_channel_axis, "error", "neither axis 1 nor the last axis"),
]


@pytest.mark.parametrize("make, outcome, keyword", [row[1:] for row in DATA], ids=[row[0] for row in DATA])
def test_data_case(make, outcome, keyword, tmp_path):
    spec, kwargs, expected = make(tmp_path)
    if outcome == "error":
        with pytest.raises(ValueError, match=keyword.replace("(", r"\(")) as info:
            open_images(spec, **kwargs)
        assert "\n" not in str(info.value)
        if "did you mean" in keyword:
            assert str(spec / "train") in str(info.value)
        return
    with pytest.warns(DataNote) if keyword else _no_note():
        data = open_images(spec, **kwargs)
    x, _ = data.tensors()
    assert data.shape == tuple(expected.shape[1:])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-7)
    assert (keyword in " ".join(data.notes)) if keyword else not data.notes
    if make is sixteen_bit_png:  # the symptom: the pixel mean the files hold, not a clipped one
        assert data.levels == 65536 and abs(float(x.mean()) - float(expected.mean())) < 1e-6


@contextlib.contextmanager
def _no_note():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataNote)
        yield


# ----------------------------------------------------------------------------------- the command line
def _probabilities_classifier(tmp, out="out"):
    """A TorchScript classifier ending in softmax, steep enough for 20 pixel steps to reach 0.99."""
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = 2.0
        lin.bias[1] = -64.0
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), lin, nn.Softmax(1)).eval()), tmp / "probs.ts")
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 8), dtype=np.uint8)  # fixed: the success is checked
    np.savez(tmp / "d.npz", x=x, y=np.arange(8) % 2)
    return ["audit", "--data", str(tmp / "d.npz"), "--classifier", str(tmp / "probs.ts"), "--methods", "adversarial",
            "--steps", "20", "--out", str(tmp / out), "--no-progress", "--threads", "1"]


def cli_probabilities_as_logits(tmp):
    return _probabilities_classifier(tmp)


def cli_probabilities_declared(tmp):
    return _probabilities_classifier(tmp) + ["--output", "probs"]


def cli_probabilities_as_log_probs(tmp):
    return _probabilities_classifier(tmp) + ["--output", "log-probs"]


def _forty_of_ten(tmp):
    write_folder(tmp / "d", _u8(40), np.arange(40) % 10)
    return ["train", "classifier", "--data", str(tmp / "d"), "--epochs", "1", "--no-progress", "--threads", "1"]


def cli_forty_images_ten_classes(tmp):
    return _forty_of_ten(tmp) + ["--out", str(tmp / "m.pt")]


def cli_train_out_under_a_file(tmp):
    (tmp / "file").write_text("x")
    return _forty_of_ten(tmp) + ["--out", str(tmp / "file" / "models" / "m.pt")]


def cli_audit_out_under_a_file(tmp):
    (tmp / "file").write_text("x")
    return _probabilities_classifier(tmp, out="file/audit") + ["--output", "probs"]


def cli_train_out_unwritable(tmp):
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        pytest.skip("permissions do not bind root, and Windows has none of this kind")
    (tmp / "locked").mkdir(mode=0o500)
    return _forty_of_ten(tmp) + ["--out", str(tmp / "locked" / "m.pt")]


def cli_nan_target_file(tmp):
    (tmp / "targets.txt").write_text("1\n0\nnan\n1\n0\n1\n0\n1\n")
    return _probabilities_classifier(tmp) + ["--output", "probs", "--target", str(tmp / "targets.txt")]


def _digits_probabilities(tmp):
    """A TorchScript digits classifier (1x8x8 -> 10) ending in softmax."""
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(1)).eval()),
                   tmp / "digits-probs.ts")
    return ["demo", "--classifier", str(tmp / "digits-probs.ts"), "--out", str(tmp / "out"), "--no-progress"]


def cli_demo_probabilities_as_logits(tmp):
    return _digits_probabilities(tmp)


def cli_demo_output_without_classifier(tmp):
    return ["demo", "--output", "probs", "--out", str(tmp / "out")]


# rc: the exit status; keyword: in stderr for an error (one line), in stdout for a run
CLI = [
    ("demo: probabilities model, logits declared", cli_demo_probabilities_as_logits, 2, "pass --output probs"),
    ("demo: --output without --classifier", cli_demo_output_without_classifier, 2, "describes --classifier"),
    ("probabilities model, logits declared", cli_probabilities_as_logits, 2, "pass --output probs"),
    ("probabilities model, --output probs", cli_probabilities_declared, 0, "wrote"),
    ("probabilities model, --output log-probs", cli_probabilities_as_log_probs, 2, "pass --output probs"),
    ("40 images of 10 classes, no --test-data", cli_forty_images_ten_classes, 0, "(10 held out)"),
    ("train --out under a file", cli_train_out_under_a_file, 2, "is a file, not a folder"),
    ("audit --out under a file", cli_audit_out_under_a_file, 2, "is a file, not a folder"),
    ("train --out in a folder without write permission", cli_train_out_unwritable, 2, "cannot write into"),
    ("target file holding NaN", cli_nan_target_file, 2, "holds NaN (at position 2)"),
]


@pytest.mark.parametrize("make, rc, keyword", [row[1:] for row in CLI], ids=[row[0] for row in CLI])
def test_cli_case(make, rc, keyword, tmp_path, capsys, monkeypatch):
    argv = make(tmp_path)
    if rc != 0:  # refused before any training or writing
        import xcf.apps.train

        def no_training(*args, **kwargs):
            raise AssertionError("trained before refusing")

        monkeypatch.setattr(xcf.apps.train, "fit_model", no_training)
    assert main(argv) == rc
    out, err = capsys.readouterr()
    if rc:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and keyword in lines[0] and "Errno" not in lines[0], lines
        assert not (tmp_path / "out").exists() and not (tmp_path / "m.pt").exists()
        return
    assert keyword in out, out
    if make is cli_probabilities_declared:  # the wrapped probabilities reach the target
        s = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert s["config"]["classifier_output"] == "probs" and s["metrics"]["adversarial"]["success"] > 0


def test_layout_option_on_the_command_line(tmp_path, capsys):
    """An ambiguous (N, 3, 8, 3) array: refused naming --layout, audited once it is named."""
    np.savez(tmp_path / "x.npz", x=_u8(4, 3, 8, 3), y=np.arange(4) % 2)
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(72, 2)).eval()), tmp_path / "clf.ts")
    argv = ["audit", "--data", str(tmp_path / "x.npz"), "--classifier", str(tmp_path / "clf.ts"), "--methods",
            "adversarial", "--steps", "2", "--out", str(tmp_path / "out"), "--no-progress", "--threads", "1"]
    assert main(argv) == 2
    assert "--layout nchw or --layout nhwc" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(argv + ["--layout", "nhwc"]) == 0
    assert "| adversarial | 4 |" in capsys.readouterr().out
