"""`ganseg client` (and `ganseg serve`'s shutdown) as a new user meets them, against the REAL Triton
server (nvidia-pytriton's tritonserver), never a mock.

One module-scoped server on a tiny random 64 px UNet serves every test that needs a running server;
the two tests that stop a server on purpose start their own. Each test asserts what a user would
see go wrong: a lost result, a tritonserver left running, mixed lines, Triton's internal error text,
an overwritten contact sheet, or `segment` and `client` disagreeing on inputs or names.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.grpc")

sys.path.insert(0, str(Path(__file__).parent))
from pngs import header_only_png  # noqa: E402
from procs import read_until  # noqa: E402

from ganseg.labels import load_label_png  # noqa: E402
from ganseg.paths import list_images, output_names  # noqa: E402
from ganseg.serving import client as cli  # noqa: E402
from ganseg.errors import UserError  # noqa: E402
from ganseg.serving.server import TritonServer, _group_pids, _port_in_use, free_port  # noqa: E402


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + s) + np.cos(5 * y - s) for s in rng.random(3) * 6])
    return np.clip((base.transpose(1, 2, 0) + 2) * 60 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _write_photos(folder: Path, names: list[str], seed: int = 0, size: tuple[int, int] = (48, 40)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(names):
        (folder / n).write_bytes(_png(_photo(*size, seed + i)))
        out.append(folder / n)
    return out


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory) -> Path:
    import torch

    from ganseg.labels import CLASS_NAMES
    from ganseg.unet import UNet, UNetConfig, save_unet

    d = tmp_path_factory.mktemp("client")
    torch.manual_seed(0)
    unet = UNet(UNetConfig(num_classes=len(CLASS_NAMES), width=8, depth=3)).eval()
    with torch.no_grad():  # random batch-norm affines: several classes show up in every mask
        for m in unet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(0, 1)
                m.bias.normal_(0, 0.5)
    save_unet(unet, d / "run" / "unet.safetensors", list(CLASS_NAMES), extra={"resolution": 64})
    return d / "run"


@pytest.fixture(scope="module")
def repo(unet_run) -> Path:
    from ganseg.export.triton_repository import build_repository

    return build_repository(unet_run.parent / "repo", unet=unet_run)


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, ready_timeout=120) as srv:
        pgid = srv.pid
        yield srv
    assert not _group_pids(pgid), "processes of the server's group were left running"


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def _segment_cli(unet_run: Path, out: Path, *inputs) -> None:
    from ganseg.cli import main

    assert main(["segment", "--unet", str(unet_run), *map(str, inputs), "--out", str(out)]) == 0


# --------------------------------------------------------------------------------------------

def test_same_stem_in_two_folders_gives_two_results_named_as_segment_names_them(server, unet_run, tmp_path,
                                                                                capsys) -> None:
    """a/0000.png a/0000-2.png b/0000.png: three results, three masks (it used to write two and
    report three OK), named exactly as `ganseg segment` names them, and with the same labels."""
    a = _write_photos(tmp_path / "a", ["0000.png", "0000-2.png"], seed=1)
    b = _write_photos(tmp_path / "b", ["0000.png"], seed=5)
    inputs = [a[0], a[1], b[0]]
    out = tmp_path / "out"
    assert cli.run(_args(*map(str, inputs), "--url", server.grpc_url, "--out", str(out))) == 0
    text = capsys.readouterr().out
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert masks == ["0000-2_mask.png", "a__0000_mask.png", "b__0000_mask.png"]
    assert "segmented 3/3" in text and f"-> {out / 'a__0000_mask.png'}" in text
    _segment_cli(unet_run, tmp_path / "seg", *inputs)
    assert sorted(p.name for p in (tmp_path / "seg").glob("*_mask.png")) == masks
    for name in masks:  # the served pipeline and `ganseg segment` agree on the labels too
        served, local = load_label_png(out / name), load_label_png(tmp_path / "seg" / name)
        assert served.shape == local.shape == (48, 40)
        assert (served == local).mean() >= 0.999, name


def test_segment_and_client_accept_the_same_inputs(server, unet_run, tmp_path, capsys) -> None:
    """A folder (with a non-image file and earlier outputs in it) works for both commands, and both
    write the same file names."""
    photos = tmp_path / "photos"
    _write_photos(photos, ["x.png", "y.png"], seed=9)
    (photos / "notes.txt").write_text("not an image")
    (photos / "old_mask.png").write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))  # an earlier output
    assert [p.name for p in list_images([photos])] == ["x.png", "y.png"]
    assert cli.run(_args(str(photos), "--url", server.grpc_url, "--out", str(tmp_path / "c"))) == 0
    _segment_cli(unet_run, tmp_path / "s", photos)
    listing = {p.name for p in (tmp_path / "c").iterdir()}
    assert listing == {p.name for p in (tmp_path / "s").iterdir()}
    assert {"x_mask.png", "y_mask.png", "x_overlay.jpg", "overlays.png"} <= listing
    from ganseg.cli import main

    (tmp_path / "empty").mkdir()
    for bad, msg in ((tmp_path / "missing", "no such file or folder"), (tmp_path / "empty", "no image files")):
        capsys.readouterr()
        assert main(["client", str(bad), "--url", server.grpc_url, "--out", str(tmp_path / "c")]) == 2
        assert msg in capsys.readouterr().err
        assert main(["segment", "--unet", str(unet_run), str(bad), "--out", str(tmp_path / "s")]) == 2
        assert msg in capsys.readouterr().err


def test_reused_out_folder_keeps_each_runs_contact_sheet(server, tmp_path, capsys) -> None:
    photos = _write_photos(tmp_path / "in", ["p.png", "q.png"], seed=20)
    out = tmp_path / "out"
    sheets = []
    for i in range(3):
        assert cli.run(_args(*map(str, photos[: 1 + i % 2]), "--url", server.grpc_url, "--out", str(out))) == 0
        sheets.append(re.search(r"contact sheet: (\S+)", capsys.readouterr().out).group(1))
    assert sheets == [str(out / "overlays.png"), str(out / "overlays-2.png"), str(out / "overlays-3.png")]
    widths = [Image.open(s).size[0] for s in sheets]
    assert widths[0] < widths[1] and widths[0] == widths[2]  # each sheet shows its own run (1, 2, 1 images)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp or claim files left over


class _WriteRecorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, s: str) -> int:
        self.calls.append(s)
        return super().write(s)


def test_concurrent_result_lines_are_written_whole(server, tmp_path, monkeypatch) -> None:
    """Every line is one write (under one lock), so lines from worker threads cannot mix."""
    photos = _write_photos(tmp_path / "in", [f"{i:03d}.png" for i in range(24)], seed=40, size=(20, 24))
    rec = _WriteRecorder()
    monkeypatch.setattr(sys, "stdout", rec)
    assert cli.run(_args(str(tmp_path / "in"), "--url", server.grpc_url, "--concurrency", "8",
                         "--out", str(tmp_path / "out"))) == 0
    assert rec.calls and all(c.endswith("\n") and c.count("\n") == 1 for c in rec.calls), rec.calls[:5]
    lines = rec.getvalue().splitlines()
    result = [ln for ln in lines if ln.startswith(str(tmp_path / "in"))]
    assert sorted(ln.split()[0] for ln in result) == sorted(map(str, photos))
    assert all(re.fullmatch(r"\S+\s+24x20\s+[\d.]+ ms\s+-> \S+_mask\.png", ln) for ln in result), result


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_requests_during_a_server_shutdown_say_the_server_is_stopping(repo, tmp_path, protocol) -> None:
    """SIGTERM to the server mid-run: the image in flight says the server is stopping (not Triton's
    "has no available versions", "Server is stopping, scheduler ..." or a socket error, which
    differ by protocol and timing), the rest are counted and not sent.

    Deterministic: HTTP keeps answering through Triton's drain (up to --exit-timeout-secs=5), and
    2 000 unthrottled images once all finished inside it (1 run in 5). After the signal each
    result waits up to 50 ms for the server to exit, so at most ~40 requests a second are sent
    while it drains: 2 000 images last 50 s, ten times the drain, and the run still ends as soon
    as the server is gone."""
    first = _write_photos(tmp_path / "in", ["0000.png"], seed=60, size=(16, 16))[0]
    for i in range(1, 2000):
        os.link(first, tmp_path / "in" / f"{i:04d}.png")
    photos = list_images([tmp_path / "in"])
    with TritonServer(repo, ready_timeout=120) as srv:
        done = []

        def on_result(r: cli.Result) -> None:  # on a worker thread
            done.append(r)
            if len(done) == 3:
                srv.process.send_signal(signal.SIGTERM)
            elif len(done) > 3:
                try:
                    srv.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass

        url = srv.grpc_url if protocol == "grpc" else srv.http_url
        results = cli.segment_files(photos, url, protocol, concurrency=2, on_result=on_result)
    assert len(results) == len(photos) and [r.path for r in results] == photos
    errors = [r for r in results if r.error is not None]
    assert errors and sum(r.error is None for r in results) >= 3
    assert all(r.error == cli.stopping_message(url) for r in errors), {r.error for r in errors}
    assert any(not r.sent for r in errors)  # once known to be stopping, the rest are not sent
    assert all(r.sent for r in done)        # and are not reported one by one


def test_client_serve_stops_its_server_and_stubs_on_sigterm(repo, tmp_path) -> None:
    photos = _write_photos(tmp_path / "in", ["0.png"], size=(16, 16))
    for i in range(1, 400):  # enough work that the run is still going when the signal comes
        os.link(photos[0], tmp_path / "in" / f"{i}.png")
    proc = subprocess.Popen([sys.executable, "-m", "ganseg.cli", "client", "--serve", "--repo", str(repo),
                             str(tmp_path / "in"), "--concurrency", "1", "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # up to the first result: segmentation is under way
        lines = read_until(proc, lambda line: line.endswith("_mask.png\n"))
        started = [line for line in lines if "started Triton" in line]
        server_pid = int(started[0].split("(pid ")[1].split(";")[0]) if started else None
        assert server_pid is not None and _group_pids(server_pid), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + rest  # 143, as a shell reports it
        assert "interrupted: stopped Triton" in rest and "interrupted" in rest.splitlines()[-1]
        assert not _group_pids(server_pid), "tritonserver or a Python-backend stub outlived `ganseg client --serve`"
        assert len(list((tmp_path / "out").glob("*_mask.png"))) < 400
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_masks_are_the_pipelines_fast_indexed_png_and_limits_are_checked_before_sending(server, tmp_path,
                                                                                         capsys) -> None:
    from ganseg.labels import PALETTE
    from ganseg.pipeline import MAX_PIXELS, label_png

    good = _write_photos(tmp_path / "in", ["good.png"], seed=70)[0]
    (tmp_path / "in" / "huge.png").write_bytes(header_only_png(10_000, MAX_PIXELS // 10_000 + 1))
    out = tmp_path / "out"
    assert cli.run(_args(str(tmp_path / "in"), "--url", server.grpc_url, "--out", str(out))) == 1
    text = capsys.readouterr().out
    huge = next(ln for ln in text.splitlines() if "huge.png" in ln)
    assert "ERROR" in huge and "MP" in huge and "DecompressionBomb" not in huge, huge
    assert "1 image(s) failed" in text and "segmented 1/2" in text
    mask = out / "good_mask.png"
    im = Image.open(mask)
    assert im.mode == "P" and np.array_equal(np.asarray(im.getpalette()[: 3 * len(PALETTE)]).reshape(-1, 3), PALETTE)
    assert mask.read_bytes() == label_png(np.asarray(im), PALETTE)  # the pipeline's one (fast) writer
    assert str(mask) in text and not (out / "huge_mask.png").exists()
    assert Image.open(out / "good_overlay.jpg").size == (40, 48)  # the server's preview: the photo is smaller
    # --overlay-size asks the server for a smaller preview; --no-overlay for none (masks only)
    assert cli.run(_args(str(good), "--url", server.grpc_url, "--overlay-size", "24", "--out", str(tmp_path / "o"))) == 0
    assert max(Image.open(tmp_path / "o" / "good_overlay.jpg").size) == 24
    assert np.array_equal(load_label_png(tmp_path / "o" / "good_mask.png"), np.asarray(im))  # mask at full size
    assert cli.run(_args(str(good), "--url", server.grpc_url, "--no-overlay", "--out", str(tmp_path / "n"))) == 0
    assert not list((tmp_path / "n").glob("*overlay*")) and (tmp_path / "n" / "good_mask.png").is_file()
    from ganseg.errors import UserError

    with pytest.raises(UserError, match="--overlay-size"):
        cli.run(_args(str(good), "--url", server.grpc_url, "--overlay-size", "0", "--out", str(tmp_path / "n")))


def test_output_names_are_one_rule() -> None:
    """The rule both commands call (pure: no server)."""
    assert output_names(["a/0000.png", "a/0000-2.png", "b/0000.png"]) == ["a__0000", "0000-2", "b__0000"]


# --------------------------------------------------------------------------------------------
# issue 23: what a run leaves out, how `ganseg serve` ends, and repositories it cannot serve

def test_sigkill_to_ganseg_serve_takes_tritonserver_and_its_stubs_down(repo) -> None:
    """SIGKILL runs no handler and no `finally`: tritonserver (its own session) and its five
    Python-backend stubs used to keep running and holding the ports. The server now dies with its
    parent (PR_SET_PDEATHSIG) and the stubs follow it (they watch their parent)."""
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "ganseg.cli", "serve", "--repo", str(repo),
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server_pid = None
    try:
        text = "".join(read_until(proc, lambda line: "Ctrl-C stops it" in line))
        server_pid = int(text.split("ready (pid ")[1].split(")")[0])
        assert len(_group_pids(server_pid)) >= 2, text  # tritonserver and its stubs
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_pids(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _group_pids(server_pid)
        assert not left, f"left running after SIGKILL to `ganseg serve`: {left}"
        assert not [p for p in ports if _port_in_use("127.0.0.1", p)], "a port is still held"
    finally:
        if proc.poll() is None:
            proc.kill()
        if server_pid is not None and _group_pids(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def test_a_gpu_repository_is_refused_before_triton_starts_with_the_command_that_rebuilds_it(
        repo, tmp_path, capsys) -> None:
    """`--target onnxruntime-gpu` on this server gave only Triton's "unable to find backend
    library" after the start. Now one line before starting, and its command fixes the repository."""
    from ganseg.cli import main
    from ganseg.serving import tritonenv
    from ganseg.export.triton_repository import build_repository

    gpu = build_repository(tmp_path / "gpu", onnx=repo / "ganseg_unet" / "1" / "model.onnx",
                           target="onnxruntime-gpu")
    ports = [str(free_port()) for _ in range(3)]
    t0 = time.monotonic()
    assert main(["serve", "--repo", str(gpu), "--http-port", ports[0], "--grpc-port", ports[1],
                 "--metrics-port", ports[2]]) == 2
    assert time.monotonic() - t0 < 5  # refused before Triton starts (its start and failure take longer)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unable to find backend library" not in err, err
    assert "model ganseg_unet needs Triton's onnxruntime backend (platform onnxruntime_onnx)" in err, err
    command = re.search(r"rebuild the repository for CPU with `([^`]+)`", err).group(1)
    assert command == f"ganseg export triton --onnx {gpu / 'ganseg_unet' / '1' / 'model.onnx'} --repo {gpu}"
    assert main(shlex.split(command)[1:]) == 0  # the command given fixes it ...
    from ganseg.serving.server import check_repository

    check_repository(gpu)
    for model in ("ganseg_unet", "ganseg_segment"):  # ... into the CPU repository of the same ONNX file
        assert (gpu / model / "config.pbtxt").read_text() == (repo / model / "config.pbtxt").read_text()
    # a Python model asking for GPU instances: refused where the machine has no CUDA device
    (tmp_path / "g" / "m" / "1").mkdir(parents=True)
    (tmp_path / "g" / "m" / "config.pbtxt").write_text(
        'name: "m"\nbackend: "python"\nmax_batch_size: 0\ninstance_group [ { kind: KIND_GPU } ]\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    if tritonenv.cuda_device_count() == 0:
        with pytest.raises(UserError, match=r"model m asks for GPU instances .* no CUDA GPU; serve it with"):
            check_repository(tmp_path / "g")
    else:
        check_repository(tmp_path / "g")


def _animated(fmt: str, frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(buf, format=fmt, save_all=True, append_images=rest, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def test_skipped_files_and_first_frames_are_noted_once_and_timeout_0_is_refused(server, tmp_path, capsys) -> None:
    """A folder's .heic / .txt files used to vanish without a word, animated files were segmented
    from their first frame without a word, and `--timeout 0` was accepted."""
    from ganseg.cli import main

    photos = tmp_path / "photos"
    _write_photos(photos, ["plain.png"], seed=80)
    frames = [_photo(48, 40, s) for s in (81, 82, 83)]
    frames[0] = (frames[0] // 32) * 32  # 144 colours: a GIF palette (256) keeps them exactly
    (photos / "anim.gif").write_bytes(_animated("GIF", frames))
    (photos / "anim2.png").write_bytes(_animated("PNG", frames))  # APNG
    (photos / "holiday.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (photos / "notes.txt").write_text("not an image")
    (photos / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "first").mkdir()
    Image.fromarray(frames[0]).save(tmp_path / "first" / "anim.png")
    out = tmp_path / "out"
    assert cli.run(_args(str(photos), str(tmp_path / "first" / "anim.png"), "--url", server.grpc_url,
                         "--out", str(out))) == 0
    lines = capsys.readouterr().out.splitlines()
    notes = [ln for ln in lines if ln.startswith("note: ")]
    skipped = [ln for ln in notes if ln.startswith("note: skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("note: skipped 2 file(s)"), notes
    assert str(photos / "holiday.heic") in skipped[0] and str(photos / "notes.txt") in skipped[0]
    assert ".DS_Store" not in skipped[0]
    several = [ln for ln in notes if " have several frames" in ln]
    assert len(several) == 1 and "2 image(s)" in several[0] and "only the first frame" in several[0], notes
    assert str(photos / "anim.gif") in several[0] and str(photos / "anim2.png") in several[0]
    assert str(photos / "plain.png") not in several[0]
    masks = {p.name for p in out.glob("*_mask.png")}
    assert masks == {"plain_mask.png", "photos__anim_mask.png", "first__anim_mask.png", "anim2_mask.png"}, masks
    first = load_label_png(out / "first__anim_mask.png")  # what the note says: frame 1 is what was segmented
    assert np.array_equal(load_label_png(out / "photos__anim_mask.png"), first)
    assert np.array_equal(load_label_png(out / "anim2_mask.png"), first)
    for bad in ("0", "-1", "nan"):
        assert main(["client", str(photos), "--url", server.grpc_url, "--timeout", bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--timeout {bad}: pass the seconds one request may take, > 0" in err, err
