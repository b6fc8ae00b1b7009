// Device (and host-emulatable) code of the resample-accumulate kernels: index math, per-pixel
// accumulation, the kernel. Plain CUDA C++: no torch and no TensorRT headers.
//
// Every function the kernels use per pixel is __host__ __device__, so the test suite compiles a
// host program against this very header and checks its results against ganseg.ops.resize on a
// machine without a GPU (tests/csrc/resample_host_check.cu); only the thread-to-pixel mapping in
// the __global__ function below is untested there.
//
// Index math follows PyTorch exactly (ATen UpSample.h / AdaptiveAveragePooling):
//   bilinear, align_corners=False: src = max(in/out * (dst + 0.5) - 0.5, 0)
//   bilinear, align_corners=True:  src = dst * (in - 1) / (out - 1)   (0 when out == 1)
//   i0 = floor(src), i1 = i0 + (i0 < in - 1), w1 = src - i0, w0 = 1 - w1
//   area (adaptive average pool):  window [floor(dst * in / out), ceil((dst + 1) * in / out))
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "resample_accumulate.h"

#define GANSEG_HD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__  // unroll hints for the device pass only (the host compiler warns about them)
#define GANSEG_UNROLL _Pragma("unroll")
#else
#define GANSEG_UNROLL
#endif

namespace ganseg {

constexpr int32_t kChannelsPerThread = 8;  // K-chunk a thread accumulates (coordinates computed once)
constexpr int32_t kThreadsPerBlock = 256;
// __launch_bounds__ minimum blocks per SM: 4 caps the accumulate kernel at 64 registers (50%
// occupancy, 8-12 bytes of spill).
constexpr int32_t kMinBlocksPerSM = 4;

// ---- element conversion: everything is accumulated in fp32 -----------------------------------
GANSEG_HD float to_float(float v) { return v; }
GANSEG_HD float to_float(__half v) { return __half2float(v); }
GANSEG_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> GANSEG_HD T from_float(float v);
template <> GANSEG_HD float from_float<float>(float v) { return v; }
template <> GANSEG_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> GANSEG_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> GANSEG_HD float load(T const* p) {
#ifdef __CUDA_ARCH__
    return to_float(__ldg(p));  // read-only path: the maps are small and re-read by neighbours
#else
    return to_float(*p);
#endif
}

// ---- index math ------------------------------------------------------------------------------
struct LinearTap {
    int32_t i0, i1;
    float w0, w1;
};

// Bilinear source taps along one axis for output index `dst` (in < out, upsampling).
GANSEG_HD LinearTap linear_tap(int32_t dst, int32_t in, int32_t out, bool align_corners) {
    float src;
    if (align_corners) {
        float const scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
        src = scale * static_cast<float>(dst);
    } else {
        float const scale = static_cast<float>(in) / static_cast<float>(out);
        src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
        src = src < 0.f ? 0.f : src;
    }
    int32_t i0 = static_cast<int32_t>(src);  // floor: src >= 0
    i0 = i0 > in - 1 ? in - 1 : i0;
    LinearTap t;
    t.i0 = i0;
    t.i1 = i0 + (i0 < in - 1 ? 1 : 0);
    t.w1 = src - static_cast<float>(i0);
    t.w0 = 1.f - t.w1;
    return t;
}

struct AreaWindow {
    int32_t start, end;  // [start, end)
};

// Adaptive-average-pool window along one axis for output index `dst` (in > out, downsampling).
GANSEG_HD AreaWindow area_window(int32_t dst, int32_t in, int32_t out) {
    AreaWindow w;
    w.start = static_cast<int32_t>((static_cast<int64_t>(dst) * in) / out);
    w.end = static_cast<int32_t>(((static_cast<int64_t>(dst) + 1) * in + out - 1) / out);
    return w;
}

GANSEG_HD float activate(float v, Activation act) {
    switch (act) {
    case Activation::kReLU: return v > 0.f ? v : 0.f;
    case Activation::kLeakyReLU: return v > 0.f ? v : v * kLeakyReLUSlope;
    default: return v;
    }
}

// ---- per pixel: channels [k0, k0 + CH) of output pixel (n, y, x), bias added, no activation ----
template <typename T, int CH>
GANSEG_HD void accumulate_pixel(ResampleArgs const& a, int32_t n, int32_t k0, int32_t y, int32_t x, float (&acc)[CH]) {
    int32_t const K = a.channels;
    int32_t const S = a.size;
    bool const ac = a.align_corners != 0;
    T const* bias = static_cast<T const*>(a.bias);
GANSEG_UNROLL
    for (int c = 0; c < CH; ++c) {
        acc[c] = (bias != nullptr && k0 + c < K) ? load(bias + k0 + c) : 0.f;
    }
    for (int32_t l = 0; l < a.num_levels; ++l) {
        int32_t const r = a.res[l];
        int64_t const plane = static_cast<int64_t>(r) * r;
        T const* base = static_cast<T const*>(a.maps[l]) + (static_cast<int64_t>(n) * K + k0) * plane;
        if (r == S) {
            int64_t const o = static_cast<int64_t>(y) * r + x;
GANSEG_UNROLL
            for (int c = 0; c < CH; ++c) {
                if (k0 + c < K) acc[c] += load(base + c * plane + o);
            }
        } else if (r < S) {
            LinearTap const ty = linear_tap(y, r, S, ac);
            LinearTap const tx = linear_tap(x, r, S, ac);
            int64_t const r0 = static_cast<int64_t>(ty.i0) * r;
            int64_t const r1 = static_cast<int64_t>(ty.i1) * r;
GANSEG_UNROLL
            for (int c = 0; c < CH; ++c) {
                if (k0 + c < K) {
                    T const* p = base + c * plane;
                    acc[c] += ty.w0 * (tx.w0 * load(p + r0 + tx.i0) + tx.w1 * load(p + r0 + tx.i1))
                        + ty.w1 * (tx.w0 * load(p + r1 + tx.i0) + tx.w1 * load(p + r1 + tx.i1));
                }
            }
        } else {
            AreaWindow const wy = area_window(y, r, S);
            AreaWindow const wx = area_window(x, r, S);
            float const count = static_cast<float>((wy.end - wy.start) * (wx.end - wx.start));
            float sum[CH];
GANSEG_UNROLL
            for (int c = 0; c < CH; ++c) sum[c] = 0.f;
            for (int32_t iy = wy.start; iy < wy.end; ++iy) {  // window outside, channels inside:
                for (int32_t ix = wx.start; ix < wx.end; ++ix) {  // sums stay in registers
                    int64_t const o = static_cast<int64_t>(iy) * r + ix;
GANSEG_UNROLL
                    for (int c = 0; c < CH; ++c) {
                        if (k0 + c < K) sum[c] += load(base + c * plane + o);
                    }
                }
            }
GANSEG_UNROLL
            for (int c = 0; c < CH; ++c) acc[c] += sum[c] / count;
        }
    }
}

// ---- kernels: x covers output pixels (coalesced writes), y covers (batch, K-chunk) ------------
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSM) resample_accumulate_kernel(ResampleArgs const a, T* __restrict__ out) {
    int64_t const pixels = static_cast<int64_t>(a.size) * a.size;
    int64_t const p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p >= pixels) return;
    int32_t const y = static_cast<int32_t>(p / a.size);
    int32_t const x = static_cast<int32_t>(p % a.size);
    int32_t const chunks = (a.channels + kChannelsPerThread - 1) / kChannelsPerThread;
    for (int64_t nk = blockIdx.y; nk < static_cast<int64_t>(a.batch) * chunks; nk += gridDim.y) {
        int32_t const n = static_cast<int32_t>(nk / chunks);
        int32_t const k0 = static_cast<int32_t>(nk % chunks) * kChannelsPerThread;
        float v[kChannelsPerThread];
        accumulate_pixel<T, kChannelsPerThread>(a, n, k0, y, x, v);
        T* o = out + (static_cast<int64_t>(n) * a.channels + k0) * pixels + p;
GANSEG_UNROLL
        for (int c = 0; c < kChannelsPerThread; ++c) {
            if (k0 + c < a.channels) o[c * pixels] = from_float<T>(activate(v[c], a.activation));
        }
    }
}

}  // namespace ganseg
