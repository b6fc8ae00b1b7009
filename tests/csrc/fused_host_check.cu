// Host emulation of the fused feature kernels (ganseg/csrc/fused_features.cuh), for
// tests/test_cuda_kernel.py: `resample_host_check fused IN OUT`.
//
// Runs the kernels' own block bodies (project_block, main_block: tile loads with the folded
// area-down reduction, tap table, epilogue, online softmax) block by block with a serial executor:
// one "thread", a no-op barrier, and a scalar GEMM on the same shared-memory tiles in place of the
// WMMA fragments, which emulates each warp's 32 x 32 sub-tile (warp_origin, the skip of rows past
// K) and the tensor cores' input precision: FP16/BF16 products exact in fp32, TF32 operands rounded
// as cvt.rna does, 3xTF32 as hi.lo + lo.hi + hi.hi per k-step. The plan comes from make_plan, the
// launcher's own host code. No CUDA runtime call is made.
//
//   IN:  int32 header [dtype, activation, align_corners, batch, channels (K), size, has_bias,
//        num_layers, tf32_passes, then (ch, res) per layer], then float32 data (rounded to the
//        dtype here, as the device would hold it): each layer's [batch, ch, res, res], the weight
//        [K, sum ch], bias [K] if has_bias.
//   OUT: float32 out [batch, K, size, size] (stored in the dtype, converted back), uint8 labels,
//        float32 confidence, float32 entropy (each [batch, size, size]; K <= 256 only), then int32
//        plan summary [num_main, num_groups, group_res..., group_blocks[num_groups], ws_floats
//        (low 31 bits)], then one int32 per check_feature_args() probe (1 = rejected).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "fused_features.cuh"

namespace {

using namespace ganseg;
using namespace ganseg::fused;

float tf32_product_sum(float const* a, int sa, float const* b, int sb, int n, int passes) {
    // one k-step of a (16 x 8 x 16) TF32 MMA for one output element, in the device's term order
    float lo_hi = 0.f, hi_lo = 0.f, hi_hi = 0.f;
    for (int k = 0; k < n; ++k) {
        float const av = a[k * sa], bv = b[k * sb];
        float const ah = host_tf32(av), bh = host_tf32(bv);
        hi_hi += ah * bh;
        if (passes == 3) {
            lo_hi += host_tf32(av - ah) * bh;
            hi_lo += ah * host_tf32(bv - bh);
        }
    }
    return passes == 3 ? (lo_hi + hi_lo) + hi_hi : hi_hi;
}

struct HostExec {
    int tid = 0;
    int nthreads = 1;
    void sync() {}

    template <typename T> struct Acc {
        float c[kBM * kBN];  // a plain array: trivially constructible, as the device's fragments
        void zero() { std::fill(c, c + kBM * kBN, 0.f); }
        void mma(T const* a, T const* b, int32_t rows_left, int32_t passes, HostExec const&) {
            int const kstep = sizeof(T) == 4 ? 8 : 16;  // the WMMA shape's k
            for (int w = 0; w < kThreads / 32; ++w) {
                int wm, wn;
                warp_origin(w, wm, wn);
                if (wm >= rows_left) continue;
                for (int m = wm; m < wm + kWM; ++m) {
                    for (int n = wn; n < wn + kWN; ++n) {
                        float acc = c[m * kBN + n];
                        for (int kk = 0; kk < kBK; kk += kstep) {
                            if constexpr (sizeof(T) == 4) {
                                acc += tf32_product_sum(reinterpret_cast<float const*>(a) + m * Pitch<T>::kA + kk, 1,
                                    reinterpret_cast<float const*>(b) + kk * Pitch<T>::kB + n, Pitch<T>::kB, kstep, passes);
                            } else {
                                float s = 0.f;
                                for (int k = kk; k < kk + kstep; ++k) {
                                    s += to_float(a[m * Pitch<T>::kA + k]) * to_float(b[k * Pitch<T>::kB + n]);
                                }
                                acc += s;
                            }
                        }
                        c[m * kBN + n] = acc;
                    }
                }
            }
        }
        void store(float* s, HostExec const&) const {
            for (int m = 0; m < kBM; ++m)
                for (int n = 0; n < kBN; ++n) s[m * kLdC + n] = c[m * kBN + n];
        }
    };
};

template <typename T>
void run(FeatureArgs a, std::vector<std::vector<float>> const& layers, std::vector<float> const& weight,
    std::vector<float> const& bias, FILE* out) {
    std::vector<std::vector<T>> conv(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
        for (float v : layers[l]) conv[l].push_back(from_float<T>(v));
        a.feats[l] = conv[l].data();
    }
    std::vector<T> w, b;
    for (float v : weight) w.push_back(from_float<T>(v));
    for (float v : bias) b.push_back(from_float<T>(v));
    a.weight = w.data();
    a.bias = bias.empty() ? nullptr : b.data();

    FusedPlan const p = make_plan(a);
    std::vector<float> ws(static_cast<size_t>(p.ws_floats));
    auto sm = std::make_unique<Smem<T>>();
    HostExec ex;
    for (int32_t blk = 0; blk < p.group_blocks[p.num_groups]; ++blk) project_block<T>(p, blk, ws.data(), *sm, ex);

    int64_t const pixels = static_cast<int64_t>(a.size) * a.size;
    std::vector<T> result(static_cast<size_t>(a.batch) * a.channels * pixels, from_float<T>(-12345.f));
    std::vector<uint8_t> labels(static_cast<size_t>(a.batch) * pixels, 255);
    std::vector<float> confidence(labels.size(), -1.f), entropy(labels.size(), -1.f);
    bool const can_label = a.channels <= kMaxLabelClasses;
    for (int32_t n = 0; n < a.batch; ++n) {
        for (int64_t p0 = 0; p0 < pixels; p0 += kBN) {  // blockIdx.x * kBN
            main_block<T, false>(p, n, p0, ws.data(), result.data(), nullptr, nullptr, nullptr, *sm, ex);
            if (can_label) {
                main_block<T, true>(p, n, p0, ws.data(), nullptr, labels.data(), confidence.data(), entropy.data(), *sm, ex);
            }
        }
    }
    std::vector<float> res_f;
    for (T v : result) res_f.push_back(to_float(v));
    fwrite(res_f.data(), sizeof(float), res_f.size(), out);
    fwrite(labels.data(), 1, labels.size(), out);
    fwrite(confidence.data(), sizeof(float), confidence.size(), out);
    fwrite(entropy.data(), sizeof(float), entropy.size(), out);
    std::vector<int32_t> summary = {p.num_main, p.num_groups};
    for (int32_t g = 0; g < p.num_groups; ++g) summary.push_back(p.group_res[g]);
    summary.push_back(p.group_blocks[p.num_groups]);
    summary.push_back(static_cast<int32_t>(p.ws_floats & 0x7fffffff));
    fwrite(summary.data(), sizeof(int32_t), summary.size(), out);
}

}  // namespace

int run_fused(char const* in_path, char const* out_path) {
    FILE* in = fopen(in_path, "rb");
    if (!in) return 3;
    int32_t h[9];
    if (fread(h, sizeof(int32_t), 9, in) != 9) return 4;
    FeatureArgs a;
    a.dtype = static_cast<DType>(h[0]);
    a.activation = static_cast<Activation>(h[1]);
    a.align_corners = h[2];
    a.batch = h[3];
    a.channels = h[4];
    a.size = h[5];
    a.num_layers = h[7];
    a.tf32_passes = h[8];
    if (a.num_layers < 1 || a.num_layers > kMaxLayers) return 5;
    std::vector<std::vector<float>> layers(a.num_layers);
    for (int32_t l = 0; l < a.num_layers; ++l) {
        if (fread(&a.ch[l], sizeof(int32_t), 1, in) != 1 || fread(&a.res[l], sizeof(int32_t), 1, in) != 1) return 4;
        a.col[l] = a.in_channels;
        a.in_channels += a.ch[l];
    }
    for (int32_t l = 0; l < a.num_layers; ++l) {
        layers[l].resize(static_cast<size_t>(a.batch) * a.ch[l] * a.res[l] * a.res[l]);
        a.feats[l] = layers[l].data();
        if (fread(layers[l].data(), sizeof(float), layers[l].size(), in) != layers[l].size()) return 4;
    }
    std::vector<float> weight(static_cast<size_t>(a.channels) * a.in_channels);
    a.weight = weight.data();
    if (fread(weight.data(), sizeof(float), weight.size(), in) != weight.size()) return 4;
    std::vector<float> bias(h[6] ? a.channels : 0);
    if (!bias.empty() && fread(bias.data(), sizeof(float), bias.size(), in) != bias.size()) return 4;
    fclose(in);
    if (char const* bad = check_feature_args(a, false)) {
        fprintf(stderr, "check_feature_args: %s\n", bad);
        return 6;
    }
    FILE* out = fopen(out_path, "wb");
    if (!out) return 3;
    switch (a.dtype) {
    case DType::kFloat32: run<float>(a, layers, weight, bias, out); break;
    case DType::kFloat16: run<__half>(a, layers, weight, bias, out); break;
    case DType::kBFloat16: run<__nv_bfloat16>(a, layers, weight, bias, out); break;
    }
    // check_feature_args probes: each must be rejected (1)
    std::vector<int32_t> probes;
    FeatureArgs bad = a;
    bad.num_layers = kMaxLayers + 1;
    probes.push_back(check_feature_args(bad, false) != nullptr);
    bad = a;
    bad.channels = kMaxLabelClasses + 1;
    probes.push_back(check_feature_args(bad, true) != nullptr);
    bad = a;
    bad.tf32_passes = 2;
    probes.push_back(check_feature_args(bad, false) != nullptr);
    bad = a;
    bad.col[0] = a.in_channels;  // columns outside the weight
    probes.push_back(check_feature_args(bad, false) != nullptr);
    bad = a;
    bad.batch = 65536;
    probes.push_back(check_feature_args(bad, false) != nullptr);
    bad = a;
    bad.num_layers = kMaxUpGroups + 1;  // 17 distinct resolutions below the size
    bad.size = 4096;
    for (int32_t l = 0; l < bad.num_layers; ++l) {
        bad.res[l] = l + 1;
        bad.ch[l] = 1;
        bad.col[l] = 0;
        bad.feats[l] = a.feats[0];
    }
    probes.push_back(check_feature_args(bad, false) != nullptr);
    fwrite(probes.data(), sizeof(int32_t), probes.size(), out);
    fclose(out);
    return 0;
}
