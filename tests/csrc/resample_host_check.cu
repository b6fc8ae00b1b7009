// Host emulation of the resample-accumulate kernels, for tests/test_cuda_kernel.py.
//
// Runs, on the CPU, the very __host__ __device__ functions the kernels run per pixel
// (ganseg/csrc/resample_accumulate.cuh: index math, fp32 accumulation, dtype conversions,
// activation, online softmax), in the kernels' own loop order, and writes the results for the test
// to compare with ganseg.ops. No CUDA runtime call is made, so it runs without a GPU.
//
// usage: resample_host_check IN OUT
//   IN:  int32 header [dtype, activation, align_corners, batch, channels, size, has_bias, levels,
//        res_0 .. res_{levels-1}], then float32 data: each level's [batch, channels, r, r], then
//        bias [channels] if has_bias. Values are rounded to the dtype first, as on the device.
//   OUT: float32 out [batch, channels, size, size] (converted to dtype and back), uint8 labels
//        [batch, size, size], float32 confidence [batch, size, size]; then one int32 per
//        check_args() probe (1 = rejected), see below.
#include <cstdio>
#include <cstdlib>
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
    std::vector<uint8_t> labels(static_cast<size_t>(a.batch) * pixels);
    std::vector<float> confidence(labels.size());
    bool const can_label = a.channels <= ganseg::kMaxLabelClasses;
    for (int32_t n = 0; n < a.batch && can_label; ++n) {  // resample_label_kernel
        for (int64_t p = 0; p < pixels; ++p) {
            ganseg::label_pixel<T>(a, n, static_cast<int32_t>(p / a.size), static_cast<int32_t>(p % a.size),
                labels[n * pixels + p], confidence[n * pixels + p]);
        }
    }
    fwrite(result.data(), sizeof(float), result.size(), out);
    fwrite(labels.data(), 1, labels.size(), out);
    fwrite(confidence.data(), sizeof(float), confidence.size(), out);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    FILE* in = fopen(argv[1], "rb");
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
    FILE* out = fopen(argv[2], "wb");
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
