// TensorRT IPluginV3 for GansegResampleAccumulate: see resample_accumulate_plugin.h for the contract.
#include "resample_accumulate_plugin.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

using namespace nvinfer1;

namespace ganseg {
namespace trt_plugin {
namespace {

// ---- logging through TensorRT's logger (setLoggerFinder), stderr before it is known -----------
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

void logError(std::string const& msg) noexcept {
    std::string const text = std::string(kPluginName) + ": " + msg;
    ILogger* logger{nullptr};
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder != nullptr) logger = gLoggerFinder->findLogger();
    }
    if (logger != nullptr) {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    } else {
        std::fprintf(stderr, "[TensorRT plugin] %s\n", text.c_str());
    }
}

constexpr int32_t kSuccess = 0;
constexpr int32_t kFailure = -1;

bool isSupportedType(DataType t) {
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

ganseg::DType toKernelType(DataType t) {
    switch (t) {
    case DataType::kHALF: return ganseg::DType::kFloat16;
    case DataType::kBF16: return ganseg::DType::kBFloat16;
    default: return ganseg::DType::kFloat32;
    }
}

bool parseActivation(std::string const& name, ganseg::Activation& out) {
    if (name == "none") { out = ganseg::Activation::kNone; return true; }
    if (name == "relu") { out = ganseg::Activation::kReLU; return true; }
    if (name == "lrelu") { out = ganseg::Activation::kLeakyReLU; return true; }
    return false;
}

// Checks the static structure (counts, ranks, matching N and K, square maps, bias [K]); dimensions
// that are still unknown at build time (-1) are skipped.
bool validShapes(Dims const* dims, int32_t nbInputs, std::string& why) {
    int32_t const levels = nbInputs - 1;
    if (levels < 1 || levels > ganseg::kMaxLevels) {
        why = "needs 1.." + std::to_string(ganseg::kMaxLevels) + " maps plus a bias input, got " + std::to_string(nbInputs) + " inputs";
        return false;
    }
    auto known = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
    for (int32_t l = 0; l < levels; ++l) {
        Dims const& d = dims[l];
        if (d.nbDims != 4) { why = "map " + std::to_string(l) + " must be 4-D [N, K, r, r]"; return false; }
        if (!known(d.d[2], d.d[3])) { why = "map " + std::to_string(l) + " must be square"; return false; }
        if (!known(d.d[0], dims[0].d[0]) || !known(d.d[1], dims[0].d[1])) {
            why = "map " + std::to_string(l) + " has another N or K than map 0";
            return false;
        }
    }
    Dims const& b = dims[levels];
    if (b.nbDims != 1 || !known(b.d[0], dims[0].d[1])) { why = "bias must be [K]"; return false; }
    return true;
}

}  // namespace

// ============================================================================================
// Plugin

ResampleAccumulatePlugin::ResampleAccumulatePlugin(int32_t size, int32_t alignCorners, std::string activation)
    : mSize(size), mAlignCorners(alignCorners), mActivation(std::move(activation)) {}

IPluginCapability* ResampleAccumulatePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* ResampleAccumulatePlugin::clone() noexcept {
    try {
        auto* copy = new ResampleAccumulatePlugin(mSize, mAlignCorners, mActivation);
        copy->mNbInputs = mNbInputs;  // (serialized fields are rebuilt by getFieldsToSerialize)
        return copy;
    } catch (std::exception const& e) {
        logError(std::string("clone: ") + e.what());
    }
    return nullptr;
}

char const* ResampleAccumulatePlugin::getPluginName() const noexcept { return kPluginName; }
char const* ResampleAccumulatePlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* ResampleAccumulatePlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t ResampleAccumulatePlugin::getNbOutputs() const noexcept { return 1; }

int32_t ResampleAccumulatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept {
    if (nbOutputs != 1 || nbInputs < 2 || !isSupportedType(inputTypes[0])) {
        logError("getOutputDataTypes: expects >= 2 float/half/bf16 inputs and one output");
        return kFailure;
    }
    outputTypes[0] = inputTypes[0];  // the output has the maps' type (accumulation is fp32 inside)
    return kSuccess;
}

int32_t ResampleAccumulatePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept {
    if (nbOutputs != 1 || nbInputs < 2 || inputs[0].nbDims != 4) {
        logError("getOutputShapes: expects maps [N, K, r, r]..., bias [K] and one output");
        return kFailure;
    }
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[0].d[1];
    outputs[0].d[2] = exprBuilder.constant(mSize);
    outputs[0].d[3] = exprBuilder.constant(mSize);
    return kSuccess;
}

bool ResampleAccumulatePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return isSupportedType(d.type);
    return d.type == inOut[0].desc.type;  // every map, the bias and the output share one type
}

int32_t ResampleAccumulatePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    try {
        std::vector<Dims> dims(nbInputs);
        for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].desc.dims;
        std::string why;
        if (nbOutputs != 1 || !validShapes(dims.data(), nbInputs, why)) {
            logError("configurePlugin: " + (why.empty() ? std::string("expects one output") : why));
            return kFailure;
        }
        mNbInputs = nbInputs;
        return kSuccess;
    } catch (std::exception const& e) {
        logError(std::string("configurePlugin: ") + e.what());
    }
    return kFailure;
}

size_t ResampleAccumulatePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept {
    return 0;
}

int32_t ResampleAccumulatePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    try {
        std::vector<Dims> dims(nbInputs);
        for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].dims;
        std::string why;
        if (nbOutputs != 1 || !validShapes(dims.data(), nbInputs, why)) {
            logError("onShapeChange: " + (why.empty() ? std::string("expects one output") : why));
            return kFailure;
        }
        mNbInputs = nbInputs;
        return kSuccess;
    } catch (std::exception const& e) {
        logError(std::string("onShapeChange: ") + e.what());
    }
    return kFailure;
}

int32_t ResampleAccumulatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept {
    int32_t const levels = mNbInputs - 1;
    if (levels < 1 || levels > ganseg::kMaxLevels) {
        logError("enqueue: called before configurePlugin/onShapeChange");
        return kFailure;
    }
    ganseg::ResampleArgs a;
    a.num_levels = levels;
    a.batch = static_cast<int32_t>(inputDesc[0].dims.d[0]);
    a.channels = static_cast<int32_t>(inputDesc[0].dims.d[1]);
    a.size = mSize;
    a.align_corners = mAlignCorners;
    a.dtype = toKernelType(inputDesc[0].type);
    if (!parseActivation(mActivation, a.activation)) {
        logError("enqueue: unknown activation " + mActivation);
        return kFailure;
    }
    for (int32_t l = 0; l < levels; ++l) {
        a.maps[l] = inputs[l];
        a.res[l] = static_cast<int32_t>(inputDesc[l].dims.d[3]);
    }
    a.bias = inputs[levels];
    if (char const* bad = ganseg::check_args(a, false)) {
        logError(std::string("enqueue: ") + bad);
        return kFailure;
    }
    cudaError_t const err = ganseg::launch_resample_accumulate(a, outputs[0], stream);
    if (err != cudaSuccess) {
        logError(std::string("enqueue: kernel launch failed: ") + cudaGetErrorString(err));
        return kFailure;
    }
    return kSuccess;
}

IPluginV3* ResampleAccumulatePlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
    return clone();  // no per-context resources (no cuBLAS/cuDNN handles, no workspace)
}

PluginFieldCollection const* ResampleAccumulatePlugin::getFieldsToSerialize() noexcept {
    mFields.clear();
    mFields.emplace_back("size", &mSize, PluginFieldType::kINT32, 1);
    mFields.emplace_back("align_corners", &mAlignCorners, PluginFieldType::kINT32, 1);
    mFields.emplace_back("activation", mActivation.c_str(), PluginFieldType::kCHAR,
        static_cast<int32_t>(mActivation.size() + 1));
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    return &mFieldCollection;
}

// ============================================================================================
// Creator (the ONNX parser hands it the node's attributes that getFieldNames lists: ints arrive
// as kINT32, strings as kCHAR with a terminating NUL; the runtime hands back getFieldsToSerialize)

ResampleAccumulatePluginCreator::ResampleAccumulatePluginCreator() {
    mFields.emplace_back("size", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("align_corners", nullptr, PluginFieldType::kINT32, 1);
    mFields.emplace_back("activation", nullptr, PluginFieldType::kCHAR, 0);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* ResampleAccumulatePluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* ResampleAccumulatePluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* ResampleAccumulatePluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }
PluginFieldCollection const* ResampleAccumulatePluginCreator::getFieldNames() noexcept { return &mFieldCollection; }

IPluginV3* ResampleAccumulatePluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept {
    try {
        int32_t size = -1;
        int32_t alignCorners = 0;
        std::string activation = "none";
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr || f.data == nullptr) continue;
            std::string const field(f.name);
            auto readInt = [&f]() -> int64_t {
                if (f.type == PluginFieldType::kINT64) return *static_cast<int64_t const*>(f.data);
                return *static_cast<int32_t const*>(f.data);
            };
            if (field == "size") {
                size = static_cast<int32_t>(readInt());
            } else if (field == "align_corners") {
                alignCorners = static_cast<int32_t>(readInt());
            } else if (field == "activation" && f.type == PluginFieldType::kCHAR) {
                char const* text = static_cast<char const*>(f.data);
                activation.assign(text, strnlen(text, static_cast<size_t>(f.length > 0 ? f.length : 0)));
            }
        }
        ganseg::Activation act;
        if (size < 1 || (alignCorners != 0 && alignCorners != 1) || !parseActivation(activation, act)) {
            logError(std::string("createPlugin(") + (name ? name : "") + "): needs size >= 1, align_corners 0/1 and "
                "activation none/relu/lrelu; got size " + std::to_string(size) + ", align_corners "
                + std::to_string(alignCorners) + ", activation '" + activation + "'");
            return nullptr;
        }
        return new ResampleAccumulatePlugin(size, alignCorners, activation);
    } catch (std::exception const& e) {
        logError(std::string("createPlugin: ") + e.what());
    }
    return nullptr;
}

}  // namespace trt_plugin
}  // namespace ganseg

// ============================================================================================
// Library entry points.
// Dynamic registration (trt.get_plugin_registry().load_library(path), trtexec --dynamicPlugins,
// BuilderConfig.plugins_to_serialize): TensorRT calls setLoggerFinder and getCreators.
// Static registration (GANSEG_TRT_STATIC_REGISTRATION, libganseg_trt_plugin_autoreg.so): the creator
// registers itself when the library is dlopen-ed (ctypes.CDLL, LD_PRELOAD, Triton's
// --backend-config=tensorrt,plugins=PATH, trtexec --staticPlugins). A library must not do both:
// loadLibrary refuses creators that are already registered.

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(ganseg::trt_plugin::gLoggerMutex);
    if (ganseg::trt_plugin::gLoggerFinder == nullptr) ganseg::trt_plugin::gLoggerFinder = finder;
}

#ifndef GANSEG_TRT_STATIC_REGISTRATION
extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static ganseg::trt_plugin::ResampleAccumulatePluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
#else
namespace {
struct StaticRegistration {
    StaticRegistration() {
        static ganseg::trt_plugin::ResampleAccumulatePluginCreator creator;
        getPluginRegistry()->registerCreator(creator, ganseg::trt_plugin::kPluginNamespace);
    }
} const gStaticRegistration;
}  // namespace
#endif
