// Host-side interface of the fused feature kernels: the head's first layer straight from the
// generator's feature maps, projection on tensor cores included (issue 19).
//
// Plain C++ (no torch), like resample_accumulate.h, so the test suite compiles it with nvcc alone.
//
// The op (ganseg.ops.resample_accumulate is its torch reference):
//     out[n, k] = act( bias[k] + sum_l resize(W_l . F_l[n], size)[k] )
// F_l: the generator's layer-l features [N, C_l, r_l, r_l]; W_l: the weight's column block of layer
// l. resize is ganseg.ops.resize: identity (r = size), area (r > size), bilinear (r < size). Two
// launches, whatever the number of layers, and no allocation beyond one fp32 workspace whose size
// depends only on the shapes (fused_workspace_bytes), so the step is capturable in a CUDA graph:
//   1. project_groups: one grouped GEMM over every resolution below `size` ("up" groups): per
//      group, sum_l W_l . F_l at the group's own resolution (fp32, into the workspace).
//   2. fused_main: per output tile, the GEMM over the layers at or above `size` with the area-down
//      reduction folded into the operand load (no pooled copy is written), then bias + the
//      bilinear taps of every up group + activation, written once; or, for the labeling variant,
//      label / confidence / entropy by an online softmax over the K logits (nothing K-sized stored).
// Tensor cores: FP16 / BF16 inputs use m16n16k16 MMAs; FP32 inputs use TF32 m16n16k8 MMAs, either
// one pass (tf32_passes = 1, torch's allow_tf32 semantics) or three (3xTF32: a = hi + lo, products
// hi.hi + hi.lo + lo.hi; FP32-level accuracy, ganseg's default for FP32 parity). All sums in fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

#include "resample_accumulate.h"

namespace ganseg {

constexpr int32_t kMaxLayers = 32;     // a 1024² config-f generator has 17
constexpr int32_t kMaxUpGroups = 16;   // distinct resolutions below the output size

struct FeatureArgs {
    int32_t num_layers = 0;
    void const* feats[kMaxLayers] = {};  // layer l: contiguous NCHW [batch, ch[l], res[l], res[l]]
    int32_t ch[kMaxLayers] = {};
    int32_t res[kMaxLayers] = {};
    int32_t col[kMaxLayers] = {};        // first weight column of layer l
    void const* weight = nullptr;        // [channels, in_channels] row-major, dtype
    int32_t in_channels = 0;
    void const* bias = nullptr;          // [channels], dtype; nullptr = no bias
    int32_t batch = 0;
    int32_t channels = 0;                // K
    int32_t size = 0;                    // output [batch, channels, size, size]
    int32_t align_corners = 0;
    Activation activation = Activation::kNone;  // ignored by the labeling variant (logits)
    DType dtype = DType::kFloat32;
    int32_t tf32_passes = 3;             // FP32 inputs: 3 (3xTF32) or 1 (TF32)
};

// The launch plan both kernels read (built on the host by make_plan, passed by value).
struct FusedPlan {
    FeatureArgs a;
    int32_t num_main = 0;                // layers with res >= size (identity or area-down)
    int32_t main_layers[kMaxLayers] = {};
    int32_t num_groups = 0;              // up groups, largest reduction (sum of channels) first
    int32_t group_res[kMaxUpGroups] = {};
    int32_t group_first[kMaxUpGroups] = {};  // into up_layers
    int32_t group_count[kMaxUpGroups] = {};
    int32_t up_layers[kMaxLayers] = {};
    int64_t group_ws[kMaxUpGroups] = {};     // float offset of group g's map [batch, channels, r, r]
    int32_t group_blocks[kMaxUpGroups + 1] = {};  // prefix sum: first projection block of group g
    int64_t ws_floats = 0;
};

// nullptr when `a` describes a valid launch, else what is wrong.
char const* check_feature_args(FeatureArgs const& a, bool labeling);
// The plan of a valid `a` (check_feature_args first): host only, no device call.
FusedPlan make_plan(FeatureArgs const& a);
// fp32 workspace the launch needs (the up groups' projected maps); 0 when no layer is below size.
size_t fused_workspace_bytes(FeatureArgs const& a);

// out: [batch, channels, size, size] in a.dtype. Asynchronous on `stream`; no allocation, no sync.
cudaError_t launch_fused_accumulate(FeatureArgs const& a, void* out, void* workspace, cudaStream_t stream);
// Linear heads: labels [batch, size, size] (argmax, first on ties), confidence (max softmax
// probability) and entropy (nats) of the softmax over the K logits, each [batch, size, size].
cudaError_t launch_fused_label(FeatureArgs const& a, uint8_t* labels, float* confidence, float* entropy,
    void* workspace, cudaStream_t stream);

}  // namespace ganseg
