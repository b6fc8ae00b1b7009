// TensorRT IPluginV3 for the ONNX node `GansegResampleAccumulate` (domain "ganseg"), written by
// `ganseg export onnx --labeler --plugin` (export/labeler.py).
//
// Node contract: attributes plugin_version="1", plugin_namespace="ganseg", size (int),
// align_corners (int, 0/1), activation ("none" | "relu" | "lrelu", slope 0.2); inputs: the
// per-resolution projected maps [N, K, r, r] (float32, float16 or bfloat16; one type for all) in
// increasing r, then bias [K]; output [N, K, size, size] = act(sum_r resize(P_r, size) + bias), resize
// as ganseg.ops.resize. The work is the kernel of ganseg/csrc/resample_accumulate.cu, the same
// source the torch extension builds: this file only adapts TensorRT's interfaces to it.
//
// NOT RUN: written against the TensorRT 10 headers (IPluginV3 + IPluginV3OneCore/Build/Runtime,
// IPluginCreatorV3One), compiled only where TensorRT is installed (see CMakeLists.txt).
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "resample_accumulate.h"

namespace ganseg {
namespace trt_plugin {

constexpr char const* kPluginName = "GansegResampleAccumulate";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "ganseg";

class ResampleAccumulatePlugin : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime {
public:
    ResampleAccumulatePlugin(int32_t size, int32_t alignCorners, std::string activation);
    ~ResampleAccumulatePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t mSize;
    int32_t mAlignCorners;
    std::string mActivation;
    int32_t mNbInputs{0};  // maps + bias, known from configurePlugin (build) / onShapeChange (runtime)
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class ResampleAccumulatePluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    ResampleAccumulatePluginCreator();
    ~ResampleAccumulatePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

}  // namespace trt_plugin
}  // namespace ganseg
