// The directory `pe-port export` writes: model.so, weights.bin and metadata.json.
#ifndef PE_INFER_ARTIFACT_H_
#define PE_INFER_ARTIFACT_H_

#include <tvm/ffi/any.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models.h"
#include "tokenizer.h"
#include "util.h"

namespace pe {

// The metadata layout this program reads (pe_port.api.EXPORT_FORMAT_VERSION).
// 2: one weight transform per function; 3: metadata.json ends with its own CRC-32, and the three
// checksums are required.
constexpr int64_t kFormatVersion = 3;

struct ParamEntry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
};

// A compiled tower: its library, its weights and their table, with the files' checksums.
struct TowerFiles {
  std::string library_path, weights_path;
  std::vector<ParamEntry> params;
  uint64_t weights_nbytes = 0;
  uint32_t weights_crc32 = 0;
  uint32_t library_crc32 = 0;
};

// The text tower of a PE-Core artifact (metadata.json's `text`): text_model.so takes int32 token
// ids (N, L), L at most the context length, and returns the (N, output_dim) embeddings.
struct TextArtifact : TowerFiles {
  int context_length = 0;
  int vocab_size = 0;
  int output_dim = 0;
  double logit_scale = 0;  // as the checkpoint holds it: the logits' factor is its exp
  TokenizerFiles tokenizer;
};

struct Artifact : TowerFiles {
  std::string dir;
  std::string metadata_path;
  std::string model;
  ModelConfig config;
  std::string dtype;        // float32, float16 or bfloat16
  int dtype_bytes = 4;
  std::string target_kind;  // llvm (CPU) or cuda
  std::string tvm_version;  // of the exporting TVM, when recorded
  std::vector<std::string> functions;
  int image_size = 0;       // pre-processing
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  std::optional<TextArtifact> text;  // PE-Core models exported with their text tower

  bool HasFunction(const std::string& name) const;
  std::string FunctionList() const;  // "forward, forward_features"
};

// Reads and checks metadata.json and that the library and weights files exist. Any problem
// (missing file, bad JSON, other format version, a checksum that does not match the bytes,
// unknown model, config not the model's, inconsistent parameter table) is a UserError that
// says what is wrong.
Artifact LoadArtifact(const std::string& dir);

// Checks a weights file against the metadata: its size, then its CRC-32.
void VerifyWeights(const TowerFiles& tower, const MappedFile& weights);

// Checks a library before it is loaded (loading a damaged library can crash the process): its
// CRC-32, and that it is a whole ELF shared library of this machine's kind.
void VerifyLibrary(const TowerFiles& tower);

// The CRC-32 (zlib's) of `size` bytes.
uint32_t Crc32(const uint8_t* data, uint64_t size);

// The deepest nesting of arrays and objects in JSON `text`, brackets inside strings not counted:
// checked before parsing, since the parser recurses once per level.
int JsonDepth(const std::vector<uint8_t>& text);

// `text` parsed by tvm-ffi's JSON parser. A parse error, reported by the parser or thrown by it,
// is put in `error` (empty on success) with a null result.
tvm::ffi::Any ParseJson(const std::vector<uint8_t>& text, std::string* error);

}  // namespace pe

#endif  // PE_INFER_ARTIFACT_H_
