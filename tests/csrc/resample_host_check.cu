// Host emulation of the CUDA kernels, for tests/test_cuda_kernel.py.
//
// usage: resample_host_check projected IN OUT   (ganseg/csrc/resample_accumulate.cuh, below)
//        resample_host_check fused IN OUT       (ganseg/csrc/fused_features.cuh, fused_host_check.cu)
//
// projected: runs, on the CPU, the very __host__ __device__ functions the plugin's kernel runs per
// pixel (index math, fp32 accumulation, dtype conversions, activation), in the kernel's own loop
// order, and writes the results for the test to compare with ganseg.ops.resample_projected. No
// CUDA runtime call is made, so it runs without a GPU.
//   IN:  int32 header [dtype, activation, align_corners, batch, channels, size, has_bias, levels,
//        res_0 .. res_{levels-1}], then float32 data: each level's [batch, channels, r, r], then
//        bias [channels] if has_bias. Values are rounded to the dtype first, as on the device.
//   OUT: float32 out [batch, channels, size, size] (converted to dtype and back); then one int32
//        per check_args() probe (1 = rejected), see below.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "resample_accumulate.cuh"

namespace {

template <typename T>
int run(ganseg::ResampleArgs a, std::vector<std::vector<float>> const& levels, std::vector<float> const& bias, FILE* out) {
    std::vector<std::vector<T>> conv(levels.size());
    for (size_t l = 0; l < levels.size(); ++l) {
        for (float v : levels[l]) conv[l].push_back(ganseg::from_float<T>(v));
        a.maps[l] = conv[l].data();
    }
    std::vector<T> b;
    for (float v : bias) b.push_back(ganseg::from_float<T>(v));
    a.bias = bias.empty() ? nullptr : b.data();

    int64_t const pixels = static_cast<int64_t>(a.size) * a.size;
    int32_t const C = ganseg::kChannelsPerThread;
    std::vector<float> result(static_cast<size_t>(a.batch) * a.channels * pixels);
    for (int32_t n = 0; n < a.batch; ++n) {  // resample_accumulate_kernel, thread by thread
        for (int32_t k0 = 0; k0 < a.channels; k0 += C) {
            for (int64_t p = 0; p < pixels; ++p) {
                float v[ganseg::kChannelsPerThread];
                ganseg::accumulate_pixel<T, ganseg::kChannelsPerThread>(a, n, k0, static_cast<int32_t>(p / a.size),
                    static_cast<int32_t>(p % a.size), v);
                for (int c = 0; c < C && k0 + c < a.channels; ++c) {
                    T const stored = ganseg::from_float<T>(ganseg::activate(v[c], a.activation));
                    result[(static_cast<int64_t>(n) * a.channels + k0 + c) * pixels + p] = ganseg::to_float(stored);
                }
            }
        }
    }
    fwrite(result.data(), sizeof(float), result.size(), out);
    return 0;
}

}  // namespace

int run_fused(char const* in_path, char const* out_path);  // fused_host_check.cu

int run_projected(char const* in_path, char const* out_path) {
    FILE* in = fopen(in_path, "rb");
    if (!in) return 3;
    int32_t h[8];
    if (fread(h, sizeof(int32_t), 8, in) != 8) return 4;
    ganseg::ResampleArgs a;
    a.dtype = static_cast<ganseg::DType>(h[0]);
    a.activation = static_cast<ganseg::Activation>(h[1]);
    a.align_corners = h[2];
    a.batch = h[3];
    a.channels = h[4];
    a.size = h[5];
    a.num_levels = h[7];
    if (a.num_levels < 1 || a.num_levels > ganseg::kMaxLevels) return 5;
    if (fread(a.res, sizeof(int32_t), a.num_levels, in) != static_cast<size_t>(a.num_levels)) return 4;
    std::vector<std::vector<float>> levels(a.num_levels);
    for (int32_t l = 0; l < a.num_levels; ++l) {
        levels[l].resize(static_cast<size_t>(a.batch) * a.channels * a.res[l] * a.res[l]);
        a.maps[l] = levels[l].data();
        if (fread(levels[l].data(), sizeof(float), levels[l].size(), in) != levels[l].size()) return 4;
    }
    std::vector<float> bias(h[6] ? a.channels : 0);
    if (!bias.empty() && fread(bias.data(), sizeof(float), bias.size(), in) != bias.size()) return 4;
    fclose(in);
    if (char const* bad = ganseg::check_args(a, false)) {
        fprintf(stderr, "check_args: %s\n", bad);
        return 6;
    }
    FILE* out = fopen(out_path, "wb");
    if (!out) return 3;
    int rc = 0;
    switch (a.dtype) {
    case ganseg::DType::kFloat32: rc = run<float>(a, levels, bias, out); break;
    case ganseg::DType::kFloat16: rc = run<__half>(a, levels, bias, out); break;
    case ganseg::DType::kBFloat16: rc = run<__nv_bfloat16>(a, levels, bias, out); break;
    }
    // check_args probes: each must be rejected (1)
    int32_t probes[5];
    ganseg::ResampleArgs bad = a;
    bad.num_levels = 0;
    probes[0] = ganseg::check_args(bad, false) != nullptr;
    bad = a;
    bad.num_levels = ganseg::kMaxLevels + 1;
    probes[1] = ganseg::check_args(bad, false) != nullptr;
    bad = a;
    bad.channels = 257;
    probes[2] = ganseg::check_args(bad, true) != nullptr;
    bad = a;
    bad.activation = static_cast<ganseg::Activation>(7);
    probes[3] = ganseg::check_args(bad, false) != nullptr;
    bad = a;
    bad.res[0] = 0;
    probes[4] = ganseg::check_args(bad, false) != nullptr;
    fwrite(probes, sizeof(int32_t), 5, out);
    fclose(out);
    return rc;
}

int main(int argc, char** argv) {
    if (argc != 4 || (strcmp(argv[1], "projected") != 0 && strcmp(argv[1], "fused") != 0)) {
        fprintf(stderr, "usage: %s projected|fused IN OUT\n", argv[0]);
        return 2;
    }
    return strcmp(argv[1], "fused") == 0 ? run_fused(argv[2], argv[3]) : run_projected(argv[2], argv[3]);
}
