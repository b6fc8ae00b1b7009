"""Decoding at the size the network needs: JPEG draft (DCT-domain) decode vs full decode.

Why: a 12 MP camera JPEG is decoded to 12 MP of pixels only to be shrunk to the UNet's 64² input.
`ganseg.pipeline.pre` asks libjpeg (Pillow's `draft`) for the smallest 1/2, 1/4 or 1/8 scale that
keeps both sides >= 2x the input, then resizes as before. This measures what that saves and what it
costs in accuracy:

- decode time of a 4000x3000 JPEG: full decode (`ganseg.images.decode_rgb`) vs the pipeline's draft
  decode, and the whole `pre` (decode + resize to the input) both ways;
- mIoU on rendered test faces (exact labels) upscaled to 4000x3000 JPEGs, segmented by the bundled
  UNet (ONNX Runtime) from the draft decode vs from a full decode, scored at 12 MP against the
  upscaled exact labels (goal: the two differ by <= 0.5 mIoU points).

Why Pillow's draft and not a libjpeg-turbo binding (PyTurboJPEG, simplejpeg): Pillow links
libjpeg-turbo already, `draft` is its scaled IDCT (the same 1/2..1/8 scales those bindings offer),
and it keeps one decoder for every format, EXIF orientation and the header checks of
`ganseg.images.open_photo`.

    python benchmarks/draft_decode.py [--n 20]   # -> results/draft_decode.{json,md}
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, environment_markdown, markdown_table, measure, write_json, write_text  # noqa: E402

SIZE = (4000, 3000)  # W, H: a 12 MP camera photo
GOAL_POINTS = 0.5


def face_jpegs(n: int, size=SIZE, quality: int = 90):
    """(JPEG bytes, exact labels at the photo's size) for the first n rendered test faces, upscaled."""
    from PIL import Image

    from ganseg.faces import render_faces, split_seeds
    from ganseg.pipeline import resize_labels

    imgs, labs = render_faces(split_seeds("test", n), resolution=128)
    for img, lab in zip(imgs, labs):
        buf = io.BytesIO()
        Image.fromarray(img).resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=quality)
        yield buf.getvalue(), resize_labels(lab, (size[1], size[0]))


def decode_timings(data: bytes, size: int, repeats: int = 10) -> list[dict]:
    from ganseg import pipeline as P
    from ganseg.images import decode_rgb, open_photo, resize_rgb

    def draft():
        with open_photo(data, "x", draft=P.DRAFT_FACTOR * size) as ph:
            return ph.rgb()

    shape = draft().shape
    cases = [("full decode (decode_rgb)", lambda: decode_rgb(data), "4000x3000"),
             (f"draft decode (>= {P.DRAFT_FACTOR * size} px a side)", draft, f"{shape[1]}x{shape[0]}"),
             ("full decode + resize to the input", lambda: resize_rgb(decode_rgb(data), size), f"{size}²"),
             ("pipeline.pre (draft decode + resize)", lambda: P.pre([data], size), f"{size}²"),
             ("pipeline.pre with an OVERLAY preview", lambda: P.pre([data], size, preview=P.PREVIEW_MAX_SIDE),
              f"{size}² + preview")]
    rows = []
    for what, fn, out in cases:
        t = measure(fn, warmup=2, repeats=repeats).summary()
        rows.append({"what": what, "decoded_to": out, "median_ms": t["median_ms"], "p90_ms": t["p90_ms"]})
    return rows


def miou_rows(n: int, onnx_path: Path) -> dict:
    import torch

    from ganseg.evaluate import confusion_matrix, iou_per_class
    from ganseg.images import decode_rgb
    from ganseg.labels import CLASS_NAMES
    from ganseg.pipeline import OnnxSegmenter

    seg = OnnxSegmenter(onnx_path)
    k = len(CLASS_NAMES)
    conf = {"draft": torch.zeros(k, k, dtype=torch.long), "full": torch.zeros(k, k, dtype=torch.long)}
    agree = []
    for data, truth in face_jpegs(n):
        draft = seg.segment([data])[0]
        full = seg.segment([decode_rgb(data)])[0]
        t = torch.from_numpy(truth)
        conf["draft"] += confusion_matrix(torch.from_numpy(draft), t, k)
        conf["full"] += confusion_matrix(torch.from_numpy(full), t, k)
        agree.append(float((draft == full).mean()))
    miou = {m: float(np.nanmean(iou_per_class(c).numpy())) for m, c in conf.items()}
    return {"n": n, "miou_draft": miou["draft"], "miou_full": miou["full"],
            "delta_points": 100 * (miou["draft"] - miou["full"]), "goal_points": GOAL_POINTS,
            "pixel_agreement_mean": float(np.mean(agree)), "pixel_agreement_min": float(np.min(agree))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="rendered test faces (upscaled to 4000x3000 JPEGs)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from ganseg.export.onnx_export import export_unet
    from ganseg.unet import load_unet

    size = int(load_unet().meta["resolution"])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_unet(None, Path(tmp) / "unet.onnx")
        data, _ = next(face_jpegs(1))
        timings = decode_timings(data, size)
        acc = miou_rows(args.n, onnx_path)
    env = environment()
    met = "met" if abs(acc["delta_points"]) <= GOAL_POINTS else "**not met**"
    md = (environment_markdown(env) + f"\nA 4000x3000 JPEG ({len(data) / 1e6:.2f} MB, quality 90; a rendered face "
          f"upscaled), bundled UNet ({size}² input), one thread:\n\n"
          + markdown_table(["step", "decoded to", "median ms", "p90 ms"],
                           [[r["what"], r["decoded_to"], r["median_ms"], r["p90_ms"]] for r in timings],
                           numeric=[False, False, True, True], digits=1)
          + f"\nmIoU on {acc['n']} rendered test faces upscaled to 4000x3000 JPEGs (scored at 12 MP against the "
            f"upscaled exact labels), bundled UNet in ONNX Runtime:\n\n"
          + markdown_table(["decode", "mIoU", "Δ vs full (points)", "goal", "pixels equal to full decode"],
                           [["full", f"{acc['miou_full']:.4f}", "–", "", "–"],
                            ["draft (pipeline)", f"{acc['miou_draft']:.4f}", f"{acc['delta_points']:+.2f}",
                             f"±{GOAL_POINTS} points: {met}",
                             f"{100 * acc['pixel_agreement_mean']:.2f} % (min {100 * acc['pixel_agreement_min']:.2f} %)"]],
                           numeric=[False, True, True, False, True]))
    out = Path(args.out)
    write_json(out / "draft_decode.json", {"environment": env, "decode": timings, "accuracy": acc})
    write_text(out / "draft_decode.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
