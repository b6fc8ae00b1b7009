// Host-side interface of the resample-accumulate CUDA kernels.
//
// Plain C++ (no torch, no TensorRT, no device code), so that three callers share one kernel source:
// the torch extension's binding (resample_accumulate_binding.cpp), the TensorRT IPluginV3
// (export/plugin/), and the test suite, which compiles resample_accumulate.cu with nvcc alone.
//
// The op (ganseg.ops.resample_projected is its torch reference):
//     out[n, k] = act( sum_l resize(maps_l[n, k], size) + bias[k] )
// with resize exactly as ganseg.ops.resize: bilinear (PyTorch's align_corners semantics) when
// r_l < size, area (adaptive average pooling) when r_l > size, identity when equal. Inputs are the
// per-resolution *projected* maps [N, K, r_l, r_l] (the head's first 1x1 layer already applied per
// layer block by a GEMM), so the kernel reads K-channel maps and writes the K-channel result once.
// This is the TensorRT plugin's kernel and ganseg.ops.resample_projected's; the op on the
// generator's features themselves (projection included) is fused_features.h.
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

namespace ganseg {

constexpr int32_t kMaxLevels = 16;          // resolutions 4..1024 are 9; room for unmerged layers
constexpr float kLeakyReLUSlope = 0.2f;     // ganseg.heads uses nn.LeakyReLU(0.2)
constexpr int32_t kMaxLabelClasses = 256;   // labels are uint8

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class Activation : int32_t { kNone = 0, kReLU = 1, kLeakyReLU = 2 };

struct ResampleArgs {
    int32_t num_levels = 0;
    void const* maps[kMaxLevels] = {};      // level l: contiguous NCHW [batch, channels, res[l], res[l]]
    int32_t res[kMaxLevels] = {};
    void const* bias = nullptr;             // [channels], same dtype as the maps; nullptr = no bias
    int32_t batch = 0;
    int32_t channels = 0;                   // K
    int32_t size = 0;                       // output is [batch, channels, size, size]
    int32_t align_corners = 0;              // bilinear only, as in torch.nn.functional.interpolate
    Activation activation = Activation::kNone;
    DType dtype = DType::kFloat32;
};

// nullptr when dtype and activation are ones the kernels implement, else a message (every launcher's
// check_args calls it: the enums travel as int32 through the binding and the plugin).
inline char const* check_dtype_activation(DType dtype, Activation activation) {
    switch (dtype) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16: break;
    default: return "dtype must be float32, float16 or bfloat16";
    }
    switch (activation) {
    case Activation::kNone:
    case Activation::kReLU:
    case Activation::kLeakyReLU: break;
    default: return "activation must be none, relu or lrelu";
    }
    return nullptr;
}

// nullptr when `a` describes a valid launch, else a message saying what is wrong. `labeling`: also
// require channels <= kMaxLabelClasses (the fused labeling variant's limit, fused_features.h).
char const* check_args(ResampleArgs const& a, bool labeling);

// out: [batch, channels, size, size] in a.dtype. Accumulates in fp32. Asynchronous on `stream`.
cudaError_t launch_resample_accumulate(ResampleArgs const& a, void* out, cudaStream_t stream);

}  // namespace ganseg
