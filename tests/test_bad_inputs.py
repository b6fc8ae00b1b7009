"""Every bad input of issue 9 gets a clear `UserError` (one line, naming the file and the fix) or a
correct result, checked before work starts. Tiny models and images only: the file runs in seconds."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganseg.errors import UserError
from ganseg.images import ALPHA_BACKGROUND, MAX_PIXELS, decode_rgb, load_rgb

REPO = Path(__file__).resolve().parents[1]


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def ramp(h: int = 6, w: int = 8) -> np.ndarray:
    return np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w - 1)


# --------------------------------------------------------------------------------------------
# decode_rgb / load_rgb: every Pillow mode

@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_grey_is_scaled_not_white(mode):
    v = np.round(ramp() * 65535).astype(np.uint16)
    im = Image.fromarray(v.astype(">u2" if mode == "I;16B" else "<u2"))
    assert im.mode == mode
    data = encode(im, "TIFF") if mode == "I;16B" else encode(im, "PNG")
    rgb = decode_rgb(data, "grey16")
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 8, 3)
    expect = np.round(v / 65535 * 255).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expect).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155  # a ramp, not all white


def test_16bit_png_file_through_load_rgb(tmp_path):
    v = np.full((4, 4), 20000, np.uint16)  # ~ 78/255: the old reader clipped this to white
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert (load_rgb(tmp_path / "g16.png") == round(20000 / 65535 * 255)).all()


def test_int32_and_float_modes():
    v = np.round(ramp() * 65535).astype(np.int32)
    rgb = decode_rgb(encode(Image.fromarray(v), "TIFF"))
    assert np.abs(rgb[..., 0].astype(int) - np.round(v / 65535 * 255)).max() <= 1
    f = ramp().astype(np.float32)  # [0, 1] floats -> 0..255
    rgb = decode_rgb(encode(Image.fromarray(f), "TIFF"))
    assert np.abs(rgb[..., 1].astype(int) - np.round(f * 255)).max() <= 1 and rgb.max() == 255
    f2 = (ramp() * 1000).astype(np.float32)  # above 255: scaled by 0..65535, not clipped to white
    rgb = decode_rgb(encode(Image.fromarray(f2), "TIFF"))
    assert rgb.max() == round(1000 / 65535 * 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_white(mode):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[0, :, 3] = 255   # opaque row keeps its colour
    rgba[1, 0, 3] = 0     # fully transparent -> background
    rgba[1, 1, 3] = 128
    im = Image.fromarray(rgba).convert(mode)
    rgb = decode_rgb(encode(im), "alpha")
    assert (rgb[0] == 40).all()
    assert tuple(rgb[1, 0]) == ALPHA_BACKGROUND
    assert abs(int(rgb[1, 1, 0]) - round(40 * 128 / 255 + 255 * 127 / 255)) <= 1


def test_palette_with_transparency():
    p = Image.new("P", (4, 2))
    p.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    p.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    p.info["transparency"] = 1  # palette index 1 is transparent
    rgb = decode_rgb(encode(p, transparency=1), "pal")
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(rgb[0, 1]) == ALPHA_BACKGROUND
    plain = Image.new("P", (2, 2))
    plain.putpalette([10, 20, 30] * 256)
    assert (decode_rgb(encode(plain)) == (10, 20, 30)).all()


def test_cmyk_bilevel_and_grey():
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red
    for fmt in ("JPEG", "TIFF"):
        rgb = decode_rgb(encode(cmyk, fmt), fmt)
        assert rgb[..., 0].min() > 230 and rgb[..., 1:].max() < 25, fmt
    bw = Image.new("1", (4, 4), 0)
    bw.putpixel((1, 1), 1)
    rgb = decode_rgb(encode(bw))
    assert tuple(rgb[1, 1]) == (255, 255, 255) and tuple(rgb[0, 0]) == (0, 0, 0)
    grey = Image.fromarray(np.full((3, 5), 77, np.uint8))
    assert (decode_rgb(encode(grey)) == 77).all() and decode_rgb(encode(grey)).shape == (3, 5, 3)


def test_exif_rotated_jpeg_reads_upright():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue: stored 40 wide, 20 high
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    rgb = decode_rgb(encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95), "phone.jpg")
    assert rgb.shape == (40, 20, 3)  # viewed upright: 20 wide, 40 high
    assert rgb[5, 10, 0] > 200 and rgb[5, 10, 2] < 60  # top is the (former left) red half
    assert rgb[35, 10, 2] > 200 and rgb[35, 10, 0] < 60


# --------------------------------------------------------------------------------------------
# decode_rgb / load_rgb: bad data is a UserError naming the input and the fix

def assert_user_error(exc_info, *words):
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, UserError)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_image_bytes():
    good = encode(Image.new("RGB", (32, 32), (1, 2, 3)))
    for data, words in [(b"", ["req.png", "empty"]), (b"hello, not an image" * 10, ["req.png", "not a readable image"]),
                        (good[: len(good) // 2], ["req.png"]), (good[:40], ["req.png"]),
                        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", ["req.png", "pass a PNG"])]:
        with pytest.raises(UserError) as e:
            decode_rgb(data, "req.png")
        assert_user_error(e, *words)


def test_truncated_jpeg_and_png_say_so():
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = encode(noisy, fmt)
        with pytest.raises(UserError) as e:
            decode_rgb(data[: int(len(data) * 0.7)], f"cut.{fmt.lower()}")
        assert_user_error(e, f"cut.{fmt.lower()}", "truncated")


def test_too_many_pixels_is_refused_before_decoding():
    im = Image.new("L", (300, 200))
    with pytest.raises(UserError) as e:
        decode_rgb(encode(im), "big.png", max_pixels=50_000)
    assert_user_error(e, "big.png", "300x200", "downscale")
    assert decode_rgb(encode(im), max_pixels=60_000).shape == (200, 300, 3)


def test_a_photo_just_above_the_size_limit_says_by_how_much():
    """Was "8001x8000 (64.0 MP), above the limit of 64.0 MP": two equal numbers. Now exact pixels."""
    import re

    from ganseg.images import check_pixel_count

    sys.path.insert(0, str(Path(__file__).parent))
    from pngs import header_only_png

    cases = [(lambda: decode_rgb(header_only_png(8001, 8000), "big.png"), 8001 * 8000),
             (lambda: check_pixel_count(MAX_PIXELS + 1, 1, "row.png"), MAX_PIXELS + 1)]
    for call, pixels in cases:
        with pytest.raises(UserError) as e:
            call()
        got = re.search(r"= ([\d,]+) pixels, above the limit of ([\d,]+) pixels \(64 MP\); downscale", str(e.value))
        assert got, str(e.value)
        assert [int(g.replace(",", "")) for g in got.groups()] == [pixels, MAX_PIXELS]
        assert got.group(1) != got.group(2) and "\n" not in str(e.value)


def test_decompression_bomb_png_is_refused_fast():
    import time
    import zlib

    # a valid 30000 x 30000 1-bit PNG header over a few KB of zlib data: 900 MP if decoded
    def chunk(t, d):
        return len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big")
    w = h = 30000
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    raw = zlib.compress(b"\0" * (1 + w // 8) * 64)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        decode_rgb(bomb, "bomb.png")
    assert time.perf_counter() - t0 < 2
    assert_user_error(e, "bomb.png", "downscale")
    assert MAX_PIXELS < w * h


def test_load_rgb_bad_paths(tmp_path):
    with pytest.raises(UserError) as e:
        load_rgb(tmp_path / "nope.png")
    assert_user_error(e, "nope.png", "not found")
    assert isinstance(e.value, FileNotFoundError)  # old callers catch this
    with pytest.raises(UserError) as e:
        load_rgb(tmp_path)
    assert_user_error(e, "is a folder")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_rgb(tmp_path / "zero.png")
    assert_user_error(e, "zero.png", "empty")
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(ValueError) as e:  # still a ValueError for old callers
        load_rgb(tmp_path / "text.png")
    assert_user_error(e, "text.png", "not a readable image")


# --------------------------------------------------------------------------------------------
# Tiny models on disk, shared by the CLI tests below

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16 px generator, a head for it, a head for another generator, and a small UNet, as files."""
    from ganseg import Generator, GeneratorConfig, save_generator
    from ganseg.heads import head_for, save_head
    from ganseg.unet import UNet, UNetConfig, save_unet

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channels=[8, 8, 8]))
    save_generator(G, d / "g.safetensors")
    save_head(head_for(G, "linear", 2), d / "head.safetensors", extra={"class_names": ["background", "part"]})
    other = Generator(GeneratorConfig(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channels=[8, 4, 4]))
    save_head(head_for(other, "linear", 2), d / "other_head.safetensors")
    unet = UNet(UNetConfig(num_classes=10, width=4, depth=2))
    save_unet(unet, d / "unet.safetensors", [f"c{i}" for i in range(10)], extra={"resolution": 16})
    return {"dir": d, "g": d / "g.safetensors", "head": d / "head.safetensors",
            "other_head": d / "other_head.safetensors", "unet": d / "unet.safetensors", "G": G}


def cli(*argv) -> int:
    from ganseg.cli import main

    return main([str(a) for a in argv])


def one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Output targets: checked before any work, in every command that writes

def test_out_checks_unit(tmp_path):
    from ganseg.paths import check_out_dir, check_out_file

    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="existing file, but a folder is expected"):
        check_out_dir(f)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_out_dir(f / "sub")
    with pytest.raises(UserError, match="existing folder, but a file is expected"):
        check_out_file(tmp_path)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_out_file(f / "head.safetensors")
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created, no probe left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    # unwritable: /proc refuses files even to root; a read-only folder refuses other users
    with pytest.raises(UserError, match="cannot write in"):
        check_out_dir("/proc/ganseg-out")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UserError, match="cannot write in"):
            check_out_file(ro / "x.safetensors")


def test_every_writer_checks_out_first(tiny, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("keep me")
    g, head = tiny["g"], tiny["head"]
    shots = tmp_path / "shots"
    assert cli("sample", "--ckpt", g, "--seeds", "0-1", "--out", shots) == 0
    capsys.readouterr()
    runs = {
        "sample": ["sample", "--ckpt", g, "--seeds", "0-1", "--out", f],
        "render": ["render", "--split", "train", "--n", "2", "--res", "64", "--out", f],
        "synthesize": ["synthesize", "--ckpt", g, "--head", head, "--n", "4", "--out", f],
        "train-unet": ["train-unet", "--real", tmp_path, "--steps", "1", "--out", f],
        "segment": ["segment", "--unet", tiny["unet"], photo(tmp_path / "p.png", 20, 20), "--out", f],
        "train-head": ["train-head", "--ckpt", g, "--shots", shots, "--steps", "1", "--out", tmp_path],
        "invert": ["invert", "--ckpt", g, tmp_path / "p.png", "--steps", "1", "--out", f],
        "eval": ["eval", "--ckpt", g, "--n-test", "1", "--shots", "1", "--out", f],
    }
    for name, argv in runs.items():
        assert cli(*argv) == 2, name
        one_line_error(capsys, f"ganseg {name}: error:", "--out")
    assert f.read_text() == "keep me"
    assert cli("train-head", "--ckpt", g, "--shots", shots, "--steps", "1", "--out", "/proc/h.safetensors") == 2
    one_line_error(capsys, "cannot write in /proc")


# --------------------------------------------------------------------------------------------
# segment

def test_folder_inputs_name_the_files_they_skip_in_one_note(tiny, tmp_path, capsys):
    """`.heic`, `.avif`, `.txt` files of an input folder used to vanish from a run without a word.
    One note (segment and client alike: `list_images(note=...)`), the first five named, hidden
    files and ganseg's own outputs not counted; none at all when nothing is skipped."""
    from ganseg.paths import list_images

    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "a.png", 16, 16, 1)
    photo(folder / "old_mask.png", 16, 16, 2)  # an earlier output: skipped on purpose, not noted
    for name in ("b.heic", "c.avif", "d.txt", "e.raw", "f.cr2", "g.psd", "h.xcf"):
        (folder / name).write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"x")
    notes = []
    assert list_images([folder], note=notes.append) == [folder / "a.png"]
    assert len(notes) == 1, notes
    assert notes[0].startswith("note: skipped 7 file(s) that are not images ganseg reads (by suffix: .png .jpg")
    assert notes[0].endswith(f"{folder / 'b.heic'}, {folder / 'c.avif'}, {folder / 'd.txt'}, {folder / 'e.raw'}, "
                             f"{folder / 'f.cr2'} and 2 more"), notes[0]
    assert ".DS_Store" not in notes[0] and "old_mask" not in notes[0]
    assert list_images([folder / "a.png"], note=notes.append) == [folder / "a.png"] and len(notes) == 1
    assert cli("segment", "--unet", tiny["unet"], folder, "--out", tmp_path / "seg") == 0
    out = capsys.readouterr().out
    assert sum(ln.startswith("note: skipped 7 file(s)") for ln in out.splitlines()) == 1, out


def test_segment_notes_animated_files_once(tiny, tmp_path, capsys):
    """`ganseg segment` read an animated GIF/APNG's first frame without a word (`ganseg client` said so)."""
    folder = tmp_path / "anim"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, fmt in (("a.gif", "GIF"), ("b.png", "PNG")):
        frames = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]
        buf = io.BytesIO()
        frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
        (folder / name).write_bytes(buf.getvalue())
    photo(folder / "still.png", 24, 20, 3)
    assert cli("segment", "--unet", tiny["unet"], folder, "--out", tmp_path / "seg") == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "first frame" in ln]
    assert len(notes) == 1 and "2 image(s)" in notes[0], notes
    assert "a.gif" in notes[0] and "b.png" in notes[0] and "still.png" not in notes[0]
    assert (tmp_path / "seg" / "a_mask.png").is_file()


def test_segment_same_names_never_overwrite(tiny, tmp_path, capsys):
    from ganseg.labels import load_label_png
    from ganseg.paths import output_names

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    pa, pb = photo(tmp_path / "a" / "0000.png", 30, 20, 1), photo(tmp_path / "b" / "0000.png", 24, 24, 2)
    out = tmp_path / "seg"
    assert cli("segment", "--unet", tiny["unet"], pa, pb, "--out", out) == 0
    assert "a/0000.png -> a__0000_mask.png" in capsys.readouterr().out
    assert load_label_png(out / "a__0000_mask.png").shape == (20, 30)
    assert load_label_png(out / "b__0000_mask.png").shape == (24, 24)
    assert not (out / "0000_mask.png").exists()
    assert output_names(["x/0000.png", "x/0000.jpg", "y.png"]) == ["0000_png", "0000_jpg", "y"]
    assert cli("segment", "--unet", tiny["unet"], pa, str(tmp_path / "a" / ".." / "a" / "0000.png"),
               "--out", tmp_path / "seg2") == 2
    one_line_error(capsys, "given twice")
    assert not (tmp_path / "seg2").exists()


def test_segment_invert_refuses_a_head_of_another_generator(tiny, tmp_path, capsys):
    p = photo(tmp_path / "p.png", 16, 16)
    assert cli("segment", "--method", "invert", "--ckpt", tiny["g"], "--head", tiny["other_head"], p,
               "--invert-steps", "1", "--out", tmp_path / "o") == 2
    one_line_error(capsys, "--head", "trained on another generator", "--ckpt")
    assert not (tmp_path / "o").exists()


def test_segment_invert_masks_at_each_photos_size(tiny, tmp_path):
    from ganseg.labels import load_label_png

    wide, square = photo(tmp_path / "wide.png", 40, 20, 3), photo(tmp_path / "sq.png", 32, 32, 4)
    out = tmp_path / "o"
    assert cli("segment", "--method", "invert", "--ckpt", tiny["g"], "--head", tiny["head"], wide, square,
               "--invert-steps", "1", "--out", out) == 0
    assert load_label_png(out / "wide_mask.png").shape == (20, 40)  # not the generator's 16 x 16
    assert load_label_png(out / "sq_mask.png").shape == (32, 32)
    assert np.asarray(Image.open(out / "wide_overlay.jpg")).shape == (20, 40, 3)


# --------------------------------------------------------------------------------------------
# train-head: every bad shot folder or setting is refused before training

@pytest.fixture()
def shots(tiny, tmp_path, capsys):
    from ganseg.labels import save_label_png, write_labels_json

    d = tmp_path / "shots"
    assert cli("sample", "--ckpt", tiny["g"], "--seeds", "0-1", "--out", d) == 0
    for s in (0, 1):
        save_label_png(d / f"seed{s:04d}_mask.png", (np.arange(256).reshape(16, 16) % 2).astype(np.uint8))
    write_labels_json(d / "labels.json", ["background", "part"])
    capsys.readouterr()
    return d


def train_head_fails(tiny, shots, tmp_path, capsys, *extra, words=()):
    out = tmp_path / "h.safetensors"
    assert cli("train-head", "--ckpt", tiny["g"], "--shots", shots, "--steps", "1", "--head", "linear",
               "--out", out, *extra) == 2
    assert not out.exists()
    return one_line_error(capsys, *words)


def test_train_head_bad_shots(tiny, shots, tmp_path, capsys):
    from ganseg.labels import save_label_png

    assert cli("train-head", "--ckpt", tiny["g"], "--shots", shots, "--steps", "1", "--head", "linear",
               "--out", tmp_path / "ok.safetensors") == 0  # the folder is fine as made
    save_label_png(shots / "seed0001_mask.png", np.zeros((8, 8), np.uint8))  # mixed sizes, and != its image
    train_head_fails(tiny, shots, tmp_path, capsys, words=["seed0001_mask.png", "8x8", "seed0001.png is 16x16"])
    (shots / "seed0001.png").unlink()  # no image file: the generator's size is the reference
    train_head_fails(tiny, shots, tmp_path, capsys, words=["seed0001_mask.png", "16 px"])
    save_label_png(shots / "seed0001_mask.png", np.zeros((16, 16), np.uint8))
    (shots / "labels.json").write_text('{"names": ["a", "b"]}')
    train_head_fails(tiny, shots, tmp_path, capsys, words=["labels.json", '"classes"'])
    (shots / "labels.json").write_text("{not json")
    train_head_fails(tiny, shots, tmp_path, capsys, words=["labels.json", "not valid JSON"])


def test_train_head_bad_settings(tiny, shots, tmp_path, capsys):
    for opt in ("--ensemble", "--steps"):
        with pytest.raises(SystemExit) as e:
            cli("train-head", "--ckpt", tiny["g"], "--shots", shots, "--out", tmp_path / "h.safetensors", opt, "0")
        assert e.value.code == 2
        assert f"argument {opt}: expected an integer >= 1, got '0'" in capsys.readouterr().err
    train_head_fails(tiny, shots, tmp_path, capsys, "--min-resolution", "999",
                     words=["--min-resolution 999", "4, 8, 16"])
    from ganseg.headfit import HeadTrainConfig, train_head

    with pytest.raises(UserError, match="--ensemble must be an integer >= 1"):  # the library refuses too
        train_head(tiny["G"], None, HeadTrainConfig(ensemble=0))


def test_real_shots_mask_must_match_its_image(tiny, tmp_path, capsys):
    from ganseg.labels import save_label_png, write_labels_json

    d = tmp_path / "real"
    d.mkdir()
    photo(d / "0000.png", 24, 24)
    save_label_png(d / "0000_mask.png", np.zeros((20, 24), np.uint8))
    write_labels_json(d / "labels.json", ["background", "part"])
    train_head_fails(tiny, d, tmp_path, capsys, "--real", "--invert-steps", "1",
                     words=["0000_mask.png", "24x20", "0000.png is 24x24"])


# --------------------------------------------------------------------------------------------
# Generator API

def test_synthesize_accepts_numpy_and_refuses_bad_latents(tiny):
    G = tiny["G"]
    assert G.device == torch.device("cpu")
    z = np.random.RandomState(0).randn(2, G.z_dim)
    img = G.synthesize(z=z, truncation_psi=0.7)
    assert isinstance(img, torch.Tensor) and img.shape == (2, 3, 16, 16)
    torch.testing.assert_close(img, G.synthesize(z=torch.from_numpy(z).float(), truncation_psi=0.7))
    img2, feats = G.synthesize_features(z=z, truncation_psi=0.7)  # always a pair
    torch.testing.assert_close(img2, img)
    assert [f.shape[1] for f in feats] == [c for _, _, c in G.feature_info]
    w = G.map(z).detach()
    torch.testing.assert_close(G.synthesize(w=w.numpy()), G.synthesize(w=w))
    with pytest.raises(UserError, match=r"truncation_psi must be a number, got '0.7' \(str\)"):
        G.synthesize(z=z, truncation_psi="0.7")
    bad = z.copy()
    bad[1, 3] = np.nan
    with pytest.raises(UserError, match="z contains NaN"):
        G.synthesize(z=bad)
    with pytest.raises(UserError, match="w contains NaN or infinite"):
        G.synthesize(w=torch.full((1, G.w_dim), float("inf")))
    with pytest.raises(UserError, match="z must be a float tensor or numpy array"):
        G.synthesize(z="zzz")
    with pytest.raises(ValueError, match="z must have shape"):  # still a ValueError for old callers
        G.synthesize(z=np.zeros((2, 3)))


# --------------------------------------------------------------------------------------------
# Numbers, seeds, checkpoints, signals

@pytest.mark.parametrize("value", ["0", "-1", "two"])
@pytest.mark.parametrize("cmd", ["sample", "segment", "synthesize", "train-unet", "render", "invert"])
def test_batch_must_be_positive(cmd, value, capsys):
    with pytest.raises(SystemExit) as e:
        cli(cmd, "--batch", value, "--help-never-reached")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --batch: expected an integer >= 1, got '{value}'" in err and "Traceback" not in err


def test_sample_streams_any_seed_count(tiny, tmp_path, capsys):
    from ganseg.sample import count_seeds, parse_seeds

    seeds = parse_seeds("0-99999999,5")
    assert count_seeds(seeds) == 100_000_001  # ranges, not a list of 10^8 ints
    with pytest.raises(UserError, match="at most 4294967295"):
        parse_seeds("0-4294967296")
    # with latents: refused up front, nothing written
    assert cli("sample", "--ckpt", tiny["g"], "--seeds", "0-99999999", "--out", tmp_path / "a") == 2
    one_line_error(capsys, "100000000 images", "--no-latents")
    assert not (tmp_path / "a").exists()
    # without: images appear at once, memory stays small (the old code built 4 GB before writing)
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "ganseg.cli", "sample", "--ckpt", str(tiny["g"]), "--seeds",
                             "0-99999999", "--no-latents", "--batch", "4", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while not (out / "seed0011.png").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (out / "seed0011.png").exists(), "images must be written as they are made"
        rss_kb = int(next(ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if ln.startswith("VmRSS")).split()[1])
        assert rss_kb < 1_500_000, rss_kb
    finally:
        proc.kill()
        proc.wait()


def test_small_sample_keeps_grid_and_latents(tiny, tmp_path):
    from ganseg.latents import load_latents

    assert cli("sample", "--ckpt", tiny["g"], "--seeds", "0-9", "--grid", "4", "--batch", "3", "--out", tmp_path) == 0
    lat, _ = load_latents(tmp_path / "latents.safetensors")
    assert lat["seeds"].tolist() == list(range(10))
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 4 images of 16 px, 2 px padding


def test_folder_as_checkpoint(tiny, tmp_path, capsys):
    from ganseg import CheckpointError, load_generator

    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint: pass the generator file") as e:
        load_generator(tiny["dir"])
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert cli("sample", "--ckpt", tiny["dir"], "--out", tmp_path / "s") == 2
    one_line_error(capsys, "is a folder")


def test_sigterm_on_synthesize_says_where_and_resumes(tiny, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "ganseg.cli", "synthesize", "--ckpt", str(tiny["g"]), "--head", str(tiny["head"]),
           "--n", "160", "--shard-size", "4", "--batch", "4", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (out / "index.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopped at shard" in err and "Rerun the same command to resume" in err, err
    assert "Traceback" not in err
    from ganseg.synthesize import read_manifest

    done = len(read_manifest(out)["shards"])
    assert 0 < done < 40
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(read_manifest(out)["shards"]) == 40


# --------------------------------------------------------------------------------------------
# CLI: user errors are one line, bugs keep their traceback; lazy imports; defaults in --help

def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    import ganseg.sample

    def bug(args):
        raise ValueError("internal shape mismatch")  # what a torch shape error looks like

    monkeypatch.setattr(ganseg.sample, "run", bug)
    with pytest.raises(ValueError, match="internal shape mismatch"):
        cli("sample", "--out", tmp_path)


def test_help_is_fast_and_shows_defaults(capsys):
    code = ("import sys\nfrom ganseg.cli import main\n"
            "for argv in (['--help'], ['export', '--help'], ['serve', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'PIL', 'onnx', 'tritonclient') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr
    assert "segment" in r.stdout and "TARGET" in r.stdout
    with pytest.raises(SystemExit):
        cli("sample", "--help")
    out = " ".join(capsys.readouterr().out.split())  # independent of the terminal width
    assert "(default: 0-15)" in out and "--batch BATCH (default: 8)" in out and "(default: cpu)" in out


@pytest.mark.parametrize("module", ["ganseg.segment", "ganseg.unet"])
def test_deployable_path_does_not_import_the_trainers(module):
    code = f"import sys, {module}\nprint(sorted(m for m in sys.modules if m.startswith('ganseg.training')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_train_gan_data_must_be_a_folder(tmp_path, capsys):
    from ganseg.cli import main

    (tmp_path / "one.png").write_bytes(b"x")
    for data, words in ((tmp_path / "one.png", "a file"), (tmp_path / "nope", "not found")):
        assert main(["train-gan", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
        one_line_error(capsys, "ganseg train-gan: error:", "--data", words, "folder")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
