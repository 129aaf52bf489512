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
  // Loads the library and the weights of a tower (checked against the metadata) in `dtype`.
  // Each function's one-off weight transform (packing for the CPU kernels) runs on its first
  // call.
  Runner(const TowerFiles& tower, const std::string& dtype, DLDeviceType device);

  // Whether the library itself has a function of this name.
  bool HasFunction(const std::string& name);

  // `function`(pixels, *weights): float32 (N, 3, H, W) in, float32 out (converted from and to
  // the model's dtype as NumPy's astype does).
  FloatArray Run(const std::string& function, const FloatArray& pixels);

  // `function`(ids, *weights): int32 token ids (N, L) in, float32 out (the text tower).
  FloatArray RunIds(const std::string& function, const std::vector<int32_t>& ids,
                    const std::vector<int64_t>& shape);

 private:
  FloatArray Call(const std::string& function, const tvm::ffi::Tensor& input);
  // The weights as `function` takes them: its `<function>_transform_params` run once.
  const std::vector<tvm::ffi::Any>& WeightsFor(const std::string& function);
  tvm::ffi::Tensor Upload(const void* data, const std::vector<int64_t>& shape, DLDataType dtype);

  const TowerFiles& artifact_;
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
