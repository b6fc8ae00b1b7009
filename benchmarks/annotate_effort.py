"""How much work annotating 5 shots in `ganseg annotate` takes, with and without proposals.

A scripted new user works in the real page (headless Debian Chromium via Playwright, real mouse
clicks and keys) on 5 images sampled from the bundled 64² generator. What the user wants to paint
is fixed by a reference annotator — the bundled UNet's segmentation of each image — so both runs
aim at the same masks. The user only uses the brush, largest dabs first: each dab is a click whose
disc of pixels all need the same class (so it never makes a pixel wrong), chosen where it fixes
the most wrong pixels, with sizes 9, 7, 5, 3, 1; they stop at 95 % of pixels right.

- without proposals: every mask starts empty (all background);
- with proposals: the first mask starts empty; for the others the user presses P (the head trains
  on the masks saved so far, in the background) and corrects the proposal.

Counted: brush dabs (mouse clicks), class/size key presses, the seconds spent waiting for
proposals, and the wall time of the scripted session. A person's seconds are not measured: a dab is
the unit of work. The page screenshot with a proposal goes to --screenshot.

    python benchmarks/annotate_effort.py --screenshot docs/annotate_screenshot.png
    # -> benchmarks/results/annotate_effort.{json,md,png}
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, environment, environment_markdown, markdown_table, pyplot, save_figure,  # noqa: E402
                    write_json, write_text)

SIZES = (9, 7, 5, 3, 1)
GOAL = 0.95
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def shifted(a: np.ndarray, dx: int, dy: int, fill) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx] (fill outside)."""
    h, w = a.shape
    out = np.full_like(a, fill)
    out[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)] = \
        a[max(0, dy): h - max(0, -dy), max(0, dx): w - max(0, -dx)]
    return out


def plan_dabs(current: np.ndarray, target: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x, y, size, class) dabs that bring `current` to GOAL agreement with `target` (greedy)."""
    from ganseg.annotate import brush_offsets

    cur, dabs = current.copy(), []
    for size in SIZES:
        offs = brush_offsets(size)
        pure = np.ones(target.shape, bool)  # every pixel under the dab wants the centre's class
        for dx, dy in offs:
            pure &= shifted(target.astype(np.int16), dx, dy, -1) == target
        min_gain = max(1, len(offs) // 3)
        while (cur == target).mean() < GOAL:
            wrong = (cur != target).astype(np.int32)
            gain = sum(shifted(wrong, dx, dy, 0) for dx, dy in offs) * pure
            best = int(gain.argmax())
            if gain.flat[best] < min_gain:
                break
            y, x = divmod(best, target.shape[1])
            c = int(target[y, x])
            for dx, dy in offs:
                cur[y + dy, x + dx] = c
            dabs.append((x, y, size, c))
    return dabs


def annotate(page, name: str, target: np.ndarray, propose: bool, shot: Path | None) -> dict:
    page.evaluate(f"window.annotator.go({name!r})")
    page.evaluate("window.annotator.setView(8, 20, 20)")
    row = {"image": name, "wait_s": 0.0}
    if propose:
        t = time.perf_counter()
        page.keyboard.press("p")
        page.wait_for_function("window.annotator.state.propose.state !== 'running' && "
                               "!window.annotator.state.pendingApply", timeout=600_000)
        row["wait_s"] = time.perf_counter() - t
        if shot is not None:
            page.screenshot(path=str(shot))
    start = np.array(page.evaluate("window.annotator.mask()"), np.uint8).reshape(target.shape)
    row["start_agreement"] = float((start == target).mean())
    dabs = plan_dabs(start, target)
    keys, size, cls = 0, page.evaluate("window.annotator.state.size"), None
    for x, y, s, c in dabs:
        while size != s:  # the user's keys: [ and ] for the brush size, digits for the class
            page.keyboard.press("[" if s < size else "]")
            size += -1 if s < size else 1
            keys += 1
        if c != cls:
            page.keyboard.press(str(c))
            cls, keys = c, keys + 1
        page.mouse.click(*page.evaluate(f"window.annotator.imageToClient({x + 0.5}, {y + 0.5})"))
    if page.evaluate("window.annotator.kind()") == "proposed":  # right as proposed: the user accepts it (A)
        page.keyboard.press("a")
        keys += 1
    while not page.evaluate("window.annotator.idle()"):
        page.wait_for_timeout(100)
    done = np.array(page.evaluate("window.annotator.mask()"), np.uint8).reshape(target.shape)
    row.update(dabs=len(dabs), keys=keys, end_agreement=float((done == target).mean()))
    return row


def run_mode(browser, sampled: Path, targets: dict, propose: bool, cfg, shot: Path | None) -> dict:
    from ganseg.annotate import make_server
    from ganseg.labels import load_label_png

    folder = Path(tempfile.mkdtemp(prefix="annotate-effort-"))
    shutil.copytree(sampled, folder, dirs_exist_ok=True)
    server = make_server(folder, port=0, propose=cfg, log=lambda *_: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    t0 = time.perf_counter()
    try:
        page = context.new_page()
        page.goto(server.url)
        page.evaluate("window.annotator.ready")
        rows = []
        for i, (name, target) in enumerate(targets.items()):
            last = i == len(targets) - 1
            rows.append(annotate(page, name, target, propose and i > 0, shot if propose and last else None))
            saved = load_label_png(folder / f"{name}_mask.png")
            rows[-1]["saved_agreement"] = float((saved == target).mean())
            print(("with" if propose else "without"), "proposals:", rows[-1], flush=True)
    finally:
        context.close()
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"proposals": propose, "rows": rows, "session_s": time.perf_counter() - t0,
            "dabs": sum(r["dabs"] for r in rows), "keys": sum(r["keys"] for r in rows),
            "wait_s": sum(r["wait_s"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--screenshot", default=None, help="write the page with a proposal here (PNG)")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    from ganseg.annotate.propose import ProposeConfig
    from ganseg.cli import main as ganseg
    from ganseg.images import load_rgb
    from ganseg.unet import load_unet, segment_with_unet

    cfg = ProposeConfig()  # what `ganseg annotate` uses by default
    sampled = Path(tempfile.mkdtemp(prefix="annotate-sampled-"))
    assert ganseg(["sample", "--seeds", f"0-{args.images - 1}", "--out", str(sampled), "--grid", "0"]) == 0
    names = [f"seed{i:04d}" for i in range(args.images)]
    labels = segment_with_unet(load_unet(), np.stack([load_rgb(sampled / f"{n}.png") for n in names]))
    targets = dict(zip(names, labels))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
        modes = [run_mode(browser, sampled, targets, False, cfg, None),
                 run_mode(browser, sampled, targets, True, cfg, Path(args.screenshot) if args.screenshot else None)]
        browser.close()
    shutil.rmtree(sampled, ignore_errors=True)

    env = environment(head=cfg.head, steps=cfg.steps, ensemble=cfg.ensemble, goal=GOAL, sizes=list(SIZES))
    write_json(RESULTS / "annotate_effort.json", {"environment": env, "modes": modes})
    rows = []
    for m in modes:
        for r in m["rows"]:
            rows.append(["with" if m["proposals"] else "without", r["image"], r["start_agreement"] * 100,
                         r["dabs"], r["keys"], r["wait_s"], r["saved_agreement"] * 100])
        rows.append([f"**{'with' if m['proposals'] else 'without'}: total**", "", "", m["dabs"], m["keys"],
                     m["wait_s"], ""])
    table = markdown_table(["proposals", "image", "start: % pixels right", "brush dabs", "keys",
                            "proposal wait (s)", "saved: % right"], rows)
    write_text(RESULTS / "annotate_effort.md",
               f"# Annotating {args.images} shots in `ganseg annotate`, with and without proposals\n\n"
               f"`python benchmarks/annotate_effort.py` (proposals: {cfg.head} head, {cfg.steps} steps, "
               f"ensemble {cfg.ensemble}; the user stops at {GOAL:.0%} of pixels right)\n\n{table}\n\n"
               f"{environment_markdown(env)}\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(args.images)
    for k, m in enumerate(modes):
        ax.bar(x + (k - 0.5) * 0.4, [r["dabs"] for r in m["rows"]], 0.4,
               label=f"{'with' if m['proposals'] else 'without'} proposals ({m['dabs']} dabs)")
    ax.set_xticks(x, names)
    ax.set_ylabel("brush dabs to 95 % right")
    ax.legend()
    save_figure(fig, RESULTS / "annotate_effort.png")
    print(table)


if __name__ == "__main__":
    main()
