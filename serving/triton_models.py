"""The Triton Python-backend models (`TritonPythonModel` classes) of ganseg's model repository:
thin adapters between Triton's request objects and `ganseg.pipeline`.

Each `model_repository/<name>/1/model.py` is one line that imports a class from here, so the code
is versioned, tested and installed with ganseg. Only these classes need Triton's
`triton_python_backend_utils` (imported lazily, inside the stub process); the processing itself is
`ganseg.pipeline` (numpy + Pillow + ONNX Runtime, no torch), the same code `ganseg segment --unet`,
`OnnxSegmenter` and the in-process benchmark run.

Models (docs/serving.md has the public interface):
- `UNetOnnx`   -> `ganseg_unet`: `image` FP32 [3,S,S] -> `logits` FP32 [K,S,S], ONNX Runtime on CPU,
  one `session.run` per dynamic batch. On GPU servers the same name is served by Triton's
  onnxruntime or TensorRT backend instead (generated configs), with the same tensors.
- `SegmentBLS` -> `ganseg_segment` (IMAGE BYTES) / `ganseg_segment_raw` (IMAGE UINT8 [H,W,3]):
  `pipeline.pre` for every request of the dynamic batch, ONE call to `ganseg_unet` for all of them,
  `pipeline.post` per request.
- `Preprocess` / `Postprocess`: the same steps split for the ensemble variant (pre -> UNet -> post);
  between them travel the network batch, each photo's own size and the overlay preview (at most
  `overlay_max_side` on its long side), never the full-size photo.

Outputs, each computed only when the request asks for it (BLS models see the requested outputs):
- MASK: the raw UINT8 label map at the photo's own size (12 MB for a 12 MP photo);
- MASK_LOWRES + MASK_SIZE: the compact form, the UINT8 labels at the network's size (S x S) and the
  photo's (H, W); `ganseg.pipeline.resize_labels(MASK_LOWRES, MASK_SIZE)` is MASK, byte for byte
  (what `ganseg client` asks for and does);
- OVERLAY: a JPEG preview drawn from the image as decoded for the network, its long side at most
  `overlay_max_side` (request parameter, else model parameter, default `pipeline.PREVIEW_MAX_SIDE`).
The ensemble's post step cannot see what the client asked for and makes MASK and the compact pair
every time (OVERLAY follows the `overlay_max_side` parameter, see `preview_side`).

Error policy: `execute` returns exactly one response per request and never raises. A request with
bad data (corrupt/truncated/empty bytes, a bomb, too many pixels, an empty batch, mixed sizes)
gets a response carrying a TritonError with a one-line message; the other requests of the same
batch are processed normally. Failures that are not the request's fault are logged with their
traceback and returned as errors for the requests they hit.
"""
from __future__ import annotations

import json
import traceback

import numpy as np

from ganseg import pipeline as P
from ganseg.errors import BadInput, UserError


def _pb():
    import triton_python_backend_utils as pb_utils  # only exists inside Triton's Python stub

    return pb_utils


def _parameters(model_config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def _error(message: str, invalid_arg: bool = True):
    pb = _pb()
    code = pb.TritonError.INVALID_ARG if invalid_arg else pb.TritonError.INTERNAL
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(_one_line(message), code))


def _one_line(message: str) -> str:
    return " ".join(str(message).split())[:1000]


def _log_bug(where: str) -> str:
    text = traceback.format_exc()
    try:
        _pb().Logger.log_error(f"ganseg {where}: {text}")
    except Exception:  # noqa: BLE001 - logging must never turn one failure into two
        print(text, flush=True)
    return text.strip().splitlines()[-1]


class _Base:
    def initialize(self, args: dict) -> None:
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", self.model_config.get("name", "?"))
        self.params = _parameters(self.model_config)
        self.max_pixels = int(self.params.get("max_pixels", P.MAX_PIXELS))
        self.setup(args)

    def setup(self, args: dict) -> None:  # pragma: no cover - overridden
        pass

    def finalize(self) -> None:
        pass


class UNetOnnx(_Base):
    """`ganseg_unet`: the ONNX UNet in ONNX Runtime (CPU), one run per dynamic batch."""

    def setup(self, args: dict) -> None:
        import os

        path = os.path.join(args["model_repository"], args["model_version"], self.params.get("onnx_file", "model.onnx"))
        self.session = P.ort_session(path, int(self.params.get("ort_threads", "1")))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # one warm-up run at the configured shape, so the first request does not pay ORT's lazy setup
        dims = [int(d) for d in self.model_config["input"][0]["dims"]]
        self.session.run([self.output_name], {self.input_name: np.zeros([1, *dims], np.float32)})

    def execute(self, requests):
        pb = _pb()
        try:
            xs = [pb.get_input_tensor_by_name(r, P.INPUT_NAME).as_numpy() for r in requests]
            counts = [len(x) for x in xs]
            logits = self.session.run([self.output_name], {self.input_name: np.concatenate(xs)})[0]
        except Exception:  # noqa: BLE001 - execute must answer every request, never raise
            msg = _log_bug(f"{self.model_name} execute")
            return [_error(f"{self.model_name}: inference failed ({msg})", invalid_arg=False) for _ in requests]
        out, start = [], 0
        for n in counts:
            out.append(pb.InferenceResponse(output_tensors=[pb.Tensor(P.OUTPUT_NAME, logits[start:start + n])]))
            start += n
        return out


class _Images(_Base):
    """Reading one request's IMAGE input: BYTES (encoded files) or UINT8 [B,H,W,3] (raw pixels)."""

    def setup(self, args: dict) -> None:
        self.spec = P.UNetSpec.from_parameters(self.params)
        self.raw = self.params.get("input_kind", "bytes") == "raw"
        self.alpha = float(self.params.get("overlay_alpha", "0.5"))
        self.overlay_max_side = int(self.params.get("overlay_max_side", str(P.PREVIEW_MAX_SIDE)))
        self.more_setup(args)

    def more_setup(self, args: dict) -> None:
        pass

    # Whether a request wants OVERLAY: BLS models see the request's requested outputs; the ensemble's
    # pre step cannot (Triton asks every step for all its outputs, server issue #1201), so there
    # OVERLAY is made unless the request parameter overlay_max_side is 0.
    sees_requested_outputs = True

    def preview_side(self, request) -> int:
        """Long side of the OVERLAY preview, 0 for no OVERLAY: the request's `overlay_max_side`
        parameter, else the model's."""
        if self.sees_requested_outputs and P.OVERLAY not in request.requested_output_names():
            return 0
        side = json.loads(request.parameters() or "{}").get("overlay_max_side", self.overlay_max_side)
        if isinstance(side, bool) or not str(side).isdigit():
            raise BadInput(f"{self.model_name}: request parameter overlay_max_side={side!r}; "
                           f"send a positive integer (0: no OVERLAY)")
        return int(side)

    def read(self, request) -> P.Batch:
        """The request's photos through `pipeline.pre` (UserError naming the item on bad data)."""
        pb = _pb()
        x = pb.get_input_tensor_by_name(request, P.IMAGE).as_numpy()
        name = f"{self.model_name} {P.IMAGE}"
        preview = self.preview_side(request)
        if self.raw:
            items = P.check_raw(x, name, self.max_pixels)
        else:
            items = [bytes(d.encode("latin-1", "replace") if isinstance(d, str) else d)  # a client that sent text
                     for d in np.asarray(x, dtype=object).reshape(-1)]
            if not items:
                raise BadInput(f"{name}: empty batch (0 images); send at least one encoded image")
        names = [name if len(items) == 1 else f"{name} item {i}" for i in range(len(items))]
        batch = P.pre(items, self.spec.input_size, names=names, max_pixels=self.max_pixels, preview=preview)
        P.same_size(batch.sizes, name)
        return batch

    def wanted(self, request) -> set[str]:
        """The outputs to make for `request`: what it asked for (Triton lists every output when a
        client names none); everything for a step that cannot see the request (ensemble post)."""
        if not self.sees_requested_outputs:
            return {P.MASK, P.MASK_LOWRES, P.MASK_SIZE, P.OVERLAY}
        return set(request.requested_output_names())

    def response(self, results: list[P.Segmented], wanted: set[str]):
        """The `wanted` outputs for one request: MASK [B,H,W], MASK_LOWRES [B,S,S], MASK_SIZE [B,2],
        OVERLAY [B,1] JPEG bytes (when they were made, i.e. requested)."""
        pb = _pb()
        tensors = []
        if P.MASK in wanted:
            tensors.append(pb.Tensor(P.MASK, np.stack([r.mask for r in results])))
        if P.MASK_LOWRES in wanted:
            tensors.append(pb.Tensor(P.MASK_LOWRES, np.stack([r.labels for r in results])))
        if P.MASK_SIZE in wanted:
            tensors.append(pb.Tensor(P.MASK_SIZE, np.array([r.size for r in results], np.int32)))
        if results[0].overlay is not None:
            tensors.append(pb.Tensor(P.OVERLAY, np.array([r.overlay for r in results], dtype=object).reshape(-1, 1)))
        return pb.InferenceResponse(output_tensors=tensors)


class SegmentBLS(_Images):
    """`ganseg_segment` / `ganseg_segment_raw`: the whole pipeline in one model; the UNet is called
    through BLS once per dynamic batch (so GPU servers can swap `ganseg_unet` for an ORT/TensorRT
    model without touching this code), or, with the model parameter `inline_unet` = "1" (CPU
    repositories), run by this model's own ONNX Runtime session on `ganseg_unet`'s ONNX file: the
    same arithmetic without the two process hops of a BLS call (docs/serving.md has the rows)."""

    def more_setup(self, args: dict) -> None:
        import os

        self.unet_model = self.params.get("unet_model", "ganseg_unet")
        self.unet_max_batch = max(1, int(self.params.get("unet_max_batch", "8")))
        self.session = None
        if self.params.get("inline_unet", "0") == "1":  # CPU repositories: no hop through ganseg_unet
            onnx = os.path.join(os.path.dirname(os.path.normpath(args["model_repository"])), self.unet_model,
                                "1", "model.onnx")
            self.session = P.ort_session(onnx, int(self.params.get("ort_threads", "1")))
            self.input_name = self.session.get_inputs()[0].name
            self.output_name = self.session.get_outputs()[0].name
            s = self.spec.input_size  # one warm-up run, as UNetOnnx does
            self.session.run([self.output_name], {self.input_name: np.zeros([1, 3, s, s], np.float32)})

    def _unet(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return np.concatenate([self.session.run([self.output_name], {self.input_name: x[i:i + self.unet_max_batch]})[0]
                                   for i in range(0, len(x), self.unet_max_batch)])
        pb = _pb()
        outs = []
        for i in range(0, len(x), self.unet_max_batch):
            req = pb.InferenceRequest(model_name=self.unet_model, requested_output_names=[P.OUTPUT_NAME],
                                      inputs=[pb.Tensor(P.INPUT_NAME, x[i:i + self.unet_max_batch])])
            resp = req.exec()
            if resp.has_error():
                raise RuntimeError(f"{self.unet_model}: {resp.error().message()}")
            outs.append(pb.get_output_tensor_by_name(resp, P.OUTPUT_NAME).as_numpy())
        return np.concatenate(outs)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        good: list[tuple[int, P.Batch]] = []
        for i, r in enumerate(requests):
            try:
                good.append((i, self.read(r)))
            except UserError as exc:
                responses[i] = _error(str(exc))
            except Exception:  # noqa: BLE001 - one request's failure must not fail the batch
                responses[i] = _error(f"{self.model_name}: cannot read IMAGE ({_log_bug('read')})", invalid_arg=False)
        if good:
            try:
                logits = self._unet(np.concatenate([b.x for _, b in good]))
                start = 0
                for i, batch in good:
                    wanted = self.wanted(requests[i])
                    results = P.post(logits[start:start + len(batch)], batch, self.spec.palette, self.alpha,
                                     full_mask=P.MASK in wanted)
                    start += len(batch)
                    responses[i] = self.response(results, wanted)
            except Exception:  # noqa: BLE001 - answer every request even on a bug; logged with traceback
                msg = _log_bug(f"{self.model_name} execute")
                for i, _ in good:
                    if responses[i] is None:
                        responses[i] = _error(f"{self.model_name}: segmentation failed ({msg})", invalid_arg=False)
        return responses


class Preprocess(_Images):
    """Ensemble step 1: IMAGE -> `image` FP32 [B,3,S,S] + `size` INT32 [B,2] (each photo's own H, W)
    + `preview` UINT8 [B,h,w,3] (the overlay background; [B,0,0,3] when overlay_max_side is 0)."""

    sees_requested_outputs = False

    def execute(self, requests):
        pb = _pb()
        out = []
        for r in requests:
            try:
                batch = self.read(r)
                pv = batch.previews
                preview = np.stack(pv) if pv[0] is not None else np.zeros((len(batch), 0, 0, 3), np.uint8)
                out.append(pb.InferenceResponse(output_tensors=[
                    pb.Tensor(P.INPUT_NAME, batch.x), pb.Tensor("size", np.asarray(batch.sizes, np.int32)),
                    pb.Tensor("preview", preview)]))
            except UserError as exc:
                out.append(_error(str(exc)))
            except Exception:  # noqa: BLE001
                out.append(_error(f"{self.model_name}: preprocessing failed ({_log_bug('pre')})", invalid_arg=False))
        return out


class Postprocess(_Images):
    """Ensemble step 3: `logits` + `size` + `preview` -> MASK, MASK_LOWRES, MASK_SIZE (+ OVERLAY when a
    preview came along)."""

    sees_requested_outputs = False  # an ensemble asks its steps for every mapped output

    def execute(self, requests):
        pb = _pb()
        out = []
        for r in requests:
            try:
                logits = pb.get_input_tensor_by_name(r, P.OUTPUT_NAME).as_numpy()
                sizes = [(int(h), int(w)) for h, w in pb.get_input_tensor_by_name(r, "size").as_numpy()]
                pv = pb.get_input_tensor_by_name(r, "preview").as_numpy()
                previews = list(pv) if pv.shape[1] > 0 else [None] * len(sizes)
                batch = P.Batch(np.zeros((len(sizes), 0, 0, 3), np.uint8), sizes, previews)
                out.append(self.response(P.post(logits, batch, self.spec.palette, self.alpha), self.wanted(r)))
            except Exception:  # noqa: BLE001
                out.append(_error(f"{self.model_name}: postprocessing failed ({_log_bug('post')})", invalid_arg=False))
        return out
