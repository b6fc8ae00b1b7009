"""`ganseg annotate SHOTS_DIR`: paint the few-shot masks in the browser, with head proposals.

Why: train-head needs single-channel PNGs whose pixel values are class indices, which ordinary paint
programs do not write (they anti-alias, add colour, drop the palette). This local web app paints
into an index array (every saved pixel is a class index), saves `seedNNNN_mask.png` + `labels.json`
in the format `train-head` reads, and, once a shot is saved, trains the head in the background to
propose the next mask so the person only corrects it (docs/annotate.md).

Layout: `store.py` (files: masks, versions, backups, classes), `propose.py` (background head
training), `server.py` (HTTP API), `static/` (the page: plain HTML/JS/canvas, no build step, nothing
fetched from the internet).
"""
from __future__ import annotations

import argparse
import sys
import webbrowser

from ganseg.errors import BadInput


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.annotate.propose import ProposeConfig
    from ganseg.argtypes import nonnegative_int, positive_float, positive_int

    d = ProposeConfig()
    p.add_argument("shots", metavar="SHOTS_DIR", help="a `ganseg sample --out` folder (seedNNNN.png + latents.safetensors)")
    p.add_argument("--labels", default=None,
                   help="class list (default: SHOTS_DIR/labels.json; created with the default classes on the first save)")
    p.add_argument("--ckpt", default=None,
                   help="generator for proposals (default: the one latents.safetensors names, else the bundled one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: only this machine)")
    p.add_argument("--port", type=nonnegative_int, default=8765, help="port (0: any free port)")
    p.add_argument("--head", choices=["linear", "mlp", "cnn"], default=d.head, help="head kind for proposals")
    p.add_argument("--propose-steps", type=positive_int, default=d.steps, help="training steps per proposal head")
    p.add_argument("--ensemble", type=positive_int, default=d.ensemble,
                   help="heads per proposal; their entropy marks uncertain pixels")
    p.add_argument("--uncertain", type=positive_float, default=d.uncertain,
                   help="mark pixels whose entropy / log(classes) exceeds this")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def brush_offsets(size: int) -> list[tuple[int, int]]:
    """The pixels a brush dab of diameter `size` paints, as (dx, dy) from the pixel under the cursor:
    pixel centres within size/2 of the brush centre (even sizes centre between pixels). The page's
    `stamp` paints exactly these; scripts that plan strokes and the tests' reference masks use this."""
    c, lo = (0.0 if size % 2 else -0.5), -(size // 2)
    r = range(lo, lo + size)
    return [(dx, dy) for dy in r for dx in r if (dx - c) ** 2 + (dy - c) ** 2 <= (size / 2) ** 2]


def make_server(shots, labels=None, host: str = "127.0.0.1", port: int = 0, propose=None, log=print):
    """The store, proposer and HTTP server (not yet serving): what `run` and the tests start."""
    from ganseg.annotate.propose import ProposeConfig, Proposer
    from ganseg.annotate.server import AnnotateServer
    from ganseg.annotate.store import ShotStore

    store = ShotStore(shots, labels)
    proposer = Proposer(store, propose or ProposeConfig(), log=log)
    try:
        return AnnotateServer((host, port), store, proposer, log=log)
    except OSError as exc:
        raise BadInput(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                       f"pass another --port (0 picks a free one)") from None


def run(args: argparse.Namespace) -> int:
    from ganseg.annotate.propose import ProposeConfig

    server = make_server(args.shots, args.labels, args.host, args.port,
                         ProposeConfig(ckpt=args.ckpt, head=args.head, steps=args.propose_steps,
                                       ensemble=args.ensemble, uncertain=args.uncertain))
    store = server.store
    bad = {n: s["error"] for n in store.images if (s := store.status(n))["error"]}
    print(f"ganseg annotate: {len(store.images)} images in {store.folder}, {len(store.annotated())} annotated, "
          f"{len(store.labels)} classes ({store.labels_path}{'' if store.labels_exist else ': not yet written'})")
    for name, err in bad.items():
        print(f"ganseg annotate: warning: {err} ({name} starts empty; the file is backed up on save)", file=sys.stderr)
    if store.latents_error:
        print(f"ganseg annotate: warning: {store.latents_error}", file=sys.stderr)
    elif missing := store.without_latent():
        from ganseg.paths import some
        from ganseg.shots import latents_fix

        print(f"ganseg annotate: warning: {len(missing)} image(s) have no latent in latents.safetensors, so "
              f"train-head cannot use their masks (marked in the page): {some(missing)}; to use them, "
              f"{latents_fix(store.folder, [e.seed for e in store.images.values()])}", file=sys.stderr)
    if store.cleaned:
        print(f"ganseg annotate: removed {len(store.cleaned)} temporary file(s) left by an interrupted save; "
              f"the masks themselves are intact", file=sys.stderr)
    print(f"ganseg annotate: open {server.url}  (Ctrl-C to stop; every stroke is autosaved)", flush=True)
    if args.open:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print()  # after the terminal's ^C
        if server.proposer.job.state == "running":
            print("ganseg annotate: stopping the proposal in training...", flush=True)
        server.server_close()  # cancels a proposal and waits for its thread (a clean exit, not SIGABRT)
        print(f"ganseg annotate: stopped; {len(store.annotated())} annotated. Next:\n  "
              + "\n  ".join(server.state()["commands"]))
    finally:
        server.server_close()
    return 0
