"""The HTTP side of `ganseg annotate`: static page + a small JSON API over `ShotStore` and `Proposer`.

Why the standard library's `ThreadingHTTPServer` and not a web framework: the app serves one person
on loopback, with a dozen routes that move small JSON bodies (a 256² mask is 64 KiB); it needs no
templating, sessions, websockets or async. The stdlib server adds no dependency to install or keep
up to date, starts in milliseconds, and one thread per request keeps the page responsive while a
proposal trains in its own thread. Masks travel as base64 of the raw class-index bytes (row-major
uint8), so no image codec can touch a value on the way.

Routes (all answers JSON except the page, static files and images)::

    GET  /                         the page              GET  /static/FILE      its JS/CSS
    GET  /api/state                images, classes, status, final commands
    GET  /api/image/NAME           the seedNNNN.png bytes
    GET  /api/mask/NAME            {version, error, data, kind}
    PUT  /api/mask/NAME            {base_version, data, kind} -> {version}; 409 when stale
                                   (kind "reviewed": NAME_mask.png, "proposed": NAME_proposed.png)
    PUT  /api/labels               {classes, palette} -> state
    POST /api/propose              start training; GET /api/propose: progress and Suggest-next ranking
    GET  /api/proposal/NAME        {labels, uncertainty, score}

Every refused request answers {"error": message} and prints `ganseg annotate: error: message`.
"""
from __future__ import annotations

import base64
import json
import mimetypes
import shlex
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from ganseg.annotate.propose import Proposer
from ganseg.annotate.store import ShotStore, StaleSave
from ganseg.errors import BadInput, UserError, one_line

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024 * 1024  # a 4096² mask in base64 is ~22 MB


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode()


def final_commands(store: ShotStore, proposer: Proposer) -> list[str]:
    """What to run with these shots when annotating is done (shown in the page)."""
    folder = shlex.quote(str(store.folder))
    ckpt = f" --ckpt {shlex.quote(proposer.ckpt)}" if proposer.ckpt else ""
    labels = "" if store.labels_path == store.folder / "labels.json" else (
        f"  # first: cp {shlex.quote(str(store.labels_path))} {folder}/labels.json (train-head reads it there)")
    proposed = [n for n in store.images if store.status(n)["proposed"]]
    if proposed:  # what train-head does with them, said where the person reads the command
        labels += (f"  # uses the {len(store.annotated())} reviewed mask(s); {len(proposed)} unreviewed proposal(s) "
                   f"left out (review them here, or add --include-proposed)")
    return [f"ganseg train-head --shots {folder}{ckpt} --ensemble 3 --out head.safetensors{labels}",
            f"ganseg synthesize{ckpt} --head head.safetensors --n 10000 --out ds/",
            "ganseg train-unet --data ds/ --out unet/"]


class AnnotateServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, store: ShotStore, proposer: Proposer, log=print):
        super().__init__(address, Handler)
        self.store, self.proposer, self.log = store, proposer, log

    def server_close(self) -> None:
        """Close the socket, then stop a proposal in training and wait for its thread: the process must
        not exit while that thread is inside torch (`ganseg.annotate.propose` says why)."""
        super().server_close()
        self.proposer.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def state(self) -> dict:
        s = self.store
        return {
            "folder": str(s.folder),
            "labels_file": str(s.labels_path),
            "labels_exist": s.labels_exist,
            "latents_error": s.latents_error,
            "classes": [{"name": n, "color": "#%02x%02x%02x" % tuple(int(c) for c in rgb)}
                        for n, rgb in zip(s.labels.class_names, s.labels.palette)],
            "images": [{"name": e.name, "width": e.width, "height": e.height, **s.status(e.name)}
                       for e in s.images.values()],
            "propose": self.proposer.status(),
            "commands": final_commands(s, self.proposer),
        }


class Handler(BaseHTTPRequestHandler):
    server: AnnotateServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # requests are not news; errors are printed by _fail
        pass

    # ---------------------------------------------------------------- plumbing

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _fail(self, status: int, message: str) -> None:
        message = one_line(message)
        self.server.log(f"ganseg annotate: error: {message}")
        self._json({"error": message}, status)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise BadInput(f"request of {n} bytes is too large")
        try:
            data = json.loads(self.rfile.read(n) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"request body is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BadInput("request body must be a JSON object")
        return data

    def _route(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            self._dispatch(method, path)
        except StaleSave as exc:
            self._fail(HTTPStatus.CONFLICT, str(exc))
        except UserError as exc:
            self._fail(HTTPStatus.BAD_REQUEST, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - a bug: traceback on the terminal, a message in the page
            traceback.print_exc(file=sys.stderr)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__}: {exc}); "
                                                         f"see the terminal and please report it")

    def do_GET(self):
        self._route("GET")

    def do_PUT(self):
        self._route("PUT")

    def do_POST(self):
        self._route("POST")

    # ---------------------------------------------------------------- routes

    def _dispatch(self, method: str, path: str) -> None:
        store, proposer = self.server.store, self.server.proposer
        if method == "GET" and path in ("/", "/index.html"):
            return self._static("index.html")
        if method == "GET" and path == "/favicon.ico":
            return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        if method == "GET" and path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/api/state" and method == "GET":
            return self._json(self.server.state())
        if path.startswith("/api/image/") and method == "GET":
            return self._send(200, store.image_path(path.rsplit("/", 1)[1]).read_bytes(), "image/png")
        if path.startswith("/api/mask/"):
            name = path.rsplit("/", 1)[1]
            if method == "GET":
                mask, version, error, kind = store.load_mask(name)
                return self._json({"version": version, "error": error, "kind": kind,
                                   "data": None if mask is None else _b64(mask)})
            if method == "PUT":
                return self._save_mask(name, self._body())
        if path == "/api/labels" and method == "PUT":
            body = self._body()
            store.write_labels(body.get("classes") or [], body.get("palette"))
            self.server.log(f"ganseg annotate: wrote {store.labels_path} ({len(store.labels)} classes)")
            return self._json(self.server.state())
        if path == "/api/propose":
            if method == "POST":
                proposer.start()
                self.server.log(f"ganseg annotate: training a head on {len(proposer.job.trained_on)} shot(s)...")
            return self._json(proposer.status())
        if path.startswith("/api/proposal/") and method == "GET":
            name = path.rsplit("/", 1)[1]
            store.entry(name)
            p = proposer.proposals.get(name)
            if p is None:
                raise BadInput(f"no proposal for {name} yet: press Propose (P) first")
            return self._json({"labels": _b64(p.labels), "uncertainty": _b64(p.uncertainty),
                               "score": p.score, "trained_on": proposer.job.trained_on})
        self._fail(HTTPStatus.NOT_FOUND, f"no route {method} {path}")

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if STATIC not in path.parents or not path.is_file():
            return self._fail(HTTPStatus.NOT_FOUND, f"no static file {name!r}")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), ctype + ("; charset=utf-8" if ctype.startswith("text/") or
                                                    ctype.endswith("javascript") else ""))

    def _save_mask(self, name: str, body: dict) -> None:
        store = self.server.store
        e = store.entry(name)
        try:
            raw = base64.b64decode(body["data"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{name}: the save carries no base64 mask data") from None
        if len(raw) != e.width * e.height:
            raise BadInput(f"{name}: the page sent {len(raw)} mask bytes, expected {e.width}x{e.height}; reload the page")
        mask = np.frombuffer(raw, np.uint8).reshape(e.height, e.width)
        kind = str(body.get("kind", "reviewed"))
        version = store.save_mask(name, mask, str(body.get("base_version", "")), kind)
        self.server.log(f"ganseg annotate: saved {store.mask_path(name, kind)}"
                        f"{' (a proposal, not yet reviewed)' if kind == 'proposed' else ''}")
        self._json({"version": version, **store.status(name)})
