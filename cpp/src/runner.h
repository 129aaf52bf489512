// The TVM side: load model.so, start the Relax VM, put the weights on the device, run.
#ifndef PE_INFER_RUNNER_H_
#define PE_INFER_RUNNER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>

#include <map>
#include <string>
#include <vector>

#include "artifact.h"
#include "npy.h"

namespace pe {

class Runner {
 public:
  // Loads the library and the weights (checked against the metadata). Each function's one-off
  // weight transform (packing for the CPU kernels) runs on its first call.
  Runner(const Artifact& artifact, DLDeviceType device);

  // Whether the library itself has a function of this name.
  bool HasFunction(const std::string& name);

  // `function`(pixels, *weights): float32 (N, 3, H, W) in, float32 out (converted from and to
  // the model's dtype as NumPy's astype does).
  FloatArray Run(const std::string& function, const FloatArray& pixels);

 private:
  // The weights as `function` takes them: its `<function>_transform_params` run once.
  const std::vector<tvm::ffi::Any>& WeightsFor(const std::string& function);
  tvm::ffi::Tensor Upload(const void* data, const std::vector<int64_t>& shape, DLDataType dtype);

  const Artifact& artifact_;
  DLDevice device_;
  DLDataType dtype_;
  tvm::ffi::Optional<tvm::ffi::Module> vm_;
  tvm::ffi::Array<tvm::ffi::Tensor> params_;  // as stored in the artifact
  std::map<std::string, std::vector<tvm::ffi::Any>> weights_;  // per function, transformed
};

// "cpu" or "cuda" for a TVM target kind ("llvm" -> cpu).
std::string DeviceForTarget(const std::string& target_kind);

}  // namespace pe

#endif  // PE_INFER_RUNNER_H_
