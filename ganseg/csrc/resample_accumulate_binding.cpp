// Thin torch binding of the resample-accumulate and fused feature kernels (NVlabs torch_utils/ops
// pattern): checks every tensor with TORCH_CHECK, sets the device guard, launches on torch's
// current stream, never synchronizes. All kernel code lives in resample_accumulate.cu and
// fused_features.cu (plain CUDA C++), which this file never includes.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <tuple>
#include <vector>

#include "fused_features.h"
#include "resample_accumulate.h"

namespace {

ganseg::DType dtype_of(at::Tensor const& t) {
    switch (t.scalar_type()) {
    case at::kFloat: return ganseg::DType::kFloat32;
    case at::kHalf: return ganseg::DType::kFloat16;
    case at::kBFloat16: return ganseg::DType::kBFloat16;
    default: TORCH_CHECK(false, "ganseg resample_accumulate: maps must be float32, float16 or bfloat16, got ", t.scalar_type());
    }
    return ganseg::DType::kFloat32;
}

ganseg::ResampleArgs make_args(std::vector<at::Tensor> const& maps, c10::optional<at::Tensor> const& bias, int64_t size,
    bool align_corners, int64_t activation) {
    TORCH_CHECK(!maps.empty(), "ganseg resample_accumulate: no maps given");
    TORCH_CHECK(static_cast<int64_t>(maps.size()) <= ganseg::kMaxLevels, "ganseg resample_accumulate: at most ",
        ganseg::kMaxLevels, " maps, got ", maps.size());
    TORCH_CHECK(size >= 1 && size * size <= INT32_MAX, "ganseg resample_accumulate: bad output size ", size);
    TORCH_CHECK(activation >= 0 && activation <= 2, "ganseg resample_accumulate: activation code must be 0, 1 or 2");
    at::Tensor const& m0 = maps[0];
    TORCH_CHECK(m0.is_cuda(), "ganseg resample_accumulate: maps must be CUDA tensors");
    TORCH_CHECK(m0.dim() == 4, "ganseg resample_accumulate: maps must be [N, K, r, r], got ", m0.sizes());
    ganseg::ResampleArgs a;
    a.num_levels = static_cast<int32_t>(maps.size());
    a.batch = static_cast<int32_t>(m0.size(0));
    a.channels = static_cast<int32_t>(m0.size(1));
    a.size = static_cast<int32_t>(size);
    a.align_corners = align_corners ? 1 : 0;
    a.activation = static_cast<ganseg::Activation>(activation);
    a.dtype = dtype_of(m0);
    for (size_t l = 0; l < maps.size(); ++l) {
        at::Tensor const& m = maps[l];
        TORCH_CHECK(m.device() == m0.device(), "ganseg resample_accumulate: map ", l, " is on ", m.device(), ", map 0 on ",
            m0.device());
        TORCH_CHECK(m.scalar_type() == m0.scalar_type(), "ganseg resample_accumulate: map ", l, " has dtype ",
            m.scalar_type(), ", map 0 ", m0.scalar_type());
        TORCH_CHECK(m.dim() == 4 && m.size(0) == m0.size(0) && m.size(1) == m0.size(1) && m.size(2) == m.size(3),
            "ganseg resample_accumulate: map ", l, " must be [", m0.size(0), ", ", m0.size(1), ", r, r], got ", m.sizes());
        TORCH_CHECK(m.is_contiguous(), "ganseg resample_accumulate: map ", l, " must be contiguous (NCHW)");
        a.maps[l] = m.data_ptr();
        a.res[l] = static_cast<int32_t>(m.size(2));
    }
    if (bias.has_value() && bias->defined()) {
        at::Tensor const& b = *bias;
        TORCH_CHECK(b.device() == m0.device() && b.scalar_type() == m0.scalar_type(),
            "ganseg resample_accumulate: bias must match the maps' device and dtype");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == m0.size(1) && b.is_contiguous(),
            "ganseg resample_accumulate: bias must be a contiguous [K] tensor, got ", b.sizes());
        a.bias = b.data_ptr();
    }
    return a;
}

at::Tensor resample_accumulate(std::vector<at::Tensor> const& maps, c10::optional<at::Tensor> const& bias, int64_t size,
    bool align_corners, int64_t activation) {
    ganseg::ResampleArgs const a = make_args(maps, bias, size, align_corners, activation);
    c10::cuda::CUDAGuard const guard(maps[0].device());
    char const* bad = ganseg::check_args(a, false);
    TORCH_CHECK(bad == nullptr, "ganseg resample_accumulate: ", bad ? bad : "");
    at::Tensor out = at::empty({a.batch, a.channels, a.size, a.size}, maps[0].options());
    cudaError_t const err = ganseg::launch_resample_accumulate(a, out.data_ptr(), c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "ganseg resample_accumulate: kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

ganseg::FeatureArgs make_feature_args(std::vector<at::Tensor> const& feats, at::Tensor const& weight,
    c10::optional<at::Tensor> const& bias, int64_t size, bool align_corners, int64_t activation, int64_t tf32_passes,
    char const* op) {
    TORCH_CHECK(!feats.empty(), op, ": no feature maps given");
    TORCH_CHECK(static_cast<int64_t>(feats.size()) <= ganseg::kMaxLayers, op, ": at most ", ganseg::kMaxLayers,
        " feature maps, got ", feats.size());
    TORCH_CHECK(activation >= 0 && activation <= 2, op, ": activation code must be 0, 1 or 2");
    at::Tensor const& f0 = feats[0];
    TORCH_CHECK(f0.is_cuda() && f0.dim() == 4, op, ": features must be CUDA [N, C, r, r] tensors, got ", f0.sizes());
    TORCH_CHECK(weight.device() == f0.device() && weight.scalar_type() == f0.scalar_type(), op,
        ": weight must match the features' device and dtype");
    TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), op, ": weight must be a contiguous [K, sum(C_l)] tensor, got ",
        weight.sizes());
    ganseg::FeatureArgs a;
    a.num_layers = static_cast<int32_t>(feats.size());
    a.batch = static_cast<int32_t>(f0.size(0));
    a.channels = static_cast<int32_t>(weight.size(0));
    a.in_channels = static_cast<int32_t>(weight.size(1));
    a.weight = weight.data_ptr();
    a.size = static_cast<int32_t>(size);
    a.align_corners = align_corners ? 1 : 0;
    a.activation = static_cast<ganseg::Activation>(activation);
    a.dtype = dtype_of(f0);
    a.tf32_passes = static_cast<int32_t>(tf32_passes);
    int32_t col = 0;
    for (size_t l = 0; l < feats.size(); ++l) {
        at::Tensor const& f = feats[l];
        TORCH_CHECK(f.device() == f0.device() && f.scalar_type() == f0.scalar_type(), op, ": feature ", l,
            " must match feature 0's device and dtype");
        TORCH_CHECK(f.dim() == 4 && f.size(0) == f0.size(0) && f.size(2) == f.size(3), op, ": feature ", l, " must be [",
            f0.size(0), ", C, r, r], got ", f.sizes());
        TORCH_CHECK(f.is_contiguous(), op, ": feature ", l, " must be contiguous (NCHW)");
        a.feats[l] = f.data_ptr();
        a.ch[l] = static_cast<int32_t>(f.size(1));
        a.res[l] = static_cast<int32_t>(f.size(2));
        a.col[l] = col;
        col += a.ch[l];
    }
    TORCH_CHECK(col == a.in_channels, op, ": weight has ", a.in_channels, " input channels, features have ", col);
    if (bias.has_value() && bias->defined()) {
        at::Tensor const& b = *bias;
        TORCH_CHECK(b.device() == f0.device() && b.scalar_type() == f0.scalar_type() && b.dim() == 1 &&
                b.size(0) == a.channels && b.is_contiguous(),
            op, ": bias must be a contiguous [K] tensor of the features' device and dtype");
        a.bias = b.data_ptr();
    }
    return a;
}

// The fp32 workspace of the up groups: its size depends only on the shapes, and torch's caching
// allocator serves it from the graph's private pool under CUDA-graph capture.
at::Tensor workspace_for(ganseg::FeatureArgs const& a, at::Tensor const& like) {
    size_t const bytes = ganseg::fused_workspace_bytes(a);
    return at::empty({static_cast<int64_t>(bytes / sizeof(float))}, like.options().dtype(at::kFloat));
}

at::Tensor fused_accumulate(std::vector<at::Tensor> const& feats, at::Tensor const& weight,
    c10::optional<at::Tensor> const& bias, int64_t size, bool align_corners, int64_t activation, int64_t tf32_passes) {
    char const* op = "ganseg fused_accumulate";
    ganseg::FeatureArgs const a = make_feature_args(feats, weight, bias, size, align_corners, activation, tf32_passes, op);
    c10::cuda::CUDAGuard const guard(feats[0].device());
    char const* bad = ganseg::check_feature_args(a, false);
    TORCH_CHECK(bad == nullptr, op, ": ", bad ? bad : "");
    at::Tensor out = at::empty({a.batch, a.channels, a.size, a.size}, feats[0].options());
    at::Tensor ws = workspace_for(a, feats[0]);
    cudaError_t const err = ganseg::launch_fused_accumulate(a, out.data_ptr(), ws.data_ptr(), c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_label(std::vector<at::Tensor> const& feats, at::Tensor const& weight,
    c10::optional<at::Tensor> const& bias, int64_t size, bool align_corners, int64_t tf32_passes) {
    char const* op = "ganseg fused_label";
    ganseg::FeatureArgs const a = make_feature_args(feats, weight, bias, size, align_corners, 0, tf32_passes, op);
    c10::cuda::CUDAGuard const guard(feats[0].device());
    char const* bad = ganseg::check_feature_args(a, true);
    TORCH_CHECK(bad == nullptr, op, ": ", bad ? bad : "");
    auto const opts = feats[0].options();
    at::Tensor labels = at::empty({a.batch, a.size, a.size}, opts.dtype(at::kByte));
    at::Tensor confidence = at::empty({a.batch, a.size, a.size}, opts.dtype(at::kFloat));
    at::Tensor entropy = at::empty({a.batch, a.size, a.size}, opts.dtype(at::kFloat));
    at::Tensor ws = workspace_for(a, feats[0]);
    cudaError_t const err = ganseg::launch_fused_label(a, labels.data_ptr<uint8_t>(), confidence.data_ptr<float>(),
        entropy.data_ptr<float>(), ws.data_ptr(), c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
    return {labels, confidence, entropy};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "ganseg resample-accumulate CUDA kernels (see ganseg/ops.py)";
    m.def("resample_accumulate", &resample_accumulate, "act(sum_l resize(maps_l, size) + bias) -> [N, K, size, size]",
        py::arg("maps"), py::arg("bias"), py::arg("size"), py::arg("align_corners"), py::arg("activation"));
    m.def("fused_accumulate", &fused_accumulate,
        "act(sum_l resize(W_l . F_l, size) + bias) from the features, projection on tensor cores -> [N, K, size, size]",
        py::arg("feats"), py::arg("weight"), py::arg("bias"), py::arg("size"), py::arg("align_corners"),
        py::arg("activation"), py::arg("tf32_passes"));
    m.def("fused_label", &fused_label, "label (uint8), confidence and entropy (float32) of a linear head per pixel",
        py::arg("feats"), py::arg("weight"), py::arg("bias"), py::arg("size"), py::arg("align_corners"),
        py::arg("tf32_passes"));
}
