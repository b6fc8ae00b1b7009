"""Procedural face-like portraits with exact part label maps: ganseg's stand-in "real photo" domain.

Why this exists: the ReGAN recipe needs (a) a pool of real images to train a StyleGAN2 on and
(b) a labelled test split to score one-shot segmenters on. No pretrained face GAN or labelled
face photos are available offline, so ganseg renders its own domain. Because the renderer knows
every shape it draws, the label maps are *exact* for what is visible, not hand annotations.

Class order (index = pixel value in label maps; ReGAN's CelebAMask-HQ-10 order; the mask files
themselves, PALETTE and labels.json are ganseg.labels' format)::

    0 background  1 skin  2 hair  3 eyebrow  4 eye  5 mouth  6 nose  7 ear  8 neck  9 cloth

Split seed ranges (half-open ``[start, stop)``; image ``i`` of a split is seed ``start + i``)::

    train  [        0, 1_000_000)
    val    [1_000_000, 1_010_000)
    test   [2_000_000, 2_010_000)

The ranges are disjoint with a gap, so no test face is ever seen in GAN or segmenter training.

How an image is made (all per-pixel work is vectorised over a batch in numpy; only the few
dozen shape parameters per face are drawn in a per-seed Python loop):

* every part is a signed-distance field (negative inside) in head-local coordinates, so the
  image gets a soft anti-aliased edge (coverage ``clip(0.5 - d * px_per_unit, 0, 1)``) while the
  label is hard: a pixel takes the class of the topmost layer whose region contains its centre.
  Image and labels are painted in the same painter's order, so labels match what is drawn;
* painter's order: background, cloth, long hair behind the head, neck (behind cloth), ears,
  face skin, nose, mouth, eyes, eyebrows, hair in front (cap, bangs, locks over the ears);
* colour alone must not segment the image (tests guard a colour-only classifier at <= 35% mIoU):
  background and cloth colours are drawn partly from the skin and hair colour ranges, backgrounds
  carry gradients, stripes, blobs, rectangles and noise, the face is lit from a random direction,
  and a global white-balance/exposure change, blur and sensor noise are applied last (image only).

Determinism: each face depends only on its seed (and the config and resolution), never on which
batch, chunk or thread it is rendered in, so a split is reproducible image by image. Shape
parameters live in normalised units, so a seed draws the same face at every resolution. Bytes
are reproducible on one machine; another CPU may round a few pixels differently (numpy's SIMD
maths and BLAS kernels are CPU-specific).

Speed: ~100+ images/s at 128 px on 2 CPU cores; batches are split into chunks that run on one
thread per CPU (set GANSEG_RENDER_THREADS to override).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

# The renderer draws in the mask format's default classes; label files are ganseg.labels' business.
from ganseg.labels import CLASS_NAMES, PALETTE

__all__ = [
    "CLASS_NAMES",
    "PALETTE",
    "SPLITS",
    "FaceRenderConfig",
    "render_faces",
    "split_seeds",
]

BACKGROUND, SKIN, HAIR, EYEBROW, EYE, MOUTH, NOSE, EAR, NECK, CLOTH = range(10)  # = CLASS_NAMES order

SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 1_010_000),
    "test": (2_000_000, 2_010_000),
}

_F = np.float32


@dataclass(frozen=True)
class FaceRenderConfig:
    """Rendering knobs. Defaults are the ganseg domain; change them only for ablations.

    resolution: output side in pixels (square), 64..512.
    blur_max: largest per-image Gaussian blur sigma, in pixels at 128 px (scaled with resolution);
        each image draws its sigma uniformly from [0, blur_max] (camera focus / resampling).
    noise_max: largest per-image sensor-noise std as a fraction of full scale.
    light_max: largest strength of the directional light gradient across face and hair.
    exposure_jitter: half-range of the global exposure multiplier around 1.
    tint_jitter: half-range of the per-channel white-balance multiplier around 1.
    antialias: soft edges in the image (labels are always hard); off only for debugging.
    """

    resolution: int = 128
    blur_max: float = 1.0
    noise_max: float = 0.035
    light_max: float = 0.45
    exposure_jitter: float = 0.3
    tint_jitter: float = 0.12
    antialias: bool = True

    def __post_init__(self) -> None:
        if not 64 <= int(self.resolution) <= 512:
            raise ValueError(f"resolution must be in 64..512, got {self.resolution}")
        for name in ("blur_max", "noise_max", "light_max", "exposure_jitter", "tint_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------------
# Colour distributions. They overlap on purpose (background/cloth borrow skin and hair colours).
# --------------------------------------------------------------------------------------------
_SKIN_RAMP = np.array(
    [
        [0.97, 0.84, 0.74],
        [0.92, 0.72, 0.60],
        [0.80, 0.58, 0.44],
        [0.62, 0.42, 0.30],
        [0.44, 0.29, 0.20],
        [0.28, 0.18, 0.13],
    ]
)
_HAIR_COLOURS = np.array(
    [
        [0.05, 0.045, 0.045],  # black
        [0.16, 0.10, 0.07],  # dark brown
        [0.32, 0.21, 0.13],  # brown
        [0.48, 0.24, 0.12],  # auburn
        [0.72, 0.56, 0.34],  # dark blond
        [0.88, 0.78, 0.56],  # blond
        [0.52, 0.50, 0.48],  # grey
        [0.84, 0.83, 0.80],  # white
    ]
)
_HAIR_P = np.array([0.22, 0.2, 0.16, 0.08, 0.1, 0.1, 0.08, 0.06])  # dyed hair is drawn before this
_IRIS_COLOURS = np.array(
    [[0.25, 0.14, 0.07], [0.12, 0.07, 0.04], [0.30, 0.45, 0.62], [0.33, 0.45, 0.25], [0.45, 0.35, 0.18]]
)


class _Rand:
    """Scalar draws from pre-drawn buffers of a per-seed Generator.

    Calling Generator.uniform once per parameter costs ~2 us each, which made parameter
    sampling a visible share of render time; buffered draws cost a fraction of that.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._u = rng.random(256).tolist()
        self._n = rng.standard_normal(64).tolist()
        self._iu = 0
        self._in = 0

    def random(self) -> float:
        if self._iu == len(self._u):
            self._u, self._iu = self.rng.random(256).tolist(), 0
        self._iu += 1
        return self._u[self._iu - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def uniform3(self, lo: float, hi: float) -> np.ndarray:
        return np.array([self.uniform(lo, hi) for _ in range(3)])

    def normal(self, mu: float, sd: float) -> float:
        if self._in == len(self._n):
            self._n, self._in = self.rng.standard_normal(64).tolist(), 0
        self._in += 1
        return mu + sd * self._n[self._in - 1]

    def normal3(self, mu: float, sd: float) -> np.ndarray:
        return np.array([self.normal(mu, sd) for _ in range(3)])

    def index(self, cum_p: np.ndarray) -> int:
        """Index drawn with probabilities whose cumulative sum is cum_p (last entry 1)."""
        return min(int(np.searchsorted(cum_p, self.random(), side="right")), len(cum_p) - 1)


def _skin_colour(r: _Rand) -> np.ndarray:
    t = r.random() * (len(_SKIN_RAMP) - 1)
    i = min(int(t), len(_SKIN_RAMP) - 2)
    c = _SKIN_RAMP[i] + (t - i) * (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i])
    c = c * r.uniform(0.92, 1.06) + r.normal3(0.0, 0.025)
    c[0] += r.uniform(-0.02, 0.05)  # redness
    return np.clip(c, 0.02, 1.0)


_HAIR_CUM = np.cumsum(_HAIR_P)


def _hair_colour(r: _Rand) -> np.ndarray:
    if r.random() < 0.06:  # dyed
        c = r.uniform3(0.05, 0.95)
    else:
        c = _HAIR_COLOURS[r.index(_HAIR_CUM)]
        c = c * r.uniform(0.85, 1.15) + r.normal3(0.0, 0.025)
    return np.clip(c, 0.02, 1.0)


def _scene_colour(r: _Rand) -> np.ndarray:
    """A background or clothing colour, often borrowed from the skin/hair ranges on purpose."""
    k = r.random()
    if k < 0.3:
        c = _skin_colour(r) * r.uniform(0.8, 1.15)
    elif k < 0.55:
        c = _hair_colour(r) * r.uniform(0.8, 1.2)
    elif k < 0.7:
        c = np.full(3, r.uniform(0.05, 0.95)) + r.normal3(0.0, 0.03)
    else:
        c = r.uniform3(0.0, 1.0)
    return np.clip(c, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Per-seed parameters.
# --------------------------------------------------------------------------------------------
# Value-noise grid sizes (control points across the image); fixed so batches stack.
_G_BG1, _G_BG2, _G_BLOB, _G_SKIN, _G_HAIR, _G_CLOTH, _G_EDGE = 5, 12, 6, 8, 20, 7, 10


def _sample_params(seed: int, cfg: FaceRenderConfig) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All random choices of one face, drawn from its own generator so batches never interact.

    Returns scalar parameters (floats, head-local units where the face half-height is ~0.43) and
    value-noise control grids. Draw order is fixed: the per-part samplers below run in this order
    and each draws in a fixed order; changing either changes every image (tests/test_house.py).
    """
    rng = np.random.default_rng([int(seed), 0x6A5E9])
    r = _Rand(rng)
    p: dict[str, float] = {}
    cols: dict[str, np.ndarray] = {}
    _sample_pose(r, p)
    _sample_face_shape(r, p)
    _sample_eyes(r, p)
    _sample_eyebrows(r, p)
    _sample_nose(r, p)
    _sample_mouth(r, p)
    _sample_ears(r, p)
    _sample_clothes(r, p)
    _sample_hair(r, p)
    _sample_light(r, p, cfg)
    _sample_colours(r, p, cols)
    _sample_background(r, p, cols)
    _sample_camera(r, p, cols, cfg)
    grids = _sample_grids(rng)
    for name, c in cols.items():
        for ch in range(3):
            p[f"c_{name}{ch}"] = float(c[ch])
    # sensor-noise seed, drawn last: the pixel noise itself is made at render resolution
    p["noise_seed"] = float(rng.integers(0, 2**31 - 1))
    return p, grids


def _sample_pose(r: _Rand, p: dict[str, float]) -> None:
    """Head centre (image coords in [-1, 1]), scale, roll, yaw-like asymmetry."""
    u = r.uniform
    p["s"] = u(1.2, 1.75)
    p["cx"] = u(-0.15, 0.15)
    p["cy"] = u(-0.14, 0.06)
    p["roll"] = float(np.clip(r.normal(0.0, 0.12), -0.3, 0.3))
    p["yaw"] = u(-0.45, 0.45)


def _sample_face_shape(r: _Rand, p: dict[str, float]) -> None:
    u = r.uniform
    p["a"] = u(0.29, 0.36)  # half width
    p["b"] = u(0.40, 0.47)  # half height
    p["jaw"] = u(0.0, 0.35)  # lower-face narrowing
    p["jaw_p"] = u(1.8, 3.2)  # lower-face superellipse exponent (square jaw when large)


def _sample_eyes(r: _Rand, p: dict[str, float]) -> None:
    u = r.uniform
    p["ey"] = -p["b"] * u(0.0, 0.14)
    p["ex"] = p["a"] * u(0.36, 0.46)
    p["ew"] = p["a"] * u(0.17, 0.23)
    p["eh"] = p["ew"] * (u(0.12, 0.22) if r.random() < 0.1 else u(0.32, 0.5))
    p["eye_tilt"] = u(-0.15, 0.2)
    p["gaze"] = u(-0.35, 0.35)
    p["iris_r"] = u(0.5, 0.68)  # x ew


def _sample_eyebrows(r: _Rand, p: dict[str, float]) -> None:
    u = r.uniform
    p["brow_gap"] = p["b"] * u(0.06, 0.13)
    p["brow_w"] = u(1.05, 1.4)  # x ew
    p["brow_th"] = p["b"] * u(0.022, 0.05)
    p["brow_arch"] = p["b"] * u(0.0, 0.07)
    p["brow_slope"] = p["b"] * u(-0.03, 0.04)


def _sample_nose(r: _Rand, p: dict[str, float]) -> None:
    u = r.uniform
    p["nose_ty"] = p["b"] * u(0.16, 0.3)
    p["nose_w"] = p["a"] * u(0.13, 0.2)
    p["nose_bw"] = p["a"] * u(0.05, 0.09)
    p["nose_h"] = p["b"] * u(0.05, 0.085)


def _sample_mouth(r: _Rand, p: dict[str, float]) -> None:
    u = r.uniform
    p["my"] = p["b"] * u(0.5, 0.64)
    p["mw"] = p["a"] * u(0.27, 0.42)
    p["ul"] = p["b"] * u(0.035, 0.07)
    p["ll"] = p["b"] * u(0.045, 0.09)
    p["mo"] = p["b"] * (u(0.02, 0.11) if r.random() < 0.45 else 0.0)  # half opening
    p["teeth"] = float(r.random() < 0.6)
    p["smile"] = u(-0.2, 0.8)
    p["cupid"] = u(0.0, 1.0)


def _sample_ears(r: _Rand, p: dict[str, float]) -> None:
    u = r.uniform
    p["ear_x"] = u(0.95, 1.02)
    p["ear_y"] = p["b"] * u(0.04, 0.14)
    p["ear_rx"] = p["a"] * u(0.12, 0.18)
    p["ear_ry"] = p["b"] * u(0.17, 0.24)


def _sample_clothes(r: _Rand, p: dict[str, float]) -> None:
    """Neck width and the torso (which is not rolled with the head), neckline, collar, stripes."""
    u = r.uniform
    p["neck_w"] = p["a"] * u(0.42, 0.6)
    p["sh_y0"] = p["b"] * u(0.95, 1.3)
    p["sh_rx"] = u(0.95, 1.5)
    p["sh_ry"] = u(0.25, 0.5)
    p["sh_p"] = u(2.0, 4.0)
    p["sh_dx"] = u(-0.08, 0.08)
    k = r.random()
    p["neckline"] = 0.0 if k < 0.5 else (1.0 if k < 0.8 else 2.0)  # round, V, high collar
    p["nl_w"] = p["a"] * u(0.55, 1.1)
    p["nl_d"] = p["b"] * u(0.15, 0.7)
    p["collar"] = float(r.random() < 0.35)
    p["collar_w"] = p["b"] * u(0.05, 0.12)
    p["stripes"] = float(r.random() < 0.3)
    p["stripe_f"] = u(8.0, 30.0)
    p["stripe_ang"] = u(0.0, np.pi)


def _sample_hair(r: _Rand, p: dict[str, float]) -> None:
    """Style (bald / long / bangs / ears covered), outline, hairline, long-hair curtain, strands."""
    u = r.uniform
    style = r.random()
    bald = style < 0.07
    p["bald"] = float(bald)
    p["long"] = float((not bald) and r.random() < 0.42)
    p["ho_x"] = u(1.05, 1.35)
    p["ho_y"] = u(1.02, 1.2)
    p["ho_c"] = u(0.04, 0.16)
    p["ho_amp"] = u(0.0, 0.06)
    bangs = (not bald) and r.random() < 0.3
    p["bangs_amp"] = p["b"] * u(0.02, 0.1) if bangs else 0.0
    p["bangs_f"] = u(6.0, 18.0)
    hl_brow = p["ey"] - p["eh"] * 1.1 - p["brow_gap"]  # brow line (y, head units)
    p["hairline"] = hl_brow - p["b"] * u(0.0, 0.12) if bangs else -p["b"] * u(0.38, 0.62)
    p["hl_curv"] = p["b"] * u(0.05, 0.35) if not bangs else p["b"] * u(0.0, 0.12)
    p["hl_tilt"] = p["b"] * u(-0.12, 0.12)
    cover_ears = (not bald) and r.random() < (0.55 if p["long"] else 0.15)
    p["side_y"] = (
        p["b"] * u(0.35, 0.8) if cover_ears else p["ey"] + p["b"] * u(-0.1, 0.05)
    )
    p["long_y"] = p["b"] * u(0.9, 2.3)
    p["long_w"] = u(1.1, 1.45)
    p["long_flare"] = u(0.0, 0.25)
    p["long_jag"] = p["b"] * u(0.0, 0.12)
    p["hair_strand_f"] = u(25.0, 70.0)
    p["hair_strand_a"] = u(0.04, 0.18)


def _sample_light(r: _Rand, p: dict[str, float], cfg: FaceRenderConfig) -> None:
    """Direction and strength of the light gradient (no strength draw when light_max is 0)."""
    u = r.uniform
    ang = u(0.0, 2 * np.pi)
    p["light"] = u(0.05, cfg.light_max) if cfg.light_max > 0 else 0.0
    p["lx"], p["ly"] = float(np.cos(ang)), float(np.sin(ang))


def _sample_colours(r: _Rand, p: dict[str, float], cols: dict[str, np.ndarray]) -> None:
    """Skin, hair, brow, lip, eye, clothing and the four background colours."""
    u = r.uniform
    skin = _skin_colour(r)
    hair = _hair_colour(r)
    cols["skin"] = skin
    cols["hair"] = hair
    cols["brow"] = np.clip(hair * u(0.45, 0.95) + r.normal3(0.0, 0.02), 0.02, 1)
    lip = skin * u(0.65, 0.9) * np.array([1.06, 0.8, 0.82])
    if r.random() < 0.15:  # lipstick
        lip = np.array([u(0.45, 0.9), u(0.05, 0.3), u(0.1, 0.35)])
    cols["lip"] = np.clip(lip, 0.02, 1)
    cols["sclera"] = np.clip(np.array([0.9, 0.87, 0.85]) * u(0.8, 1.05), 0, 1)
    k_iris = min(int(r.random() * len(_IRIS_COLOURS)), len(_IRIS_COLOURS) - 1)
    iris = _IRIS_COLOURS[k_iris] * u(0.8, 1.2)
    cols["iris"] = np.clip(iris, 0, 1)
    cols["cloth"] = _scene_colour(r)
    cols["cloth2"] = _scene_colour(r)
    cols["collar"] = _scene_colour(r) if r.random() < 0.6 else np.full(3, u(0.8, 0.97))
    for i in range(4):
        cols[f"bg{i}"] = _scene_colour(r)


def _sample_background(r: _Rand, p: dict[str, float], cols: dict[str, np.ndarray]) -> None:
    """Gradient, texture, blob and stripe strengths, and two optional rectangles."""
    u = r.uniform
    p["bg_ang"] = u(0.0, 2 * np.pi)
    p["bg_grad"] = u(0.0, 0.8)
    p["bg_noise"] = u(0.0, 0.25)
    p["bg_blob"] = float(r.random() < 0.5)
    p["bg_blob_t"] = u(-0.2, 0.3)
    p["bg_stripes"] = float(r.random() < 0.3)
    p["bg_stripe_f"] = u(4.0, 25.0)
    p["bg_stripe_ang"] = u(0.0, np.pi)
    for i in range(2):
        on = r.random() < 0.45
        p[f"rect{i}_on"] = float(on)
        p[f"rect{i}_x"] = u(-1, 1)
        p[f"rect{i}_y"] = u(-1, 1)
        p[f"rect{i}_w"] = u(0.05, 0.6)
        p[f"rect{i}_h"] = u(0.05, 0.8)
        cols[f"rect{i}"] = _scene_colour(r)


def _sample_camera(r: _Rand, p: dict[str, float], cols: dict[str, np.ndarray], cfg: FaceRenderConfig) -> None:
    """Exposure, white balance (a colour), vignette, blur sigma and noise level."""
    u = r.uniform
    p["exposure"] = u(1 - cfg.exposure_jitter, 1 + cfg.exposure_jitter)
    tint = 1.0 + r.uniform3(-cfg.tint_jitter, cfg.tint_jitter)
    cols["tint"] = tint
    p["vignette"] = u(0.0, 0.35)
    p["blur"] = u(0.0, cfg.blur_max)
    p["noise"] = u(0.004, max(cfg.noise_max, 0.004))


def _sample_grids(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Value-noise control grids, drawn straight from the generator after the buffered scalars."""
    return {
        "bg1": rng.uniform(-1, 1, (3, _G_BG1, _G_BG1)),
        "bg2": rng.uniform(-1, 1, (3, _G_BG2, _G_BG2)),
        "blob": rng.uniform(-1, 1, (1, _G_BLOB, _G_BLOB)),
        "skin": rng.uniform(-1, 1, (1, _G_SKIN, _G_SKIN)),
        "hair": rng.uniform(-1, 1, (1, _G_HAIR, _G_HAIR)),
        "cloth": rng.uniform(-1, 1, (1, _G_CLOTH, _G_CLOTH)),
        "edge": rng.uniform(-1, 1, (1, _G_EDGE, _G_EDGE)),
    }


# --------------------------------------------------------------------------------------------
# Rendering helpers (all operate on whole batches).
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _interp_matrix(g: int, n: int) -> np.ndarray:
    """[n, g] smoothstep-interpolation weights: value noise at n pixels from g control points."""
    t = (np.arange(n) + 0.5) / n * (g - 1)
    i0 = np.minimum(np.floor(t).astype(np.intp), g - 2)
    f = t - i0
    w = f * f * (3 - 2 * f)
    m = np.zeros((n, g), dtype=_F)
    m[np.arange(n), i0] = 1 - w
    m[np.arange(n), i0 + 1] = w
    return m


def _value_noise(grid: np.ndarray, n: int) -> np.ndarray:
    """[N, C, g, g] control grids -> [N, C, n, n] smooth noise in about [-1, 1].

    Two small matmuls per image (25x faster than gathers); numpy runs one GEMM per image with
    the same shapes whatever the batch, so results do not depend on batching (tested).
    """
    r = _interp_matrix(grid.shape[-1], n)
    return np.matmul(np.matmul(r, grid), r.T)


@lru_cache(maxsize=8)
def _pixel_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1).astype(_F)
    return c[None, None, :], c[None, :, None]  # u (x, columns), v (y, rows)


def _ellipse_d(x: np.ndarray, y: np.ndarray, rx, ry) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (exact on the short axis)."""
    q = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    return (q - 1.0) * np.minimum(rx, ry)


def _blur(img: np.ndarray, sigmas: np.ndarray, radius: int) -> np.ndarray:
    """Separable Gaussian blur of [N, C, H, W] with one sigma per image and clamped edges.

    Shift-and-add over 2 * radius + 1 taps keeps the per-image sigma vectorised over the batch.
    """
    k = np.arange(-radius, radius + 1)
    sig = np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-3)[:, None]
    w = np.exp(-(k[None, :] ** 2) / (2 * sig**2))
    w = (w / w.sum(axis=1, keepdims=True)).astype(_F)  # [N, K]
    h, wd = img.shape[-2:]
    pad = np.pad(img, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
    out = w[:, 0, None, None, None] * pad[..., 0:h, :]
    for j in range(1, len(k)):
        out += w[:, j, None, None, None] * pad[..., j : j + h, :]
    pad = np.pad(out, ((0, 0), (0, 0), (0, 0), (radius, radius)), mode="edge")
    out = w[:, 0, None, None, None] * pad[..., 0:wd]
    for j in range(1, len(k)):
        out += w[:, j, None, None, None] * pad[..., j : j + wd]
    return out


class _Painter:
    """Composites layers (signed distance + colour) into an image and a hard label map.

    A layer covers a pixel's centre iff d < 0, which is exactly where its anti-aliased
    coverage exceeds 1/2, so the label of each pixel is the topmost layer that dominates it.
    """

    def __init__(self, img: np.ndarray, ppu: np.ndarray, antialias: bool) -> None:
        self.img = img  # [N, 3, H, W] float32, channel-first so broadcasting stays contiguous
        self.lab = np.zeros((img.shape[0],) + img.shape[2:], dtype=np.uint8)
        self.ppu = ppu  # [N, 1, 1] pixels per head-local unit
        self.antialias = antialias

    def alpha(self, d: np.ndarray) -> np.ndarray:
        if self.antialias:
            return np.clip(0.5 - d * self.ppu, 0.0, 1.0)
        return (d < 0).astype(_F)

    def paint(self, d: np.ndarray, colour: np.ndarray, cls: int) -> None:
        a = self.alpha(d)[:, None]
        self.img += a * (colour - self.img)
        np.putmask(self.lab, d < 0, np.uint8(cls))


def _col(P: dict[str, np.ndarray], name: str) -> np.ndarray:
    """[N, 3, 1, 1] colour from per-image params."""
    return np.stack([P[f"c_{name}{i}"] for i in range(3)], axis=1)


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _sensor_noise(seed: int, n: int) -> np.ndarray:
    """[3, n, n] standard-normal pixel noise from the face's own noise seed."""
    return np.random.default_rng(seed).standard_normal((3, n, n), dtype=_F)


def _blob(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    """Smooth elliptical bump (1 at the centre, 0 outside) for shading details."""
    return _smooth(1.0 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2)


def _pick(mask: np.ndarray, a, b):
    """Elementwise ``mask ? a : b`` as arithmetic (np.where is ~10x slower here)."""
    return b + mask * (a - b)


_OFF = _F(1e3)  # distance that puts a switched-off layer far outside every pixel


@dataclass
class _Frame:
    """Per-batch parameters and the coordinate fields every part is drawn in.

    P holds [N, 1, 1] parameter arrays, G [N, C, g, g] noise grids. x, y are head-local (rolled
    with the head), xt, yt torso-local (upright); all are [N, R, R]. ppu is pixels per head unit.
    """

    P: dict[str, np.ndarray]
    G: dict[str, np.ndarray]
    R: int
    u: np.ndarray
    v: np.ndarray
    x: np.ndarray
    y: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    ppu: np.ndarray
    a: np.ndarray
    b: np.ndarray
    yaw: np.ndarray
    fx: np.ndarray  # horizontal shift of the facial features
    light: np.ndarray  # directional light gradient (a multiplier), head-local


def _frame(params: list[dict[str, float]], grids: list[dict[str, np.ndarray]], R: int) -> _Frame:
    n = len(params)
    P = {k: np.array([p[k] for p in params], dtype=_F).reshape(n, 1, 1) for k in params[0]}
    G = {k: np.stack([g[k] for g in grids]).astype(_F) for k in grids[0]}
    u, v = _pixel_grid(R)
    s = P["s"]
    dx, dy = u - P["cx"], v - P["cy"]
    cr, sr = np.cos(P["roll"]), np.sin(P["roll"])
    x = (cr * dx + sr * dy) / s  # head-local, rolled with the head
    y = (-sr * dx + cr * dy) / s
    xt = dx / s - P["sh_dx"]  # torso-local, upright
    yt = dy / s
    ppu = (s * (R / 2.0)).astype(_F)
    a, b = P["a"], P["b"]
    yaw = P["yaw"]
    fx = yaw * a * 0.32
    # Light: a linear gradient in head-local coordinates.
    light = 1.0 + P["light"] * (P["lx"] * x / (a * 1.6) + P["ly"] * y / (b * 1.6))
    return _Frame(P, G, R, u, v, x, y, xt, yt, ppu, a, b, yaw, fx, light)


@dataclass
class _Hair:
    """Fields shared by the back and front hair layers."""

    colour: np.ndarray  # [N, 3, R, R]
    d_outer: np.ndarray  # outer silhouette, noisy edge
    edge_noise: np.ndarray


def _render_batch(
    params: list[dict[str, float]], grids: list[dict[str, np.ndarray]], cfg: FaceRenderConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a batch of faces, back to front (see the module docstring for the painter's order)."""
    f = _frame(params, grids, cfg.resolution)
    pt = _Painter(_background(f), f.ppu, cfg.antialias)
    d_cloth = _paint_cloth(f, pt)
    hair = _hair_fields(f)
    _paint_long_hair(f, pt, hair)
    skin_noise = _value_noise(f.G["skin"], f.R)[:, 0]
    _paint_neck(f, pt, d_cloth, skin_noise)
    _paint_ears(f, pt)
    d_face, rim = _paint_face(f, pt, skin_noise)
    _paint_nose(f, pt, d_face, rim)
    _paint_mouth(f, pt, d_face)
    xe, sgn, ewv = _paint_eyes(f, pt, d_face)
    _paint_eyebrows(f, pt, d_face, xe, sgn, ewv)
    _paint_front_hair(f, pt, hair, d_face)
    return _camera(f, pt.img, params, cfg), pt.lab


def _background(f: _Frame) -> np.ndarray:
    """[N, 3, R, R] float32: gradient, texture, blob, stripes and rectangles."""
    P, R, u, v = f.P, f.R, f.u, f.v
    tex = 0.6 * _value_noise(f.G["bg1"], R) + 0.4 * _value_noise(f.G["bg2"], R)  # [N, 3, R, R]
    t = _smooth(0.5 + P["bg_grad"] * (u * np.cos(P["bg_ang"]) + v * np.sin(P["bg_ang"])))
    img = _col(P, "bg0") + t[:, None] * (_col(P, "bg1") - _col(P, "bg0"))
    img = img + P["bg_noise"][:, None] * tex
    blob = _value_noise(f.G["blob"], R)[:, 0]
    ba = _smooth((blob - P["bg_blob_t"]) * 6.0) * P["bg_blob"]
    img = img + ba[:, None] * (_col(P, "bg2") - img)
    st = np.sin(P["bg_stripe_f"] * (u * np.cos(P["bg_stripe_ang"]) + v * np.sin(P["bg_stripe_ang"])))
    sa = _smooth(st * 3.0 + 0.5) * P["bg_stripes"]
    img = img + sa[:, None] * (_col(P, "bg3") - img)
    for i in range(2):
        dr = np.maximum(
            np.abs(u - P[f"rect{i}_x"]) - P[f"rect{i}_w"], np.abs(v - P[f"rect{i}_y"]) - P[f"rect{i}_h"]
        )
        ra = np.clip(0.5 - dr * (R / 2.0), 0.0, 1.0) * P[f"rect{i}_on"]
        img = img + ra[:, None] * (_col(P, f"rect{i}") - img)
    return np.ascontiguousarray(img, dtype=_F)


def _paint_cloth(f: _Frame, pt: _Painter) -> np.ndarray:
    """Upright torso with a neckline cut, optional collar and stripes; returns its distance."""
    P, xt, yt, b, ppu = f.P, f.xt, f.yt, f.b, f.ppu
    X = np.abs(xt) / P["sh_rx"]
    Y = np.minimum(yt - (P["sh_y0"] + P["sh_ry"]), 0.0) / P["sh_ry"]
    pexp = P["sh_p"]
    q = (X**pexp + np.abs(Y) ** pexp) ** (1.0 / pexp)
    d_body = (q - 1.0) * P["sh_ry"]
    top = P["sh_y0"] - 0.05 * b
    d_round = _ellipse_d(xt, yt - top, P["nl_w"], P["nl_d"])
    v_depth = P["nl_d"] * 1.6
    d_v = (np.abs(xt) - P["nl_w"] * np.clip((top + v_depth - yt) / v_depth, 0, None)) * 0.8
    d_cut = _pick(P["neckline"] == 0, d_round, _pick(P["neckline"] == 1, d_v, _OFF))
    d_cloth = np.maximum(d_body, -d_cut)
    cn = _value_noise(f.G["cloth"], f.R)[:, 0]
    cshade = 1.0 + 0.12 * cn + 0.5 * P["light"] * P["lx"] * xt / 1.2
    sarg = P["stripe_f"] * (xt * np.cos(P["stripe_ang"]) + yt * np.sin(P["stripe_ang"]))
    sw = _smooth(np.sin(sarg) * 2.0 + 0.5) * P["stripes"]
    ccol = _col(P, "cloth") + sw[:, None] * (_col(P, "cloth2") - _col(P, "cloth"))
    collar = _smooth((P["collar_w"] - d_cut) * ppu * 0.7) * (P["collar"] * (P["neckline"] < 2))
    ccol = ccol + collar[:, None] * (_col(P, "collar") - ccol)
    pt.paint(d_cloth, ccol * cshade[:, None], CLOTH)
    return d_cloth


def _hair_fields(f: _Frame) -> _Hair:
    """Hair colour (strands fan out from above the crown, wavy by the hair noise) and outline."""
    P, x, y, a, b = f.P, f.x, f.y, f.a, f.b
    hn = _value_noise(f.G["hair"], f.R)[:, 0]
    fan = x / np.maximum(y + 1.7 * b, 0.1 * b)
    strands = np.sin(P["hair_strand_f"] * 0.6 * b * fan + 2.5 * hn)
    hshade = f.light * (1.0 + P["hair_strand_a"] * strands + 0.04 * hn)
    hcol = _col(P, "hair") * hshade[:, None]
    en = _value_noise(f.G["edge"], f.R)[:, 0]
    d_outer = _ellipse_d(x, y + P["ho_c"] * b, P["ho_x"] * a, P["ho_y"] * b) + P["ho_amp"] * en
    return _Hair(hcol, d_outer, en)


def _paint_long_hair(f: _Frame, pt: _Painter, hair: _Hair) -> None:
    """A curtain behind the head from head height down to long_y, widening downwards."""
    P, x, y, a = f.P, f.x, f.y, f.a
    w0 = 0.97 * P["ho_x"] * a
    wcol = w0 + (P["long_w"] * a - w0 + P["long_flare"] * a) * np.clip(y / P["long_y"], 0, 1)
    jag = P["long_jag"] * np.sin(x / a * 9.0 + 3.0 * hair.edge_noise)
    d_col = np.maximum(np.maximum(np.abs(x) - wcol, y - (P["long_y"] + jag)), -y)
    d_long = np.minimum(hair.d_outer, d_col) + (P["long"] <= 0) * _OFF
    pt.paint(d_long, hair.colour * 0.85, HAIR)


def _paint_neck(f: _Frame, pt: _Painter, d_cloth: np.ndarray, skin_noise: np.ndarray) -> None:
    """The neck, behind the clothes."""
    P, x, y, b = f.P, f.x, f.y, f.b
    nw = P["neck_w"] * (1.0 + 0.3 * np.clip((y - b) / b, 0, None))
    d_neck = np.maximum(np.abs(x - f.fx * 0.3) - nw, 0.2 * b - y)
    d_neck = np.maximum(d_neck, -d_cloth)
    nshade = f.light * (0.72 + 0.2 * _smooth((y - b * 0.95) / (0.35 * b))) * (1.0 + 0.03 * skin_noise)
    pt.paint(d_neck, _col(P, "skin") * nshade[:, None], NECK)


def _paint_ears(f: _Frame, pt: _Painter) -> None:
    """Both ears at once: left or right is chosen per pixel by the side of the head."""
    P, x, y, a, yaw = f.P, f.x, f.y, f.a, f.yaw
    right = x > 0
    ex_c = _pick(right, P["ear_x"] * a * (1.0 - 0.3 * yaw), -P["ear_x"] * a * (1.0 + 0.3 * yaw))
    erx = P["ear_rx"] * _pick(right, 1.0 - 0.8 * yaw, 1.0 + 0.8 * yaw)
    xe = x - ex_c
    ye = y - P["ear_y"]
    d_ear = _ellipse_d(xe, ye, erx, P["ear_ry"])
    side = right * 2.0 - 1.0
    inner = _ellipse_d(xe - side * erx * 0.15, ye + P["ear_ry"] * 0.05, erx * 0.5, P["ear_ry"] * 0.6)
    eshade = f.light * (0.9 - 0.25 * _smooth(-inner * f.ppu * 0.5))
    pt.paint(d_ear, _col(P, "skin") * eshade[:, None], EAR)


def _paint_face(f: _Frame, pt: _Painter, skin_noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper half an ellipse, lower half a superellipse with a jaw taper; returns (d_face, rim)."""
    P, x, y, a, b, fx = f.P, f.x, f.y, f.a, f.b, f.fx
    wy = 1.0 - P["jaw"] * np.clip(y / b, 0, 1) ** 2
    pf = _pick(y > 0, P["jaw_p"], _F(2.0))
    qf = ((np.abs(x) / (a * wy)) ** pf + (np.abs(y) / b) ** pf) ** (1.0 / pf)
    d_face = (qf - 1.0) * a
    rim = 1.0 - 0.22 * _smooth((qf - 0.7) / 0.3)
    fshade = f.light * rim * (1.0 + 0.035 * skin_noise)
    cheek = _blob(np.abs(x - fx), y, a * 0.5, b * 0.25, a * 0.25, b * 0.18)
    warm = np.array([1.0, -0.6, -0.6], dtype=_F).reshape(1, 3, 1, 1)
    # soft shadows cast by the nose and the lower lip (skin colour only; labels unaffected)
    nshadow = _blob(x, y, fx * 1.35, P["nose_ty"] + 1.4 * P["nose_h"], P["nose_w"], P["nose_h"])
    lip_low = P["my"] + P["mo"] + P["ll"] + 0.6 * P["nose_h"]
    lshadow = _blob(x, y, fx * 1.2, lip_low, 0.7 * P["mw"], P["nose_h"])
    fshade = fshade * (1.0 - 0.16 * nshadow - 0.1 * lshadow)
    fcol = _col(P, "skin") * fshade[:, None] * (1.0 + 0.06 * cheek[:, None] * warm)
    pt.paint(d_face, fcol, SKIN)
    return d_face, rim


def _paint_nose(f: _Frame, pt: _Painter, d_face: np.ndarray, rim: np.ndarray) -> None:
    """Bridge trapezoid + tip ellipse, side shading, nostrils; clipped to the face."""
    P, x, y, ppu = f.P, f.x, f.y, f.ppu
    nx = f.fx * 1.35
    ytop = P["ey"] + P["eh"] * 0.2
    ty = P["nose_ty"]
    frac = np.clip((y - ytop) / (ty - ytop), 0, 1)
    hw = P["nose_bw"] + (P["nose_w"] * 0.75 - P["nose_bw"]) * frac**2
    xn = x - nx
    d_tr = np.maximum(np.abs(xn) - hw, np.maximum(ytop - y, y - ty))
    d_tip = _ellipse_d(xn, y - ty, P["nose_w"], P["nose_h"])
    d_nose = np.maximum(np.minimum(d_tr, d_tip), d_face)  # features stay on the face
    side_l = np.tanh(2.0 * xn / P["nose_w"]) * P["lx"]
    edge = _smooth(1.0 + d_nose * ppu / 3.0)  # darker rim inside the nose outline
    nw_, nh_ = P["nose_w"], P["nose_h"]
    nost = _ellipse_d(np.abs(xn) - nw_ * 0.45, y - ty - nh_ * 0.35, nw_ * 0.24, nh_ * 0.4)
    nshade = f.light * rim * (0.95 + 0.22 * side_l - 0.12 * edge) * (1.0 - 0.6 * _smooth(0.5 - nost * ppu))
    tip = _blob(xn, y, -P["lx"] * nw_ * 0.3, ty - nh_ * 0.3, nw_ * 0.35, nw_ * 0.35)
    nshade = nshade + 0.1 * tip
    pt.paint(d_nose, _col(P, "skin") * nshade[:, None], NOSE)


def _paint_mouth(f: _Frame, pt: _Painter, d_face: np.ndarray) -> None:
    """Lips, the dark inside and teeth, all labelled mouth."""
    P, x, y, light = f.P, f.x, f.y, f.light
    mx = f.fx * 1.2
    tm = (x - mx) / P["mw"]
    t2 = np.minimum(tm * tm, 1.0)
    ym = y - (P["my"] - P["smile"] * P["mw"] * 0.22 * t2)
    env = np.sqrt(1.0 - t2)
    cup = 1.0 - 0.3 * P["cupid"] * np.exp(-((tm / 0.16) ** 2))
    m_top = -(P["mo"] + P["ul"] * cup) * env
    m_bot = (P["mo"] + P["ll"]) * env
    d_mouth = np.maximum(np.maximum(m_top - ym, ym - m_bot), (np.abs(tm) - 1.0) * P["mw"] * 0.3)
    d_mouth = np.maximum(d_mouth, d_face)
    inner_h = P["mo"] * (1.0 - t2)
    d_in = np.abs(ym) - inner_h
    mshade = light * (1.0 + 0.12 * (ym > 0) - 0.1 * _smooth(-ym / P["ul"]))
    mcol = _col(P, "lip") * mshade[:, None]
    inside = np.array([0.16, 0.05, 0.05], dtype=_F).reshape(1, 3, 1, 1)
    ain = np.clip(0.5 - d_in * f.ppu, 0, 1) * (P["mo"] > 0)
    mcol = mcol + ain[:, None] * (inside - mcol)
    teeth = (ym < -inner_h + P["mo"] * 0.7) * ain * P["teeth"]
    white = np.array([0.88, 0.86, 0.8], dtype=_F).reshape(1, 3, 1, 1)
    mcol = mcol + teeth[:, None] * (white * light[:, None] - mcol)
    pt.paint(d_mouth, mcol, MOUTH)


def _paint_eyes(f: _Frame, pt: _Painter, d_face: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Almond eyes: sclera, iris, pupil, highlight, lash line. Returns the eye frame (xe, sgn, ewv)
    the eyebrows are drawn in: x from the nearer eye's centre, +1/-1 for the right/left eye, and
    the (foreshortened) eye half-width."""
    P, x, y, yaw, light, ppu, fx = f.P, f.x, f.y, f.yaw, f.light, f.ppu, f.fx
    e_right = x > fx
    exc = _pick(e_right, fx + P["ex"] * (1.0 - 0.35 * yaw), fx - P["ex"] * (1.0 + 0.35 * yaw))
    # the eye on the side the face turns away from is foreshortened
    ewv = P["ew"] * _pick(e_right, 1.0 - 0.6 * np.maximum(yaw, 0), 1.0 + 0.6 * np.minimum(yaw, 0))
    xe = x - exc
    sgn = e_right * 2.0 - 1.0
    ye = y - P["ey"] + P["eye_tilt"] * P["eh"] * (xe * sgn / ewv)
    te = np.minimum((xe / ewv) ** 2, 1.0)
    upper = ye < 0
    d_eye = _pick(upper, -ye - P["eh"] * 1.1 * (1.0 - te), ye - P["eh"] * 0.85 * (1.0 - te))
    d_eye = np.maximum(np.maximum(d_eye, (np.abs(xe) - ewv) * 0.3), d_face)
    ir = P["iris_r"] * P["ew"]
    gx = P["gaze"] * ewv
    r_i = np.sqrt((xe - gx) ** 2 + (ye + P["eh"] * 0.1) ** 2)
    ecol = _col(P, "sclera") * (light * (1.0 - 0.25 * _smooth(1.0 + d_eye / (P["eh"] * 0.5))))[:, None]
    ai = np.clip(0.5 - (r_i - ir) * ppu, 0, 1)
    ecol = ecol + ai[:, None] * (_col(P, "iris") * light[:, None] - ecol)
    ap = np.clip(0.5 - (r_i - ir * 0.42) * ppu, 0, 1)
    r_hl = np.sqrt((xe - gx + ir * 0.3) ** 2 + (ye + ir * 0.35) ** 2)
    hl = np.clip(0.5 - (r_hl - ir * 0.18) * ppu, 0, 1)
    lash = _smooth(1.0 + d_eye / (P["eh"] * 0.22 + 1.0 / ppu)) * upper
    ecol = ecol * ((1.0 - 0.85 * ap) * (1.0 - 0.8 * lash))[:, None]
    ecol = ecol + (0.8 * hl)[:, None] * (1.0 - ecol)
    pt.paint(d_eye, ecol, EYE)
    return xe, sgn, ewv


def _paint_eyebrows(f: _Frame, pt: _Painter, d_face: np.ndarray, xe: np.ndarray, sgn: np.ndarray,
                    ewv: np.ndarray) -> None:
    """Tapered arcs above the eyes, in the eyes' frame."""
    P, x, y = f.P, f.x, f.y
    xb = xe * sgn  # > 0 towards the outer end
    bw = P["brow_w"] * ewv
    tb = np.clip(xb / bw, -1.0, 1.0)
    yb0 = P["ey"] - P["eh"] * 1.1 - P["brow_gap"]
    ycurve = yb0 - P["brow_arch"] * (1.0 - tb * tb) - P["brow_slope"] * tb
    th = P["brow_th"] * (1.0 - 0.45 * ((tb + 1.0) * 0.5) ** 2)
    d_brow = np.maximum(np.maximum(np.abs(y - ycurve) - th, (np.abs(xb) - bw) * 0.5), d_face)
    bcol = _col(P, "brow") * (f.light * (1.0 + 0.15 * np.sin(x * 160.0 + y * 60.0)))[:, None]
    pt.paint(d_brow, bcol, EYEBROW)


def _paint_front_hair(f: _Frame, pt: _Painter, hair: _Hair, d_face: np.ndarray) -> None:
    """Hair in front of the face: cap above the hairline, bangs, locks over the ears."""
    P, x, y, a, b = f.P, f.x, f.y, f.a, f.b
    hline = P["hairline"] + P["hl_curv"] * (x / a) ** 2 + P["hl_tilt"] * x / a
    hline = hline + P["bangs_amp"] * np.abs(np.sin(P["bangs_f"] * x / a + 2.0 * hair.edge_noise))
    d_exposed = np.maximum(d_face, hline - y)
    side_y = P["side_y"] + 0.04 * b * hair.edge_noise
    d_front = np.maximum(np.maximum(hair.d_outer, -d_exposed), y - side_y) + (P["bald"] > 0) * _OFF
    pt.paint(d_front, hair.colour, HAIR)


def _camera(f: _Frame, img: np.ndarray, params: list[dict[str, float]], cfg: FaceRenderConfig) -> np.ndarray:
    """Exposure + white balance, vignette, blur, sensor noise -> uint8 [N, R, R, 3]."""
    P, R, u, v = f.P, f.R, f.u, f.v
    n = len(params)
    gain = P["exposure"] * (1.0 - P["vignette"] * 0.5 * (u * u + v * v))
    img = img * gain[:, None] * _col(P, "tint")
    if cfg.blur_max > 0:
        radius = max(1, int(np.ceil(3.0 * cfg.blur_max * R / 128.0)))
        img = _blur(img, P["blur"].reshape(n) * (R / 128.0), radius)
    noise = np.stack([_sensor_noise(int(q["noise_seed"]), R) for q in params])
    img = img + noise * P["noise"][:, None]
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(out)


def render_faces(
    seeds: Sequence[int], resolution: int = 128, config: FaceRenderConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render portraits and their exact part labels for the given seeds.

    Returns ``images`` uint8 [N, H, W, 3] and ``labels`` uint8 [N, H, W] (indices into
    CLASS_NAMES). The image for seed ``s`` is identical whatever batch it is rendered in, so
    datasets can be (re)made in any chunking. ``resolution`` is the output side; a ``config``
    must agree with it (or leave both at their defaults) so a config can never be silently
    overridden.
    """
    if config is None:
        config = FaceRenderConfig(resolution=int(resolution))
    elif int(config.resolution) != int(resolution):
        raise ValueError(
            f"resolution={resolution} disagrees with config.resolution={config.resolution}; "
            "pass the same value to both"
        )
    seeds = [int(s) for s in seeds]
    for s in seeds:
        if s < 0:
            raise ValueError(f"seeds must be >= 0, got {s}")
    R = int(config.resolution)
    images = np.empty((len(seeds), R, R, 3), dtype=np.uint8)
    labels = np.empty((len(seeds), R, R), dtype=np.uint8)
    if not seeds:
        return images, labels
    # Chunks bound the working set (~16 images at 128^2) and run on threads: numpy releases the
    # GIL inside its loops, and chunks never interact, so threading cannot change any image.
    chunk = max(1, (16 * 128 * 128) // (R * R))
    starts = list(range(0, len(seeds), chunk))

    def work(i: int) -> None:
        sampled = [_sample_params(s, config) for s in seeds[i : i + chunk]]
        im, lb = _render_batch([p for p, _ in sampled], [g for _, g in sampled], config)
        images[i : i + len(sampled)] = im
        labels[i : i + len(sampled)] = lb

    workers = min(len(starts), _num_threads())
    if workers <= 1:
        for i in starts:
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, starts))
    return images, labels


def _num_threads() -> int:
    """Render threads: the CPUs this process may use; env GANSEG_RENDER_THREADS overrides."""
    env = os.environ.get("GANSEG_RENDER_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def split_seeds(split: str, n: int) -> list[int]:
    """The first ``n`` seeds of a split, so every tool agrees which faces form train/val/test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    start, stop = SPLITS[split]
    if n < 0 or n > stop - start:
        raise ValueError(f"split {split!r} holds {stop - start} seeds; cannot take n={n}")
    return list(range(start, start + int(n)))
