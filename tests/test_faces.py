"""Tests for the procedural face domain (ganseg.faces) and `ganseg render` (ganseg.render).

Everything renders at 64 px unless a test is about resolution, so the file runs in well under
a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from ganseg import faces
from ganseg.faces import SPLITS, FaceRenderConfig, render_faces, split_seeds
from ganseg.labels import CLASS_NAMES, PALETTE, load_label_png, save_label_png, write_labels_json

RES = 64


@pytest.fixture(scope="module")
def batch64() -> tuple[np.ndarray, np.ndarray]:
    """64 train faces at 64 px, shared by the statistics tests."""
    return render_faces(split_seeds("train", 64), RES)


def test_class_names_and_palette() -> None:
    assert CLASS_NAMES == (
        "background", "skin", "hair", "eyebrow", "eye", "mouth", "nose", "ear", "neck", "cloth",
    )
    assert PALETTE.shape == (10, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE.tolist()}) == 10, "overlay colours must be distinct"


def test_shapes_dtypes_and_label_range(batch64) -> None:
    images, labels = batch64
    assert images.shape == (64, RES, RES, 3) and images.dtype == np.uint8
    assert labels.shape == (64, RES, RES) and labels.dtype == np.uint8
    assert labels.max() <= 9  # uint8, so every pixel holds exactly one class in 0..9
    assert set(np.unique(labels).tolist()) == set(range(10)), "every class appears in 64 faces"


def test_empty_seed_list() -> None:
    images, labels = render_faces([], RES)
    assert images.shape == (0, RES, RES, 3) and labels.shape == (0, RES, RES)


def test_deterministic_whatever_the_batch() -> None:
    seeds = [3, 17, 2_000_005, 42, 1_000_001, 8]
    ref_i, ref_l = render_faces(seeds, RES)
    # one at a time, reversed, and mixed into a bigger batch spanning several internal chunks
    for k, s in enumerate(seeds):
        im, lb = render_faces([s], RES)
        assert np.array_equal(im[0], ref_i[k]) and np.array_equal(lb[0], ref_l[k])
    rev_i, rev_l = render_faces(seeds[::-1], RES)
    assert np.array_equal(rev_i[::-1], ref_i) and np.array_equal(rev_l[::-1], ref_l)
    big = list(range(100, 160)) + seeds
    big_i, big_l = render_faces(big, RES)
    assert np.array_equal(big_i[60:], ref_i) and np.array_equal(big_l[60:], ref_l)


def test_deterministic_across_thread_counts(monkeypatch) -> None:
    seeds = list(range(50, 90))
    monkeypatch.setenv("GANSEG_RENDER_THREADS", "1")
    a = render_faces(seeds, RES)
    monkeypatch.setenv("GANSEG_RENDER_THREADS", "3")
    b = render_faces(seeds, RES)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_different_seeds_differ(batch64) -> None:
    images, labels = batch64
    flat_i = images.reshape(len(images), -1)
    flat_l = labels.reshape(len(labels), -1)
    assert len({row.tobytes() for row in flat_i}) == len(images)
    assert len({row.tobytes() for row in flat_l}) == len(labels)


def test_class_areas_plausible(batch64) -> None:
    _, labels = batch64
    share = np.bincount(labels.ravel(), minlength=10) / labels.size
    present = np.array([(labels == c).any(axis=(1, 2)).mean() for c in range(10)])
    names = dict(zip(CLASS_NAMES, range(10)))
    for big in ("background", "skin", "hair", "cloth"):
        assert share[names[big]] >= 0.06, f"{big} covers only {share[names[big]]:.3f} of pixels"
    for small in ("eyebrow", "eye", "mouth", "nose"):
        c = names[small]
        assert 0.0005 <= share[c] <= 0.03, f"{small} share {share[c]:.4f}"
        assert present[c] >= 0.8, f"{small} visible in only {present[c]:.2f} of images"
    assert 0.4 <= present[names["ear"]] < 1.0, "ears: usually visible, sometimes under hair"
    assert present[names["neck"]] >= 0.8
    assert share[names["background"]] <= 0.6


@pytest.mark.parametrize("res", [64, 128, 256])
def test_resolutions(res: int) -> None:
    images, labels = render_faces([7, 8], res)
    assert images.shape == (2, res, res, 3) and labels.shape == (2, res, res)
    assert labels.max() <= 9


def test_layout_does_not_depend_on_resolution() -> None:
    """The same seed draws the same face at any size (parameters live in normalised units)."""
    _, small = render_faces([11, 12, 13], 64)
    _, large = render_faces([11, 12, 13], 256)
    agree = (large[:, 1::4, 1::4] == small).mean()
    assert agree > 0.9, agree


def test_bad_resolution_and_conflicting_config() -> None:
    with pytest.raises(ValueError, match="resolution"):
        render_faces([0], 32)
    with pytest.raises(ValueError, match="resolution"):
        FaceRenderConfig(resolution=1024)
    with pytest.raises(ValueError, match="resolution"):
        render_faces([0], 128, FaceRenderConfig(resolution=64))
    with pytest.raises(ValueError, match="seeds"):
        render_faces([-1], 64)


def test_config_knobs_change_only_the_image() -> None:
    """Blur and noise are applied to the image only: the label map is unchanged."""
    clean = FaceRenderConfig(resolution=RES, blur_max=0.0, noise_max=0.0)
    im_a, lb_a = render_faces([5, 6], RES, clean)
    im_b, lb_b = render_faces([5, 6], RES)
    assert np.array_equal(lb_a, lb_b)
    assert not np.array_equal(im_a, im_b)


def test_splits_disjoint_and_split_seeds() -> None:
    ranges = sorted(SPLITS.values())
    for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
        assert a0 < a1 <= b0 < b1
    assert set(SPLITS) == {"train", "val", "test"}
    assert split_seeds("test", 3) == [SPLITS["test"][0] + i for i in range(3)]
    assert split_seeds("val", 0) == []
    with pytest.raises(ValueError, match="bogus"):
        split_seeds("bogus", 1)
    with pytest.raises(ValueError, match="'val'"):
        split_seeds("val", SPLITS["val"][1] - SPLITS["val"][0] + 1)


def test_label_png_round_trip(tmp_path, batch64) -> None:
    _, labels = batch64
    path = tmp_path / "m.png"
    save_label_png(path, labels[0])
    with Image.open(path) as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im.getpalette()[:30], dtype=np.uint8).reshape(10, 3), PALETTE)
    back = load_label_png(path)
    assert back.dtype == np.uint8 and np.array_equal(back, labels[0])
    with pytest.raises(ValueError):
        save_label_png(tmp_path / "bad.png", np.full((4, 4), 10, dtype=np.uint8))


def test_labels_json(tmp_path) -> None:
    write_labels_json(tmp_path / "labels.json")
    data = json.loads((tmp_path / "labels.json").read_text())
    assert data["classes"] == list(CLASS_NAMES)
    assert data["palette"] == PALETTE.tolist()


def _colour_bins(images: np.ndarray) -> np.ndarray:
    q = (images >> 3).astype(np.int64)  # 32 levels per channel
    return (q[..., 0] * 32 + q[..., 1]) * 32 + q[..., 2]


def test_colour_alone_does_not_segment() -> None:
    """Guard against a too-easy domain: the best per-pixel RGB-only classifier stays <= 35% mIoU.

    Classifier: 32^3 RGB bins, majority training label per bin (unseen bins -> background),
    fitted on 1000 train images and scored on 300 test images, both at 64 px (to keep the test
    fast). mIoU = mean over the 10 classes of IoU over all test pixels pooled.
    """
    tr_i, tr_l = render_faces(split_seeds("train", 1000), RES)
    te_i, te_l = render_faces(split_seeds("test", 300), RES)
    counts = np.bincount(
        _colour_bins(tr_i).ravel() * 10 + tr_l.ravel(), minlength=32**3 * 10
    ).reshape(32**3, 10)
    lut = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), 0)
    pred = lut[_colour_bins(te_i)]
    conf = np.bincount(te_l.ravel().astype(np.int64) * 10 + pred.ravel(), minlength=100).reshape(10, 10)
    inter = np.diag(conf)
    iou = inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)
    assert iou.mean() <= 0.35, f"colour-only mIoU {iou.mean():.3f}; per class {np.round(iou, 3)}"


def _render_args(tmp_path, *extra: str) -> argparse.Namespace:
    from ganseg import render

    parser = argparse.ArgumentParser()
    render.add_arguments(parser)
    argv = ["--split", "val", "--n", "5", "--res", "64", "--out", str(tmp_path), *extra]
    return parser.parse_args(argv)


def test_cli_writes_files(tmp_path) -> None:
    from ganseg import render

    out = tmp_path / "ds"
    assert render.run(_render_args(out, "--batch", "2")) == 0
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"{i:04d}.png" for i in range(5)] + [f"{i:04d}_mask.png" for i in range(5)])
    assert names == sorted(expected + ["labels.json"]), "no temporary files may remain"
    ref_i, ref_l = render_faces(split_seeds("val", 5), 64)
    for i in range(5):
        with Image.open(out / f"{i:04d}.png") as im:
            assert im.mode == "RGB"
            assert np.array_equal(np.array(im), ref_i[i])
        with Image.open(out / f"{i:04d}_mask.png") as im:
            assert im.mode == "P"
        assert np.array_equal(load_label_png(out / f"{i:04d}_mask.png"), ref_l[i])
    assert json.loads((out / "labels.json").read_text())["classes"] == list(CLASS_NAMES)


def test_cli_rejects_bad_arguments(tmp_path) -> None:
    from ganseg import render

    with pytest.raises(ValueError, match="'val'"):
        render.run(_render_args(tmp_path, "--n", str(SPLITS["val"][1] - SPLITS["val"][0] + 1)))
    with pytest.raises(ValueError, match="--res"):
        render.run(_render_args(tmp_path, "--res", "16"))


def test_module_docstring_documents_splits() -> None:
    doc = faces.__doc__ or ""
    for name, (start, stop) in SPLITS.items():
        assert name in doc and f"{start:_}" in doc and f"{stop:_}" in doc
