"""The Triton Python-backend models (`TritonPythonModel` classes) of ganseg's model repository.

Each `model_repository/<name>/1/model.py` is one line that imports a class from here, so the code
is versioned, tested and installed with ganseg. Only these classes need Triton's
`triton_python_backend_utils` (imported lazily, inside the stub process); the processing itself is
`ganseg.serving.transforms` (numpy + Pillow, no torch).

Models (docs/serving.md has the public interface):
- `UNetOnnx`   -> `ganseg_unet`: `image` FP32 [3,S,S] -> `logits` FP32 [K,S,S], ONNX Runtime on CPU,
  one `session.run` per dynamic batch. On GPU servers the same name is served by Triton's
  onnxruntime or TensorRT backend instead (generated configs), with the same tensors.
- `SegmentBLS` -> `ganseg_segment` (IMAGE BYTES) / `ganseg_segment_raw` (IMAGE UINT8 [H,W,3]):
  decode + resize every request of the dynamic batch, ONE call to `ganseg_unet` for all of them,
  argmax + resize back to each photo's own size, optional OVERLAY PNG.
- `Preprocess` / `Postprocess`: the same steps split for the ensemble variant (pre -> UNet -> post).

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

from ganseg.errors import UserError
from ganseg.serving import transforms as T


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
        self.max_pixels = int(self.params.get("max_pixels", T.SERVER_MAX_PIXELS))
        self.setup(args)

    def setup(self, args: dict) -> None:  # pragma: no cover - overridden
        pass

    def finalize(self) -> None:
        pass


class UNetOnnx(_Base):
    """`ganseg_unet`: the ONNX UNet in ONNX Runtime (CPU), one run per dynamic batch."""

    def setup(self, args: dict) -> None:
        import os

        import onnxruntime as ort

        path = os.path.join(args["model_repository"], args["model_version"], self.params.get("onnx_file", "model.onnx"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(self.params.get("ort_threads", "1")))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # one warm-up run at the configured shape, so the first request does not pay ORT's lazy setup
        dims = [int(d) for d in self.model_config["input"][0]["dims"]]
        self.session.run([self.output_name], {self.input_name: np.zeros([1, *dims], np.float32)})

    def execute(self, requests):
        pb = _pb()
        try:
            xs = [pb.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
            counts = [len(x) for x in xs]
            logits = self.session.run([self.output_name], {self.input_name: np.concatenate(xs)})[0]
        except Exception:  # noqa: BLE001 - execute must answer every request, never raise
            msg = _log_bug(f"{self.model_name} execute")
            return [_error(f"{self.model_name}: inference failed ({msg})", invalid_arg=False) for _ in requests]
        out, start = [], 0
        for n in counts:
            out.append(pb.InferenceResponse(output_tensors=[pb.Tensor("logits", logits[start:start + n])]))
            start += n
        return out


class _Images(_Base):
    """Reading one request's IMAGE input: BYTES (encoded files) or UINT8 [B,H,W,3] (raw pixels)."""

    def setup(self, args: dict) -> None:
        self.spec = T.UNetSpec.from_parameters(self.params)
        self.raw = self.params.get("input_kind", "bytes") == "raw"
        self.alpha = float(self.params.get("overlay_alpha", "0.5"))
        self.more_setup(args)

    def more_setup(self, args: dict) -> None:
        pass

    def read_images(self, request) -> list[np.ndarray]:
        pb = _pb()
        x = pb.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        name = f"{self.model_name} IMAGE"
        if self.raw:
            images = T.check_raw(x, name, self.max_pixels)
        else:
            images = T.decode_items(x, name, self.max_pixels)
        T.same_size(images, name)
        return images

    def responses_for(self, request, images, labels) -> object:
        """MASK [B,H,W] (+ OVERLAY [B,1] PNG bytes when requested) for one request."""
        pb = _pb()
        tensors = [pb.Tensor("MASK", np.stack(labels))]
        if "OVERLAY" in request.requested_output_names():
            pngs = [T.overlay_png(im, lab, self.spec.palette, self.alpha) for im, lab in zip(images, labels)]
            tensors.append(pb.Tensor("OVERLAY", np.array(pngs, dtype=object).reshape(-1, 1)))
        return pb.InferenceResponse(output_tensors=tensors)


class SegmentBLS(_Images):
    """`ganseg_segment` / `ganseg_segment_raw`: the whole pipeline in one model; the UNet is called
    through BLS once per dynamic batch (so GPU servers can swap `ganseg_unet` for an ORT/TensorRT
    model without touching this code)."""

    def more_setup(self, args: dict) -> None:
        self.unet_model = self.params.get("unet_model", "ganseg_unet")
        self.unet_max_batch = max(1, int(self.params.get("unet_max_batch", "8")))

    def _unet(self, x: np.ndarray) -> np.ndarray:
        pb = _pb()
        outs = []
        for i in range(0, len(x), self.unet_max_batch):
            req = pb.InferenceRequest(model_name=self.unet_model, requested_output_names=["logits"],
                                      inputs=[pb.Tensor("image", x[i:i + self.unet_max_batch])])
            resp = req.exec()
            if resp.has_error():
                raise RuntimeError(f"{self.unet_model}: {resp.error().message()}")
            outs.append(pb.get_output_tensor_by_name(resp, "logits").as_numpy())
        return np.concatenate(outs)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        good: list[tuple[int, list[np.ndarray]]] = []
        for i, r in enumerate(requests):
            try:
                good.append((i, self.read_images(r)))
            except UserError as exc:
                responses[i] = _error(str(exc))
            except Exception:  # noqa: BLE001 - one request's failure must not fail the batch
                responses[i] = _error(f"{self.model_name}: cannot read IMAGE ({_log_bug('read')})", invalid_arg=False)
        if good:
            try:
                flat = [im for _, ims in good for im in ims]
                x = T.normalize(T.to_input_batch(flat, self.spec.input_size))
                labels = T.argmax_labels(self._unet(x))
                start = 0
                for i, ims in good:
                    labs = T.labels_to_sizes(labels[start:start + len(ims)], [im.shape[:2] for im in ims])
                    start += len(ims)
                    responses[i] = self.responses_for(requests[i], ims, labs)
            except Exception:  # noqa: BLE001 - answer every request even on a bug; logged with traceback
                msg = _log_bug(f"{self.model_name} execute")
                for i, _ in good:
                    if responses[i] is None:
                        responses[i] = _error(f"{self.model_name}: segmentation failed ({msg})", invalid_arg=False)
        return responses


class Preprocess(_Images):
    """Ensemble step 1: IMAGE -> `image` FP32 [B,3,S,S] + `original` UINT8 [B,H,W,3]."""

    def execute(self, requests):
        pb = _pb()
        out = []
        for r in requests:
            try:
                images = self.read_images(r)
                x = T.normalize(T.to_input_batch(images, self.spec.input_size))
                out.append(pb.InferenceResponse(output_tensors=[pb.Tensor("image", x),
                                                                pb.Tensor("original", np.stack(images))]))
            except UserError as exc:
                out.append(_error(str(exc)))
            except Exception:  # noqa: BLE001
                out.append(_error(f"{self.model_name}: preprocessing failed ({_log_bug('pre')})", invalid_arg=False))
        return out


class Postprocess(_Images):
    """Ensemble step 3: `logits` + `original` -> MASK (+ OVERLAY)."""

    def execute(self, requests):
        pb = _pb()
        out = []
        for r in requests:
            try:
                logits = pb.get_input_tensor_by_name(r, "logits").as_numpy()
                images = list(pb.get_input_tensor_by_name(r, "original").as_numpy())
                labels = T.labels_to_sizes(T.argmax_labels(logits), [im.shape[:2] for im in images])
                out.append(self.responses_for(r, images, labels))
            except Exception:  # noqa: BLE001
                out.append(_error(f"{self.model_name}: postprocessing failed ({_log_bug('post')})", invalid_arg=False))
        return out
