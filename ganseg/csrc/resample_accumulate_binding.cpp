// Thin torch binding of the resample-accumulate kernels (NVlabs torch_utils/ops pattern): checks
// every tensor with TORCH_CHECK, sets the device guard, launches on torch's current stream. All
// kernel code lives in resample_accumulate.cu (plain CUDA C++), which this file never includes.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <tuple>
#include <vector>

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

std::tuple<at::Tensor, at::Tensor> resample_label(std::vector<at::Tensor> const& maps,
    c10::optional<at::Tensor> const& bias, int64_t size, bool align_corners) {
    ganseg::ResampleArgs const a = make_args(maps, bias, size, align_corners, 0);
    c10::cuda::CUDAGuard const guard(maps[0].device());
    char const* bad = ganseg::check_args(a, true);
    TORCH_CHECK(bad == nullptr, "ganseg resample_label: ", bad ? bad : "");
    auto const opts = maps[0].options();
    at::Tensor labels = at::empty({a.batch, a.size, a.size}, opts.dtype(at::kByte));
    at::Tensor confidence = at::empty({a.batch, a.size, a.size}, opts.dtype(at::kFloat));
    cudaError_t const err = ganseg::launch_resample_label(a, labels.data_ptr<uint8_t>(), confidence.data_ptr<float>(),
        c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "ganseg resample_label: kernel launch failed: ", cudaGetErrorString(err));
    return {labels, confidence};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "ganseg resample-accumulate CUDA kernels (see ganseg/ops.py)";
    m.def("resample_accumulate", &resample_accumulate, "act(sum_l resize(maps_l, size) + bias) -> [N, K, size, size]",
        py::arg("maps"), py::arg("bias"), py::arg("size"), py::arg("align_corners"), py::arg("activation"));
    m.def("resample_label", &resample_label, "argmax label (uint8) and max softmax probability per pixel",
        py::arg("maps"), py::arg("bias"), py::arg("size"), py::arg("align_corners"));
}
