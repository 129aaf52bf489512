#include "artifact.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>
#include <elf.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

namespace pe {
namespace {

namespace json = tvm::ffi::json;
using tvm::ffi::Any;
using tvm::ffi::TypeIndex;

// Typed access to metadata.json; `where` names the field in messages ("config.width").
class Fields {
 public:
  Fields(const std::string& path) : path_(path) {}

  [[noreturn]] void Bad(const std::string& where, const std::string& what) const {
    Fail("artifact metadata ", path_, " is invalid: ", where, " ", what,
         " (re-export it with `pe-port export`)");
  }

  json::Object Object(const Any& value, const std::string& where) const {
    if (value.type_index() != TypeIndex::kTVMFFIMap) Bad(where, "is not an object");
    return value.cast<json::Object>();
  }

  const Any Get(const json::Object& object, const std::string& key,
                const std::string& where) const {
    auto it = object.find(tvm::ffi::String(key));
    if (it == object.end()) Bad(where.empty() ? key : where + "." + key, "is missing");
    return (*it).second;
  }

  bool Has(const json::Object& object, const std::string& key) const {
    return object.find(tvm::ffi::String(key)) != object.end();
  }

  std::string Str(const Any& value, const std::string& where) const {
    auto text = value.as<tvm::ffi::String>();
    if (!text) Bad(where, "is not a string");
    return std::string(*text);
  }

  int64_t Int(const Any& value, const std::string& where) const {
    if (value.type_index() != TypeIndex::kTVMFFIInt) Bad(where, "is not an integer");
    return value.cast<int64_t>();
  }

  int SmallInt(const Any& value, const std::string& where) const {
    int64_t n = Int(value, where);
    if (n < 0 || n > std::numeric_limits<int>::max()) Bad(where, "is out of range");
    return static_cast<int>(n);
  }

  double Number(const Any& value, const std::string& where) const {
    if (value.type_index() == TypeIndex::kTVMFFIInt) return static_cast<double>(Int(value, where));
    if (value.type_index() != TypeIndex::kTVMFFIFloat) Bad(where, "is not a number");
    return value.cast<double>();
  }

  bool Bool(const Any& value, const std::string& where) const {
    if (value.type_index() != TypeIndex::kTVMFFIBool) Bad(where, "is not true or false");
    return value.cast<bool>();
  }

  bool IsNull(const Any& value) const { return value.type_index() == TypeIndex::kTVMFFINone; }

  uint32_t Crc(const Any& value, const std::string& where) const {
    int64_t crc = Int(value, where);
    if (crc < 0 || crc > 0xffffffffLL) Bad(where, "is not a CRC-32");
    return static_cast<uint32_t>(crc);
  }

  json::Array Array(const Any& value, const std::string& where) const {
    if (value.type_index() != TypeIndex::kTVMFFIArray) Bad(where, "is not a list");
    return value.cast<json::Array>();
  }

 private:
  std::string path_;
};

ModelConfig ReadConfig(const Fields& f, const json::Object& c) {
  ModelConfig config;
  const std::string w = "config";
  config.patch_size = f.SmallInt(f.Get(c, "patch_size", w), "config.patch_size");
  config.width = f.SmallInt(f.Get(c, "width", w), "config.width");
  config.layers = f.SmallInt(f.Get(c, "layers", w), "config.layers");
  config.heads = f.SmallInt(f.Get(c, "heads", w), "config.heads");
  config.mlp_ratio = f.Number(f.Get(c, "mlp_ratio", w), "config.mlp_ratio");
  Any output_dim = f.Get(c, "output_dim", w);
  if (!f.IsNull(output_dim)) config.output_dim = f.SmallInt(output_dim, "config.output_dim");
  Any ls = f.Get(c, "ls_init_value", w);
  if (!f.IsNull(ls)) config.ls_init_value = f.Number(ls, "config.ls_init_value");
  config.drop_path = f.Number(f.Get(c, "drop_path", w), "config.drop_path");
  config.image_size = f.SmallInt(f.Get(c, "image_size", w), "config.image_size");
  config.use_abs_posemb = f.Bool(f.Get(c, "use_abs_posemb", w), "config.use_abs_posemb");
  config.use_cls_token = f.Bool(f.Get(c, "use_cls_token", w), "config.use_cls_token");
  config.use_rope2d = f.Bool(f.Get(c, "use_rope2d", w), "config.use_rope2d");
  config.pool_type = f.Str(f.Get(c, "pool_type", w), "config.pool_type");
  config.attn_pooler_heads =
      f.SmallInt(f.Get(c, "attn_pooler_heads", w), "config.attn_pooler_heads");
  config.use_ln_pre = f.Bool(f.Get(c, "use_ln_pre", w), "config.use_ln_pre");
  config.use_ln_post = f.Bool(f.Get(c, "use_ln_post", w), "config.use_ln_post");
  return config;
}

// Bounds checked before the JSON parser sees the metadata: it recurses once per nesting level
// (20,000 nested brackets overflowed the stack), and real metadata is a few kilobytes, four
// levels deep (the largest official model's parameter table is under 100 KB).
constexpr size_t kMaxMetadataBytes = 4 << 20;
constexpr int kMaxMetadataDepth = 16;
constexpr int kMaxImageSide = 4096;

}  // namespace

int JsonDepth(const std::vector<uint8_t>& text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (uint8_t c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

Any ParseJson(const std::vector<uint8_t>& text, std::string* error) {
  tvm::ffi::String parse_error;
  Any root;
  try {
    root = json::Parse(tvm::ffi::String(std::string(text.begin(), text.end())), &parse_error);
  } catch (const std::exception& err) {
    parse_error = err.what();
  }
  *error = std::string(parse_error);
  return root;
}

uint32_t Crc32(const uint8_t* data, uint64_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < size;) {
    const uInt chunk = static_cast<uInt>(std::min<uint64_t>(size - done, 1u << 30));
    crc = crc32(crc, data + done, chunk);
    done += chunk;
  }
  return static_cast<uint32_t>(crc);
}

namespace {

void CheckMetadataShape(const std::string& path, const std::vector<uint8_t>& bytes) {
  if (bytes.size() > kMaxMetadataBytes) {
    Fail("artifact metadata ", path, " is ", bytes.size(), " bytes; pe-port writes under ",
         kMaxMetadataBytes, " (not an export of pe-port?)");
  }
  if (JsonDepth(bytes) > kMaxMetadataDepth) {
    Fail("artifact metadata ", path, " nests deeper than ", kMaxMetadataDepth,
         " levels (pe-port writes 5): not an export of pe-port");
  }
}

// metadata.json's last key is `"metadata_crc32": N`, N the CRC-32 of every byte before the key
// (pe_port/artifact.py, seal_metadata). Checked on the raw bytes, so any edit of the metadata
// (a hand-changed mean, a reshaped parameter table) is refused before its values are trusted.
void CheckMetadataChecksum(const std::string& path, const std::vector<uint8_t>& bytes) {
  static const std::string kKey = "\"metadata_crc32\"";
  const std::string text(bytes.begin(), bytes.end());
  const size_t key = text.rfind(kKey);
  if (key == std::string::npos) {
    Fail("artifact metadata ", path, " has no checksum (metadata_crc32); re-export it with "
         "`pe-port export`");
  }
  // After the key only `: N }` and white space may follow: nothing there escapes the checksum.
  size_t i = key + kKey.size();
  auto skip_space = [&] {
    while (i < text.size() && std::isspace(static_cast<uint8_t>(text[i]))) ++i;
  };
  skip_space();
  bool ok = i < text.size() && text[i++] == ':';
  skip_space();
  uint64_t recorded = 0;
  const size_t digits = i;
  while (ok && i < text.size() && std::isdigit(static_cast<uint8_t>(text[i])) && i - digits < 10) {
    recorded = recorded * 10 + static_cast<uint64_t>(text[i++] - '0');
  }
  ok = ok && i > digits && recorded <= 0xffffffffULL;
  skip_space();
  ok = ok && i < text.size() && text[i++] == '}';
  skip_space();
  if (!ok || i != text.size()) {
    Fail("artifact metadata ", path, " does not end with its checksum (metadata_crc32 must be "
         "the last key); it was edited or is not an export of pe-port");
  }
  if (Crc32(bytes.data(), key) != recorded) {
    Fail("artifact metadata ", path, " is corrupt or was edited: its CRC-32 does not match "
         "metadata_crc32 (re-export it with `pe-port export`)");
  }
}

std::string KnownModels() {
  std::string names;
  for (const OfficialModel& model : OfficialModels()) {
    names += (names.empty() ? "" : ", ") + model.name;
  }
  return names;
}

// The parameter table (back to back in the weights file, each as large as its shape says) and
// the checksums of a tower; `object` names it in messages ("" for the top level, or "text").
void ReadTowerFiles(const Fields& f, const json::Object& meta, const std::string& object,
                    int dtype_bytes, TowerFiles& tower) {
  const std::string prefix = object.empty() ? "" : object + ".";
  uint64_t expected_offset = 0;
  std::set<std::string> names;
  for (const Any& item : f.Array(f.Get(meta, "params", object), prefix + "params")) {
    json::Object entry = f.Object(item, prefix + "params[]");
    ParamEntry p;
    p.name = f.Str(f.Get(entry, "name", prefix + "params[]"), prefix + "params[].name");
    const std::string where = prefix + "params[" + p.name + "]";
    if (!names.insert(p.name).second) f.Bad(where, "appears twice");
    uint64_t count = 1;
    for (const Any& dim : f.Array(f.Get(entry, "shape", where), where + ".shape")) {
      int64_t d = f.Int(dim, where + ".shape");
      if (d < 0 || (d && count > (uint64_t{1} << 40) / static_cast<uint64_t>(d))) {
        f.Bad(where + ".shape", "is impossible");
      }
      p.shape.push_back(d);
      count *= static_cast<uint64_t>(d);
    }
    int64_t offset = f.Int(f.Get(entry, "offset", where), where + ".offset");
    int64_t nbytes = f.Int(f.Get(entry, "nbytes", where), where + ".nbytes");
    if (offset < 0 || static_cast<uint64_t>(offset) != expected_offset) {
      f.Bad(where + ".offset", "does not follow the previous parameter");
    }
    if (nbytes < 0 || static_cast<uint64_t>(nbytes) != count * dtype_bytes) {
      f.Bad(where + ".nbytes", "does not match its shape and dtype");
    }
    p.offset = static_cast<uint64_t>(offset);
    p.nbytes = static_cast<uint64_t>(nbytes);
    expected_offset += p.nbytes;
    tower.params.push_back(std::move(p));
  }
  if (tower.params.empty()) f.Bad(prefix + "params", "is empty");
  tower.weights_nbytes = expected_offset;
  if (f.Has(meta, "weights_nbytes") &&
      static_cast<uint64_t>(f.Int(f.Get(meta, "weights_nbytes", object),
                                  prefix + "weights_nbytes")) != tower.weights_nbytes) {
    f.Bad(prefix + "weights_nbytes", "is not the sum of the parameters' sizes");
  }
  tower.weights_crc32 = f.Crc(f.Get(meta, "weights_crc32", object), prefix + "weights_crc32");
  tower.library_crc32 = f.Crc(f.Get(meta, "library_crc32", object), prefix + "library_crc32");
}

// metadata.json's `text` (pe_port/artifact.py, TextExport): the text tower and its tokenizer.
TextArtifact ReadText(const Fields& f, const json::Object& text, const Artifact& a) {
  TextArtifact t;
  t.library_path = a.dir + "/text_model.so";
  t.weights_path = a.dir + "/text_weights.bin";
  ReadTowerFiles(f, text, "text", a.dtype_bytes, t);
  json::Object config = f.Object(f.Get(text, "config", "text"), "text.config");
  t.context_length = f.SmallInt(f.Get(config, "context_length", "text.config"),
                                "text.config.context_length");
  t.vocab_size = f.SmallInt(f.Get(config, "vocab_size", "text.config"), "text.config.vocab_size");
  t.output_dim = f.SmallInt(f.Get(config, "output_dim", "text.config"), "text.config.output_dim");
  // The official contexts are 32 and 72; more would only allocate.
  if (t.context_length < 2 || t.context_length > 4096) {
    f.Bad("text.config.context_length", "is not in [2, 4096]");
  }
  t.logit_scale = f.Number(f.Get(text, "logit_scale", "text"), "text.logit_scale");
  if (!std::isfinite(t.logit_scale) || std::fabs(t.logit_scale) > 80) {
    f.Bad("text.logit_scale", "is not a finite number whose exp is finite");
  }
  bool has_forward = false;
  for (const Any& name : f.Array(f.Get(text, "functions", "text"), "text.functions")) {
    has_forward = has_forward || f.Str(name, "text.functions[]") == "forward";
  }
  if (!has_forward) f.Bad("text.functions", "does not list forward");

  json::Object tok = f.Object(f.Get(text, "tokenizer", "text"), "text.tokenizer");
  const std::string w = "text.tokenizer";
  TokenizerFiles& files = t.tokenizer;
  for (auto [key, path] : {std::pair<const char*, std::string*>{"merges", &files.merges_path},
                           {"tables", &files.tables_path}}) {
    const std::string name = f.Str(f.Get(tok, key, w), w + "." + key);
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
      f.Bad(w + "." + key, "is not a file name in the artifact folder");
    }
    *path = a.dir + "/" + name;
  }
  files.merges_crc32 = f.Crc(f.Get(tok, "merges_crc32", w), w + ".merges_crc32");
  files.tables_crc32 = f.Crc(f.Get(tok, "tables_crc32", w), w + ".tables_crc32");
  files.num_merges = f.SmallInt(f.Get(tok, "num_merges", w), w + ".num_merges");
  files.context_length = f.SmallInt(f.Get(tok, "context_length", w), w + ".context_length");
  files.start_id = f.SmallInt(f.Get(tok, "start_id", w), w + ".start_id");
  files.end_id = f.SmallInt(f.Get(tok, "end_id", w), w + ".end_id");
  files.pad_id = f.SmallInt(f.Get(tok, "pad_id", w), w + ".pad_id");
  if (files.context_length != t.context_length) {
    f.Bad(w + ".context_length", "is not text.config.context_length");
  }
  for (int id : {files.start_id, files.end_id, files.pad_id}) {
    if (id >= t.vocab_size) f.Bad(w, "has a special id outside the vocabulary");
  }
  // BPE ids are the 512 byte symbols and the merges; start and end follow them.
  if (512 + files.num_merges > files.start_id || files.end_id <= files.start_id) {
    f.Bad(w, "has start and end ids among the BPE tokens' ids");
  }
  return t;
}

}  // namespace

bool Artifact::HasFunction(const std::string& name) const {
  return std::find(functions.begin(), functions.end(), name) != functions.end();
}

std::string Artifact::FunctionList() const {
  std::string list;
  for (const std::string& name : functions) list += (list.empty() ? "" : ", ") + name;
  return list;
}

Artifact LoadArtifact(const std::string& dir) {
  if (!IsDirectory(dir)) {
    Fail("artifact ", dir, " is not a folder (make one with `pe-port export MODEL -o ", dir,
         "`)");
  }
  Artifact a;
  a.dir = dir;
  a.library_path = dir + "/model.so";
  a.weights_path = dir + "/weights.bin";
  a.metadata_path = dir + "/metadata.json";
  for (const std::string& file : {a.metadata_path, a.library_path, a.weights_path}) {
    if (IsRegularFile(file)) continue;
    if (access(file.c_str(), F_OK) != 0 && errno == ENOENT) {
      Fail("artifact ", dir, " is incomplete: ", file, " is missing");
    }
    RequireRegularFile(file, "artifact file");  // unreadable (another user's), or not a file
  }
  std::vector<uint8_t> bytes = ReadFile(a.metadata_path, "artifact metadata");
  CheckMetadataShape(a.metadata_path, bytes);
  std::string error;
  Any root = ParseJson(bytes, &error);
  if (!error.empty()) {
    Fail("artifact metadata ", a.metadata_path, " is not valid JSON: ", error);
  }
  Fields f(a.metadata_path);
  json::Object meta = f.Object(root, "the top level");

  // Format first: a newer layout may have moved anything else.
  int64_t version = f.Int(f.Get(meta, "format_version", ""), "format_version");
  if (version != kFormatVersion) {
    Fail("artifact ", dir, " has format version ", version, "; this pe_infer reads version ",
         kFormatVersion, " (export it again with the matching pe-port, or rebuild pe_infer)");
  }
  CheckMetadataChecksum(a.metadata_path, bytes);

  a.model = f.Str(f.Get(meta, "model", ""), "model");
  const ModelConfig* official = FindOfficialModel(a.model);
  if (!official) {
    Fail("artifact ", dir, " holds model '", a.model, "', which pe_infer does not know; known: ",
         KnownModels());
  }
  a.config = ReadConfig(f, f.Object(f.Get(meta, "config", ""), "config"));
  std::string differences = ConfigDifferences(*official, a.config);
  if (!differences.empty()) {
    Fail("artifact ", dir, " says it holds ", a.model, " but its config differs: ",
         differences);
  }

  a.dtype = f.Str(f.Get(meta, "dtype", ""), "dtype");
  if (a.dtype == "float32") {
    a.dtype_bytes = 4;
  } else if (a.dtype == "float16" || a.dtype == "bfloat16") {
    a.dtype_bytes = 2;
  } else {
    f.Bad("dtype", "is '" + a.dtype + "', not float32, float16 or bfloat16");
  }

  // The target is TVM's JSON of the target; its "kind" says which device the code runs on.
  std::string target = f.Str(f.Get(meta, "target", ""), "target");
  tvm::ffi::String target_error;
  Any target_json = json::Parse(tvm::ffi::String(target), &target_error);
  if (!target_error.empty() || target_json.type_index() != TypeIndex::kTVMFFIMap) {
    f.Bad("target", "is not a TVM target description");
  }
  a.target_kind = f.Str(f.Get(f.Object(target_json, "target"), "kind", "target"), "target.kind");
  if (f.Has(meta, "tvm_version")) a.tvm_version = f.Str(f.Get(meta, "tvm_version", ""), "tvm_version");

  for (const Any& name : f.Array(f.Get(meta, "functions", ""), "functions")) {
    a.functions.push_back(f.Str(name, "functions[]"));
  }
  if (!a.HasFunction("forward")) f.Bad("functions", "does not list forward");

  json::Object pre = f.Object(f.Get(meta, "preprocess", ""), "preprocess");
  a.image_size = f.SmallInt(f.Get(pre, "image_size", "preprocess"), "preprocess.image_size");
  std::string resize = f.Str(f.Get(pre, "resize", "preprocess"), "preprocess.resize");
  if (resize != "bilinear") f.Bad("preprocess.resize", "is '" + resize + "', not bilinear");
  std::string layout = f.Str(f.Get(pre, "layout", "preprocess"), "preprocess.layout");
  if (layout != "NCHW") f.Bad("preprocess.layout", "is '" + layout + "', not NCHW");
  json::Array mean = f.Array(f.Get(pre, "mean", "preprocess"), "preprocess.mean");
  json::Array std = f.Array(f.Get(pre, "std", "preprocess"), "preprocess.std");
  if (mean.size() != 3 || std.size() != 3) f.Bad("preprocess", "mean and std need 3 values");
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = static_cast<float>(f.Number(mean[c], "preprocess.mean[]"));
    a.std[c] = static_cast<float>(f.Number(std[c], "preprocess.std[]"));
    if (!std::isfinite(a.mean[c]) || !std::isfinite(a.std[c])) {
      f.Bad("preprocess", "mean and std must be finite numbers");
    }
    if (a.std[c] == 0.0f) f.Bad("preprocess.std", "has a zero");
  }
  if (a.image_size <= 0 || a.image_size % a.config.patch_size) {
    f.Bad("preprocess.image_size", "is not a positive multiple of the patch size");
  }
  // pe-port writes the model's own size (448 at most); a huge one would only allocate.
  if (a.image_size > kMaxImageSide) {
    f.Bad("preprocess.image_size", "is over " + std::to_string(kMaxImageSide));
  }

  ReadTowerFiles(f, meta, "", a.dtype_bytes, a);
  if (f.Has(meta, "text")) a.text = ReadText(f, f.Object(f.Get(meta, "text", ""), "text"), a);
  return a;
}

void VerifyLibrary(const TowerFiles& artifact) {
  const std::string& path = artifact.library_path;
  MappedFile library(path, "artifact library");
  if (Crc32(library.data(), library.size()) != artifact.library_crc32) {
    Fail("artifact library ", path, " is corrupt: its CRC-32 does not match the metadata");
  }
  // Also a whole library of this machine's kind: the metadata may have been sealed again over
  // another file, and loading a truncated or foreign ELF can crash the process.
  const uint8_t* data = library.data();
  const size_t size = library.size();
  Elf64_Ehdr header;
  if (size < sizeof header || std::memcmp(data, ELFMAG, SELFMAG) != 0) {
    Fail("artifact library ", path, " is not a shared library");
  }
  std::memcpy(&header, data, sizeof header);
  if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_type != ET_DYN) {
    Fail("artifact library ", path, " is not a 64-bit shared library");
  }
#if defined(__x86_64__)
  const int machine = EM_X86_64;
#elif defined(__aarch64__)
  const int machine = EM_AARCH64;
#else
  const int machine = header.e_machine;
#endif
  if (header.e_machine != machine) {
    Fail("artifact library ", path, " was built for another processor (ELF machine ",
         header.e_machine, "); export the model on or for this machine");
  }
  const uint64_t table_end =
      header.e_phoff + static_cast<uint64_t>(header.e_phnum) * sizeof(Elf64_Phdr);
  if (header.e_phentsize != sizeof(Elf64_Phdr) || table_end > size) {
    Fail("artifact library ", path, " is truncated or corrupt");
  }
  for (int i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr segment;
    std::memcpy(&segment, data + header.e_phoff + i * sizeof segment, sizeof segment);
    if (segment.p_type == PT_LOAD && segment.p_offset + segment.p_filesz > size) {
      Fail("artifact library ", path, " is truncated or corrupt");
    }
  }
}

void VerifyWeights(const TowerFiles& artifact, const MappedFile& weights) {
  if (weights.size() != artifact.weights_nbytes) {
    Fail("artifact weights ", artifact.weights_path, " have ", weights.size(),
         " bytes; the metadata lists ", artifact.weights_nbytes,
         " (truncated or from another export)");
  }
  if (Crc32(weights.data(), weights.size()) != artifact.weights_crc32) {
    Fail("artifact weights ", artifact.weights_path,
         " are corrupt: their CRC-32 does not match the metadata");
  }
}

}  // namespace pe
