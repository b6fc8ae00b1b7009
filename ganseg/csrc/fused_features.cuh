// Device (and host-emulatable) code of the fused feature kernels (contract: fused_features.h).
//
// Why it is written this way: no GPU runs in ganseg's CI, so the block-level code of both kernels
// (tile loads with the area-down reduction, the tap table, the epilogue, the online softmax) is one
// __host__ __device__ function per kernel, parameterized by an "executor": on the device it is the
// thread index, __syncthreads and the WMMA tensor-core fragments; in tests/csrc/fused_host_check.cu
// it is one serial "thread", a no-op barrier and a scalar GEMM over the same shared-memory tiles
// that emulates each warp's sub-tile, TF32 rounding (cvt.rna) and the 3xTF32 split included. Only
// the WMMA calls and the thread-to-element interleaving are not exercised on the CPU.
//
// Block tile: kBM output channels x kBN pixels (a contiguous range of flat pixel indices, so
// feature reads and output writes coalesce), channel chunks of kBK; 8 warps, 4 (channels) x 2
// (pixels), each 32 x 32 = 2 x 2 WMMA 16 x 16 accumulators. K > kBM: the block loops over K tiles
// (the pixel tile's features are then re-read from L2, not HBM). Warps whose 32 rows lie beyond K
// skip their MMAs (a K = 10 linear head costs 1/4 of a K = 128 tile, not all of it).
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fused_features.h"
#include "resample_accumulate.cuh"

#ifdef __CUDA_ARCH__
#include <mma.h>
#endif

namespace ganseg {
namespace fused {

constexpr int kBM = 128;
constexpr int kBN = 64;
constexpr int kBK = 32;
constexpr int kThreads = 256;
constexpr int kWarpsN = 2;
constexpr int kWM = 32;  // warp tile (rows = output channels)
constexpr int kWN = 32;  // warp tile (columns = pixels)
constexpr int kLdC = kBN + 4;  // staging row pitch (floats): fragment pointers stay 32-byte aligned

// shared-memory row pitches in elements: 16 bytes of padding against bank conflicts, and every
// 16-row / 16-column (8 for TF32) fragment origin 32-byte aligned as WMMA requires
template <typename T> struct Pitch {
    static constexpr int kPad = sizeof(T) == 4 ? 4 : 8;
    static constexpr int kA = kBK + kPad;
    static constexpr int kB = kBN + kPad;
};

// The bilinear taps of one (up group, tile pixel): offset of the top-left source texel in the
// group's r x r map, plus bit 30 = "a right neighbour exists" (i1 = i0 + 1), bit 31 = "a lower one".
struct Tap {
    uint32_t off;
    float wx, wy;
};
constexpr uint32_t kTapRight = 1u << 30;
constexpr uint32_t kTapDown = 1u << 31;
constexpr uint32_t kTapOffset = kTapRight - 1u;

template <typename T>
struct alignas(32) Smem {
    union {
        struct {
            T a[kBM * Pitch<T>::kA];   // weight chunk  [kBM][kBK] row-major
            T b[kBK * Pitch<T>::kB];   // feature chunk [kBK][kBN] row-major (area-pooled where r > size)
        } ab;
        float c[kBM * kLdC];       // accumulators [kBM][kBN], staged for the epilogue
    } u;
    Tap taps[kMaxUpGroups * kBN];
    float lab_m[kBN], lab_s[kBN], lab_u[kBN];  // online softmax per pixel (labeling variant)
    int32_t lab_best[kBN];
};

GANSEG_HD void warp_origin(int warp, int& wm, int& wn) {
    wm = (warp / kWarpsN) * kWM;
    wn = (warp % kWarpsN) * kWN;
}

GANSEG_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- tile loads (block-cooperative: element e of the tile is handled by thread e % nthreads) ----

// a[m][c] = W[k0 + m, col + c] for m < kBM, c < kBK; zero outside K rows / the layer's columns.
template <typename T>
GANSEG_HD void load_weight_tile(FeatureArgs const& a, int32_t k0, int32_t col, int32_t cvalid, T* s, int tid, int nth) {
    T const* w = static_cast<T const*>(a.weight);
    for (int e = tid; e < kBM * kBK; e += nth) {
        int const m = e / kBK;
        int const c = e % kBK;
        T v = from_float<T>(0.f);
        if (k0 + m < a.channels && c < cvalid) v = w[static_cast<int64_t>(k0 + m) * a.in_channels + col + c];
        s[m * Pitch<T>::kA + c] = v;
    }
}

// b[c][j] = F[c0 + c] at tile pixel p0 + j of the target grid (side `st`): the texel itself when
// the map's side r equals st, else the mean over its adaptive-average-pool window (r > st). This
// is the area-down reduction folded into the GEMM operand: the pooled map never exists.
template <typename T>
GANSEG_HD void load_feature_tile(T const* f, int32_t r, int32_t st, int32_t cvalid, int64_t p0, T* s, int tid, int nth) {
    int64_t const plane = static_cast<int64_t>(r) * r;
    int64_t const pixels = static_cast<int64_t>(st) * st;
    for (int e = tid; e < kBK * kBN; e += nth) {
        int const c = e / kBN;
        int const j = e % kBN;
        int64_t const p = p0 + j;
        float v = 0.f;
        if (c < cvalid && p < pixels) {
            T const* fc = f + c * plane;
            if (r == st) {
                v = load(fc + p);
            } else {
                int32_t const y = static_cast<int32_t>(p / st);
                int32_t const x = static_cast<int32_t>(p % st);
                AreaWindow const wy = area_window(y, r, st);
                AreaWindow const wx = area_window(x, r, st);
                float sum = 0.f;
                for (int32_t iy = wy.start; iy < wy.end; ++iy) {
                    for (int32_t ix = wx.start; ix < wx.end; ++ix) sum += load(fc + static_cast<int64_t>(iy) * r + ix);
                }
                v = sum / static_cast<float>((wy.end - wy.start) * (wx.end - wx.start));
            }
        }
        s[c * Pitch<T>::kB + j] = from_float<T>(v);
    }
}

// The tap table of the output tile starting at flat pixel p0: one Tap per (up group, pixel).
GANSEG_HD void build_taps(FusedPlan const& p, int64_t p0, Tap* taps, int tid, int nth) {
    int32_t const S = p.a.size;
    bool const ac = p.a.align_corners != 0;
    for (int e = tid; e < p.num_groups * kBN; e += nth) {
        int const g = e / kBN;
        int64_t const q = p0 + e % kBN;
        int32_t const r = p.group_res[g];
        int32_t const y = static_cast<int32_t>(q / S) < S ? static_cast<int32_t>(q / S) : S - 1;  // pixels past the end: clamp
        LinearTap const ty = linear_tap(y, r, S, ac);
        LinearTap const tx = linear_tap(static_cast<int32_t>(q % S), r, S, ac);
        Tap t;
        t.off = static_cast<uint32_t>(ty.i0 * r + tx.i0) | (tx.i1 > tx.i0 ? kTapRight : 0u) | (ty.i1 > ty.i0 ? kTapDown : 0u);
        t.wx = tx.w1;
        t.wy = ty.w1;
        taps[e] = t;
    }
}

// Bilinear value of one up group's projected map (fp32, one K plane `m` of side r) at a tap.
GANSEG_HD float bilinear(float const* m, int32_t r, Tap t) {
    uint32_t const o = t.off & kTapOffset;
    uint32_t const dx = (t.off & kTapRight) ? 1u : 0u;
    uint32_t const dy = (t.off & kTapDown) ? static_cast<uint32_t>(r) : 0u;
    float const top = (1.f - t.wx) * load(m + o) + t.wx * load(m + o + dx);
    float const bottom = (1.f - t.wx) * load(m + o + dy) + t.wx * load(m + o + dy + dx);
    return (1.f - t.wy) * top + t.wy * bottom;
}

// Online softmax over a pixel's logits, one at a time in class order: running max m, s = sum
// exp(v - m), u = sum (v - m) exp(v - m); best = first index of the max. Then confidence = 1 / s,
// entropy = log s - u / s. A NaN logit makes both NaN (a broken head labels nothing).
GANSEG_HD void softmax_update(float v, int32_t k, float& m, float& s, float& u, int32_t& best) {
    if (s == 0.f) {
        m = v;
        s = 1.f;
        u = 0.f;
        best = k;
    } else if (v > m) {
        float const d = m - v;
        float const sc = expf(d);
        u = sc * (u + d * s);
        s = sc * s + 1.f;
        m = v;
        best = k;
    } else {
        float const d = v - m;
        float const e = expf(d);
        s += e;
        u += d * e;
    }
}

// ---- TF32 on the host: cvt.rna.tf32.f32 (round to nearest, ties away; 10 mantissa bits) --------
inline float host_tf32(float v) {
    if (!std::isfinite(v)) return v;
    uint32_t u;
    __builtin_memcpy(&u, &v, 4);
    u = (u + 0x1000u) & ~0x1FFFu;
    float r;
    __builtin_memcpy(&r, &u, 4);
    return r;
}

// ---- the block bodies, shared by the device kernels and the host emulation ------------------
// Exec provides: tid, nthreads, sync(), and an accumulator type Exec::Acc<T> with zero(),
// mma(smem a, smem b, warp row origin skip test inside) and store(smem c).

// The executor is a template parameter: the device one calls __device__ WMMA code, the host
// emulation's calls host code, so the execution-space check is off for these two templates only.
// Projection of one up-group tile: ws[g][n, k, p0 + j] = sum over the group's layers of W_l . F_l.
#pragma nv_exec_check_disable
template <typename T, class Exec>
GANSEG_HD void project_block(FusedPlan const& p, int64_t block, float* ws, Smem<T>& sm, Exec& ex) {
    int g = 0;
    while (g + 1 < p.num_groups && p.group_blocks[g + 1] <= block) ++g;
    int32_t const r = p.group_res[g];
    int64_t const pixels = static_cast<int64_t>(r) * r;
    int64_t const tiles = ceil_div(pixels, kBN);
    int64_t const local = block - p.group_blocks[g];
    int32_t const n = static_cast<int32_t>(local / tiles);
    int64_t const p0 = (local % tiles) * kBN;
    int32_t const K = p.a.channels;
    float* out = ws + p.group_ws[g];
    typename Exec::template Acc<T> acc;
    for (int32_t k0 = 0; k0 < K; k0 += kBM) {
        acc.zero();
        for (int32_t i = 0; i < p.group_count[g]; ++i) {
            int32_t const l = p.up_layers[p.group_first[g] + i];
            T const* f = static_cast<T const*>(p.a.feats[l]) + static_cast<int64_t>(n) * p.a.ch[l] * pixels;
            for (int32_t c0 = 0; c0 < p.a.ch[l]; c0 += kBK) {
                int32_t const cvalid = p.a.ch[l] - c0 < kBK ? p.a.ch[l] - c0 : kBK;
                ex.sync();
                load_weight_tile<T>(p.a, k0, p.a.col[l] + c0, cvalid, sm.u.ab.a, ex.tid, ex.nthreads);
                load_feature_tile<T>(f + static_cast<int64_t>(c0) * pixels, r, r, cvalid, p0, sm.u.ab.b, ex.tid, ex.nthreads);
                ex.sync();
                acc.mma(sm.u.ab.a, sm.u.ab.b, K - k0, p.a.tf32_passes, ex);
            }
        }
        ex.sync();
        acc.store(sm.u.c, ex);
        ex.sync();
        for (int e = ex.tid; e < kBM * kBN; e += ex.nthreads) {
            int const m = e / kBN;
            int const j = e % kBN;
            if (k0 + m < K && p0 + j < pixels) {
                out[(static_cast<int64_t>(n) * K + k0 + m) * pixels + p0 + j] = sm.u.c[m * kLdC + j];
            }
        }
    }
}

// One output tile (batch item n, flat pixels [p0, p0 + kBN)) of the fused op or its labeling variant.
#pragma nv_exec_check_disable
template <typename T, bool kLabel, class Exec>
GANSEG_HD void main_block(FusedPlan const& p, int32_t n, int64_t p0, float const* ws, T* out, uint8_t* labels,
    float* confidence, float* entropy, Smem<T>& sm, Exec& ex) {
    FeatureArgs const& a = p.a;
    int32_t const S = a.size;
    int32_t const K = a.channels;
    int64_t const pixels = static_cast<int64_t>(S) * S;
    T const* bias = static_cast<T const*>(a.bias);
    build_taps(p, p0, sm.taps, ex.tid, ex.nthreads);
    if (kLabel) {
        for (int j = ex.tid; j < kBN; j += ex.nthreads) {
            sm.lab_m[j] = 0.f;
            sm.lab_s[j] = 0.f;
            sm.lab_u[j] = 0.f;
            sm.lab_best[j] = 0;
        }
    }
    typename Exec::template Acc<T> acc;
    for (int32_t k0 = 0; k0 < K; k0 += kBM) {
        acc.zero();
        for (int32_t i = 0; i < p.num_main; ++i) {
            int32_t const l = p.main_layers[i];
            int32_t const r = a.res[l];
            int64_t const plane = static_cast<int64_t>(r) * r;
            T const* f = static_cast<T const*>(a.feats[l]) + static_cast<int64_t>(n) * a.ch[l] * plane;
            for (int32_t c0 = 0; c0 < a.ch[l]; c0 += kBK) {
                int32_t const cvalid = a.ch[l] - c0 < kBK ? a.ch[l] - c0 : kBK;
                ex.sync();
                load_weight_tile<T>(a, k0, a.col[l] + c0, cvalid, sm.u.ab.a, ex.tid, ex.nthreads);
                load_feature_tile<T>(f + static_cast<int64_t>(c0) * plane, r, S, cvalid, p0, sm.u.ab.b, ex.tid, ex.nthreads);
                ex.sync();
                acc.mma(sm.u.ab.a, sm.u.ab.b, K - k0, a.tf32_passes, ex);
            }
        }
        ex.sync();
        acc.store(sm.u.c, ex);
        ex.sync();
        // epilogue: + bias + the up groups' bilinear taps; then activation and one write (or the logits
        // back into the staging tile for the labeling pass)
        for (int e = ex.tid; e < kBM * kBN; e += ex.nthreads) {
            int const m = e / kBN;
            int const j = e % kBN;
            int32_t const k = k0 + m;
            if (k >= K || p0 + j >= pixels) continue;
            float v = sm.u.c[m * kLdC + j] + (bias != nullptr ? load(bias + k) : 0.f);
            for (int g = 0; g < p.num_groups; ++g) {
                int32_t const r = p.group_res[g];
                float const* plane = ws + p.group_ws[g] + (static_cast<int64_t>(n) * K + k) * r * r;
                v += bilinear(plane, r, sm.taps[g * kBN + j]);
            }
            if (kLabel) {
                sm.u.c[m * kLdC + j] = v;
            } else {
                out[(static_cast<int64_t>(n) * K + k) * pixels + p0 + j] = from_float<T>(activate(v, a.activation));
            }
        }
        if (kLabel) {
            ex.sync();
            for (int j = ex.tid; j < kBN; j += ex.nthreads) {
                float m = sm.lab_m[j], s = sm.lab_s[j], u = sm.lab_u[j];
                int32_t best = sm.lab_best[j];
                int32_t const rows = K - k0 < kBM ? K - k0 : kBM;
                for (int i = 0; i < rows; ++i) softmax_update(sm.u.c[i * kLdC + j], k0 + i, m, s, u, best);
                sm.lab_m[j] = m;
                sm.lab_s[j] = s;
                sm.lab_u[j] = u;
                sm.lab_best[j] = best;
            }
        }
    }
    if (kLabel) {
        for (int j = ex.tid; j < kBN; j += ex.nthreads) {
            if (p0 + j >= pixels) continue;
            int64_t const o = static_cast<int64_t>(n) * pixels + p0 + j;
            float const s = sm.lab_s[j];
            labels[o] = static_cast<uint8_t>(sm.lab_best[j]);
            confidence[o] = 1.f / s;
            entropy[o] = logf(s) - sm.lab_u[j] / s;
        }
    }
}

// ---- the device executor: WMMA tensor-core fragments -----------------------------------------
#ifdef __CUDA_ARCH__
namespace wmma = nvcuda::wmma;

template <typename T> struct WmmaTraits {  // FP16 / BF16: m16n16k16 on the stored type
    using Elem = T;
    static constexpr int kK = 16;
};
template <> struct WmmaTraits<float> {  // FP32: TF32 m16n16k8
    using Elem = wmma::precision::tf32;
    static constexpr int kK = 8;
};

struct DeviceExec {
    int tid = static_cast<int>(threadIdx.x);
    int nthreads = static_cast<int>(blockDim.x);
    __device__ void sync() { __syncthreads(); }

    template <typename T> struct Acc {
        using Tr = WmmaTraits<T>;
        using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tr::kK, typename Tr::Elem, wmma::row_major>;
        using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tr::kK, typename Tr::Elem, wmma::row_major>;
        wmma::fragment<wmma::accumulator, 16, 16, Tr::kK, float> c[2][2];

        __device__ void zero() {
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.f);
        }
        // this warp's 32 x 32 sub-tile += A[wm.., :] . B[:, wn..]; rows_left = K - k0 (skip past K)
        __device__ void mma(T const* a, T const* b, int32_t rows_left, int32_t passes, DeviceExec const& ex) {
            int wm, wn;
            warp_origin(ex.tid / 32, wm, wn);
            if (wm >= rows_left) return;  // warp-uniform
GANSEG_UNROLL
            for (int kk = 0; kk < kBK; kk += Tr::kK) {
                FragA fa[2];
                FragB fb[2];
GANSEG_UNROLL
                for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a + (wm + 16 * i) * Pitch<T>::kA + kk, Pitch<T>::kA);
GANSEG_UNROLL
                for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], b + kk * Pitch<T>::kB + wn + 16 * j, Pitch<T>::kB);
                if constexpr (sizeof(T) == 4) {
                    if (passes == 3) {  // 3xTF32: small terms first, then hi . hi
                        FragA la[2];
                        FragB lb[2];
GANSEG_UNROLL
                        for (int i = 0; i < 2; ++i) split(fa[i], la[i]);
GANSEG_UNROLL
                        for (int j = 0; j < 2; ++j) split(fb[j], lb[j]);
GANSEG_UNROLL
                        for (int i = 0; i < 2; ++i)
GANSEG_UNROLL
                            for (int j = 0; j < 2; ++j) {
                                wmma::mma_sync(c[i][j], la[i], fb[j], c[i][j]);
                                wmma::mma_sync(c[i][j], fa[i], lb[j], c[i][j]);
                            }
                    } else {
GANSEG_UNROLL
                        for (int i = 0; i < 2; ++i) round(fa[i]);
GANSEG_UNROLL
                        for (int j = 0; j < 2; ++j) round(fb[j]);
                    }
                }
GANSEG_UNROLL
                for (int i = 0; i < 2; ++i)
GANSEG_UNROLL
                    for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
            }
        }
        template <class F> __device__ static void round(F& f) {
GANSEG_UNROLL
            for (int e = 0; e < f.num_elements; ++e) f.x[e] = wmma::__float_to_tf32(f.x[e]);
        }
        template <class F> __device__ static void split(F& hi, F& lo) {  // hi = tf32(v), lo = tf32(v - hi)
GANSEG_UNROLL
            for (int e = 0; e < hi.num_elements; ++e) {
                float const v = hi.x[e];
                hi.x[e] = wmma::__float_to_tf32(v);
                lo.x[e] = wmma::__float_to_tf32(v - hi.x[e]);
            }
        }
        __device__ void store(float* s, DeviceExec const& ex) {
            int wm, wn;
            warp_origin(ex.tid / 32, wm, wn);
GANSEG_UNROLL
            for (int i = 0; i < 2; ++i)
GANSEG_UNROLL
                for (int j = 0; j < 2; ++j)
                    wmma::store_matrix_sync(s + (wm + 16 * i) * kLdC + wn + 16 * j, c[i][j], kLdC, wmma::mem_row_major);
        }
    };
};
#endif  // __CUDA_ARCH__

// ---- kernels ---------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) project_groups_kernel(FusedPlan const p, float* __restrict__ ws) {
#ifdef __CUDA_ARCH__
    __shared__ Smem<T> sm;
    DeviceExec ex;
    project_block<T>(p, blockIdx.x, ws, sm, ex);
#endif
}

template <typename T, bool kLabel>
__global__ void __launch_bounds__(kThreads) fused_main_kernel(FusedPlan const p, float const* __restrict__ ws,
    T* __restrict__ out, uint8_t* __restrict__ labels, float* __restrict__ confidence, float* __restrict__ entropy) {
#ifdef __CUDA_ARCH__
    __shared__ Smem<T> sm;
    DeviceExec ex;
    main_block<T, kLabel>(p, static_cast<int32_t>(blockIdx.y), static_cast<int64_t>(blockIdx.x) * kBN, ws, out, labels,
        confidence, entropy, sm, ex);
#endif
}

}  // namespace fused
}  // namespace ganseg
