// Launchers of the resample-accumulate kernels (see resample_accumulate.h for the contract).
// Compiles standalone with nvcc: `nvcc -c -gencode arch=compute_80,code=sm_80 resample_accumulate.cu`.
#include "resample_accumulate.cuh"

namespace ganseg {

char const* check_args(ResampleArgs const& a, bool labeling) {
    if (a.num_levels < 1 || a.num_levels > kMaxLevels) return "num_levels must be in [1, kMaxLevels]";
    if (a.batch < 0) return "batch must be >= 0";
    if (a.channels < 1) return "channels must be >= 1";
    if (a.size < 1) return "size must be >= 1";
    if (labeling && a.channels > kMaxLabelClasses) return "labeling needs channels <= 256 (uint8 labels)";
    if (static_cast<int64_t>(a.size) * a.size > INT32_MAX) return "size * size must fit in int32";
    for (int32_t l = 0; l < a.num_levels; ++l) {
        if (a.res[l] < 1) return "every level resolution must be >= 1";
        if (a.maps[l] == nullptr && a.batch > 0) return "a level map pointer is null";
    }
    return check_dtype_activation(a.dtype, a.activation);
}

namespace {

dim3 grid_for(ResampleArgs const& a, int64_t rows) {
    int64_t const pixels = static_cast<int64_t>(a.size) * a.size;
    unsigned const gx = static_cast<unsigned>((pixels + kThreadsPerBlock - 1) / kThreadsPerBlock);
    unsigned const gy = static_cast<unsigned>(rows < 65535 ? rows : 65535);  // kernels loop over the rest
    return dim3(gx, gy, 1);
}

template <typename T>
void accumulate_t(ResampleArgs const& a, void* out, cudaStream_t stream) {
    int64_t const chunks = (a.channels + kChannelsPerThread - 1) / kChannelsPerThread;
    resample_accumulate_kernel<T><<<grid_for(a, a.batch * chunks), kThreadsPerBlock, 0, stream>>>(a, static_cast<T*>(out));
}

}  // namespace

cudaError_t launch_resample_accumulate(ResampleArgs const& a, void* out, cudaStream_t stream) {
    if (check_args(a, false) != nullptr || (out == nullptr && a.batch > 0)) return cudaErrorInvalidValue;
    if (a.batch == 0) return cudaSuccess;
    switch (a.dtype) {
    case DType::kFloat32: accumulate_t<float>(a, out, stream); break;
    case DType::kFloat16: accumulate_t<__half>(a, out, stream); break;
    case DType::kBFloat16: accumulate_t<__nv_bfloat16>(a, out, stream); break;
    }
    return cudaGetLastError();
}

}  // namespace ganseg
