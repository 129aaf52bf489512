#include "runner.h"

#include <dlfcn.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include <cstring>

#include "util.h"

namespace pe {
namespace {

using tvm::ffi::Any;
using tvm::ffi::AnyView;
using tvm::ffi::Function;
using tvm::ffi::Module;
using tvm::ffi::Tensor;

// The Relax VM's allocator kinds (tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR).
constexpr int64_t kPooledAllocator = 2;

DLDataType DataTypeOf(const std::string& dtype) {
  if (dtype == "float16") return DLDataType{kDLFloat, 16, 1};
  if (dtype == "bfloat16") return DLDataType{kDLBfloat, 16, 1};
  return DLDataType{kDLFloat, 32, 1};
}

Function Global(const char* name) {
  std::optional<Function> function = Function::GetGlobal(name);
  if (!function) throw std::runtime_error(std::string("the TVM runtime lacks ") + name);
  return *function;
}

// The TVM runtime's own CUDA support lives in a separate library of the wheel.
void LoadCudaRuntime() {
  const std::string path = std::string(PE_TVM_LIB_DIR) + "/libtvm_runtime_cuda.so";
  if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
    Fail("--device cuda needs TVM's CUDA runtime (", path, ") and the CUDA driver: ", dlerror());
  }
}

}  // namespace

std::string DeviceForTarget(const std::string& target_kind) {
  return target_kind == "cuda" ? "cuda" : "cpu";
}

Runner::Runner(const TowerFiles& artifact, const std::string& dtype, DLDeviceType device)
    : artifact_(artifact), device_{device, 0}, dtype_(DataTypeOf(dtype)) {
  if (device == kDLCUDA) LoadCudaRuntime();
  // Read and check the weights before anything is loaded on the device.
  MappedFile weights(artifact.weights_path, "artifact weights");
  VerifyWeights(artifact, weights);

  VerifyLibrary(artifact);
  Module library = [&] {
    try {
      return Module::LoadFromFile(artifact.library_path);
    } catch (const tvm::ffi::Error& err) {
      Fail("cannot load the library ", artifact.library_path, " (corrupt, or built for another ",
           "machine?): ", err.message());
    }
  }();
  auto load_executable = library->GetFunction("vm_load_executable", true);
  if (!load_executable) {
    Fail("library ", artifact.library_path, " is not a Relax VM executable");
  }
  Module vm = (*load_executable)().cast<Module>();
  // The device, then the CPU (the VM runs shape functions there), each with a pooled allocator.
  Function init = vm->GetFunction("vm_initialization").value();
  if (device == kDLCPU) {
    init(static_cast<int64_t>(kDLCPU), int64_t{0}, kPooledAllocator);
  } else {
    init(static_cast<int64_t>(device), int64_t{0}, kPooledAllocator, static_cast<int64_t>(kDLCPU),
         int64_t{0}, kPooledAllocator);
  }
  vm_ = vm;

  for (const ParamEntry& p : artifact.params) {
    params_.push_back(Upload(weights.data() + p.offset, p.shape, dtype_));
  }
}

const std::vector<Any>& Runner::WeightsFor(const std::string& function) {
  auto cached = weights_.find(function);
  if (cached != weights_.end()) return cached->second;
  // Each exported function has its own one-off weight transform (packing for the CPU kernels).
  std::vector<Any>& weights = weights_[function];
  auto transform = vm_.value()->GetFunction(function + "_transform_params");
  if (transform) {
    Any packed = (*transform)(params_);
    for (const Any& item : packed.cast<tvm::ffi::Array<Any>>()) weights.push_back(item);
  } else {
    for (const Tensor& param : params_) weights.push_back(param);
  }
  return weights;
}

bool Runner::HasFunction(const std::string& name) {
  try {
    return vm_.value()->GetFunction(name).has_value();
  } catch (const tvm::ffi::Error&) {
    return false;
  }
}

Tensor Runner::Upload(const void* data, const std::vector<int64_t>& shape, DLDataType dtype) {
  static const Function alloc = Global("runtime.TVMTensorAllocWithScope");
  static const Function copy_from = Global("runtime.TVMTensorCopyFromBytes");
  Tensor tensor = alloc(tvm::ffi::Shape(shape), dtype, device_, Any()).cast<Tensor>();
  int64_t nbytes = static_cast<int64_t>(tvm::ffi::GetDataSize(tensor.numel(), dtype));
  copy_from(tensor, const_cast<void*>(data), nbytes);
  return tensor;
}

FloatArray Runner::Run(const std::string& function, const FloatArray& pixels) {
  // The input in the model's dtype.
  Tensor input;
  if (dtype_.bits == 32) {
    input = Upload(pixels.data.data(), pixels.shape, dtype_);
  } else {
    std::vector<uint16_t> narrow(pixels.data.size());
    for (size_t i = 0; i < narrow.size(); ++i) {
      narrow[i] = dtype_.code == kDLBfloat ? FloatToBfloat16(pixels.data[i])
                                           : FloatToHalf(pixels.data[i]);
    }
    input = Upload(narrow.data(), pixels.shape, dtype_);
  }
  return Call(function, input);
}

FloatArray Runner::RunIds(const std::string& function, const std::vector<int32_t>& ids,
                          const std::vector<int64_t>& shape) {
  return Call(function, Upload(ids.data(), shape, DLDataType{kDLInt, 32, 1}));
}

FloatArray Runner::Call(const std::string& function, const Tensor& input) {
  static const Function copy_to = Global("runtime.TVMTensorCopyToBytes");
  Module vm = vm_.value();
  auto fn = vm->GetFunction(function);
  if (!fn) Fail("library ", artifact_.library_path, " has no function ", function);
  const std::vector<Any>& weights = WeightsFor(function);
  const int64_t arity = vm->GetFunction("get_function_arity").value()(function).cast<int64_t>();
  if (arity != static_cast<int64_t>(weights.size()) + 1) {
    Fail("library ", artifact_.library_path, " function ", function, " takes ", arity,
         " arguments, but the artifact has ", weights.size(), " weights (+1 input)");
  }

  std::vector<AnyView> args;
  args.reserve(weights.size() + 1);
  args.emplace_back(input);
  for (const Any& w : weights) args.emplace_back(w);
  Any result;
  fn.value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  std::optional<Tensor> output = result.as<Tensor>();
  if (!output) Fail("function ", function, " did not return a tensor");

  FloatArray out;
  for (int64_t dim : output->shape()) out.shape.push_back(dim);
  const size_t count = static_cast<size_t>(output->numel());
  out.data.resize(count);
  const DLDataType got = output->dtype();
  if (got.code == kDLFloat && got.bits == 32) {
    copy_to(*output, static_cast<void*>(out.data.data()), static_cast<int64_t>(count * 4));
  } else if ((got.code == kDLFloat || got.code == kDLBfloat) && got.bits == 16) {
    std::vector<uint16_t> narrow(count);
    copy_to(*output, static_cast<void*>(narrow.data()), static_cast<int64_t>(count * 2));
    for (size_t i = 0; i < count; ++i) {
      out.data[i] = got.code == kDLBfloat ? Bfloat16ToFloat(narrow[i]) : HalfToFloat(narrow[i]);
    }
  } else {
    Fail("function ", function, " returned an unexpected dtype");
  }
  return out;
}

}  // namespace pe
