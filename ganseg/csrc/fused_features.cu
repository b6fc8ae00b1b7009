// Launchers of the fused feature kernels (contract: fused_features.h; code: fused_features.cuh).
// Compiles standalone with nvcc, like resample_accumulate.cu.
#include "fused_features.cuh"

namespace ganseg {

char const* check_feature_args(FeatureArgs const& a, bool labeling) {
    if (a.num_layers < 1 || a.num_layers > kMaxLayers) return "num_layers must be in [1, kMaxLayers]";
    if (a.batch < 0 || a.batch > 65535) return "batch must be in [0, 65535]";
    if (a.channels < 1) return "channels must be >= 1";
    if (labeling && a.channels > kMaxLabelClasses) return "labeling needs channels <= 256 (uint8 labels)";
    if (a.size < 1 || static_cast<int64_t>(a.size) * a.size > INT32_MAX) return "size must be >= 1 with size * size < 2^31";
    if (a.weight == nullptr && a.batch > 0) return "weight pointer is null";
    if (a.tf32_passes != 1 && a.tf32_passes != 3) return "tf32_passes must be 1 or 3";
    int32_t up[kMaxUpGroups];
    int32_t num_up = 0;
    for (int32_t l = 0; l < a.num_layers; ++l) {
        if (a.res[l] < 1 || a.ch[l] < 1) return "every layer needs res >= 1 and ch >= 1";
        if (static_cast<int64_t>(a.res[l]) * a.res[l] > INT32_MAX) return "a layer's res * res must be < 2^31";
        if (a.col[l] < 0 || a.col[l] + a.ch[l] > a.in_channels) return "a layer's weight columns lie outside the weight";
        if (a.feats[l] == nullptr && a.batch > 0) return "a feature pointer is null";
        if (a.res[l] >= a.size) continue;
        if (a.res[l] > 32767) return "bilinear sources must be at most 32767 wide";
        bool seen = false;
        for (int32_t g = 0; g < num_up; ++g) seen = seen || up[g] == a.res[l];
        if (!seen) {
            if (num_up == kMaxUpGroups) return "at most kMaxUpGroups distinct resolutions below size";
            up[num_up++] = a.res[l];
        }
    }
    return check_dtype_activation(a.dtype, a.activation);
}

FusedPlan make_plan(FeatureArgs const& a) {
    FusedPlan p;
    p.a = a;
    for (int32_t l = 0; l < a.num_layers; ++l) {
        if (a.res[l] >= a.size) {
            p.main_layers[p.num_main++] = l;
            continue;
        }
        int32_t g = 0;
        while (g < p.num_groups && p.group_res[g] != a.res[l]) ++g;
        if (g == p.num_groups) p.group_res[p.num_groups++] = a.res[l];
    }
    // order: largest reduction (sum of channels) first, so the longest projection blocks start first
    int32_t reduction[kMaxUpGroups] = {};
    for (int32_t l = 0; l < a.num_layers; ++l) {
        for (int32_t g = 0; g < p.num_groups; ++g) reduction[g] += p.group_res[g] == a.res[l] ? a.ch[l] : 0;
    }
    for (int32_t i = 1; i < p.num_groups; ++i) {  // insertion sort, stable
        for (int32_t j = i; j > 0 && reduction[j] > reduction[j - 1]; --j) {
            int32_t t = reduction[j]; reduction[j] = reduction[j - 1]; reduction[j - 1] = t;
            t = p.group_res[j]; p.group_res[j] = p.group_res[j - 1]; p.group_res[j - 1] = t;
        }
    }
    int32_t next = 0;
    for (int32_t g = 0; g < p.num_groups; ++g) {
        p.group_first[g] = next;
        for (int32_t l = 0; l < a.num_layers; ++l) {
            if (a.res[l] == p.group_res[g]) p.up_layers[next++] = l;
        }
        p.group_count[g] = next - p.group_first[g];
        int64_t const plane = static_cast<int64_t>(p.group_res[g]) * p.group_res[g];
        p.group_ws[g] = p.ws_floats;
        p.ws_floats += static_cast<int64_t>(a.batch) * a.channels * plane;
        p.group_blocks[g + 1] = p.group_blocks[g] + a.batch * static_cast<int32_t>(fused::ceil_div(plane, fused::kBN));
    }
    return p;
}

size_t fused_workspace_bytes(FeatureArgs const& a) {
    if (check_feature_args(a, false) != nullptr) return 0;
    return static_cast<size_t>(make_plan(a).ws_floats) * sizeof(float);
}

namespace {

template <typename T, bool kLabel>
cudaError_t launch_t(FusedPlan const& p, void* workspace, T* out, uint8_t* labels, float* confidence, float* entropy,
    cudaStream_t stream) {
    float* ws = static_cast<float*>(workspace);
    if (p.num_groups > 0) {
        fused::project_groups_kernel<T><<<p.group_blocks[p.num_groups], fused::kThreads, 0, stream>>>(p, ws);
    }
    dim3 const grid(static_cast<unsigned>(fused::ceil_div(static_cast<int64_t>(p.a.size) * p.a.size, fused::kBN)),
        static_cast<unsigned>(p.a.batch), 1);
    fused::fused_main_kernel<T, kLabel><<<grid, fused::kThreads, 0, stream>>>(p, ws, out, labels, confidence, entropy);
    return cudaGetLastError();
}

template <bool kLabel>
cudaError_t dispatch(FeatureArgs const& a, void* out, uint8_t* labels, float* confidence, float* entropy,
    void* workspace, cudaStream_t stream) {
    if (check_feature_args(a, kLabel) != nullptr) return cudaErrorInvalidValue;
    if (a.batch == 0) return cudaSuccess;
    FusedPlan const p = make_plan(a);
    if (p.ws_floats > 0 && workspace == nullptr) return cudaErrorInvalidValue;
    switch (a.dtype) {
    case DType::kFloat32: return launch_t<float, kLabel>(p, workspace, static_cast<float*>(out), labels, confidence, entropy, stream);
    case DType::kFloat16: return launch_t<__half, kLabel>(p, workspace, static_cast<__half*>(out), labels, confidence, entropy, stream);
    case DType::kBFloat16:
        return launch_t<__nv_bfloat16, kLabel>(p, workspace, static_cast<__nv_bfloat16*>(out), labels, confidence, entropy, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_fused_accumulate(FeatureArgs const& a, void* out, void* workspace, cudaStream_t stream) {
    if (out == nullptr && a.batch > 0) return cudaErrorInvalidValue;
    return dispatch<false>(a, out, nullptr, nullptr, nullptr, workspace, stream);
}

cudaError_t launch_fused_label(FeatureArgs const& a, uint8_t* labels, float* confidence, float* entropy,
    void* workspace, cudaStream_t stream) {
    if ((labels == nullptr || confidence == nullptr || entropy == nullptr) && a.batch > 0) return cudaErrorInvalidValue;
    return dispatch<true>(a, nullptr, labels, confidence, entropy, workspace, stream);
}

}  // namespace ganseg
