// pe_infer: run a Perception Encoder artifact written by `pe-port export` on a .npy or an image,
// embed texts with a PE-Core artifact's text tower, or classify images zero-shot.
//
//   pe_infer ARTIFACT_DIR INPUT OUTPUT.npy [--features] [--layer-idx N] [--norm] [--strip-cls]
//            [--center-crop] [--device cpu|cuda] [--threads N] [--repeat N] [--quiet]
//   pe_infer ARTIFACT_DIR (--text TEXT)... [--text-file FILE] OUTPUT.npy [--normalize]
//   pe_infer classify ARTIFACT_DIR INPUT... (--labels A,B | --labels-file FILE)
//            [--templates FILE] [--top-k K] [--json] [--output PROBS.npy]
//
// Exit status: 0 on success, 2 for a problem with what was given (one "pe_infer: error:" line),
// 1 for anything else.
#include <tvm/ffi/error.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "artifact.h"
#include "clip.h"
#include "image.h"
#include "models.h"
#include "npy.h"
#include "runner.h"
#include "tokenizer.h"
#include "util.h"

namespace pe {
namespace {

const char kUsage[] =
    "usage: pe_infer ARTIFACT_DIR INPUT OUTPUT.npy [--features] [--layer-idx N] [--norm]\n"
    "                [--strip-cls] [--center-crop] [--device cpu|cuda] [--threads N]\n"
    "                [--repeat N] [--quiet]\n"
    "       pe_infer ARTIFACT_DIR (--text TEXT)... [--text-file FILE] OUTPUT.npy [--normalize]\n"
    "       pe_infer classify ARTIFACT_DIR INPUT... (--labels A,B | --labels-file FILE)\n"
    "                [--templates FILE] [--top-k K] [--json] [--output PROBS.npy]\n"
    "       pe_infer --list-models | --version | --help\n";

const char kHelp[] =
    "\n"
    "Runs a model exported by `pe-port export MODEL -o ARTIFACT_DIR` and writes what it returns\n"
    "as a float32 .npy.\n"
    "\n"
    "  ARTIFACT_DIR     model.so, weights.bin and metadata.json from `pe-port export`\n"
    "  INPUT            a float32 (N, 3, H, W) .npy of pre-processed pixels (H, W multiples of\n"
    "                   the patch), or a PNG or JPEG image, pre-processed as pe_port.preprocess\n"
    "                   does (bilinear resize to the model's size, [0, 1], mean/std)\n"
    "  OUTPUT.npy       written atomically: a failed run leaves no file\n"
    "  --features       forward_features instead of forward; with\n"
    "    --layer-idx N  the block whose tokens to return (default -1: the last)\n"
    "    --norm         apply ln_post      --strip-cls   drop the cls token\n"
    "                   (a variant other than the default must have been exported with\n"
    "                   `pe-port export ... --features-variant N[,norm][,strip]`)\n"
    "  --center-crop    images: resize the shorter side and crop the centre, not squash\n"
    "  --device D       cpu or cuda (default: what the artifact was compiled for)\n"
    "  --threads N      CPU threads of TVM's pool (sets TVM_NUM_THREADS; default: one per\n"
    "                   physical core, or TVM_NUM_THREADS when set)\n"
    "  --repeat N       run N times and report the median time (for benchmarks)\n"
    "  --quiet          no progress lines on stderr\n"
    "  --list-models    the models and configs this program accepts, as JSON\n"
    "\n"
    "Text (an artifact of a PE-Core model exported from a checkpoint with its text tower):\n"
    "  --text TEXT      a text to embed (repeatable); OUTPUT.npy gets (N, output_dim) float32\n"
    "  --text-file F    one text per line (UTF-8; blank lines skipped)\n"
    "  --normalize      unit-length rows\n"
    "  Texts are tokenised as pe-port does; ftfy's repairs other than HTML entities (mojibake,\n"
    "  ligatures, full-width forms, curly quotes, control characters, NFC) are not reproduced:\n"
    "  a text that may need one gets a warning that its ids may differ.\n"
    "\n"
    "classify: zero-shot probabilities of the labels for each INPUT (an image, or a .npy of\n"
    "pre-processed pixels), as pe_port's Encoder.zero_shot computes them:\n"
    "  --labels A,B,C   comma-separated labels     --labels-file F  one label per line\n"
    "  --templates F    prompts, one per line, {} for the label (default: the label alone);\n"
    "                   a label's embedding is the normalised mean over its prompts\n"
    "  --top-k K        labels shown per image (default 5)\n"
    "  --json           one JSON line per image instead of a table\n"
    "  --output P.npy   also write the (images, labels) probabilities as float32\n";

enum class Mode { kImages, kText, kClassify };

struct Options {
  Mode mode = Mode::kImages;
  std::string artifact, input, output;
  // Text and classify.
  std::vector<std::string> texts;
  std::string text_file;
  bool normalize = false;
  std::vector<std::string> inputs;  // classify
  std::string labels, labels_file, templates_file, probabilities_output;
  bool labels_given = false, json = false;
  int top_k = 5;
  bool features = false, norm = false, strip_cls = false, center_crop = false, quiet = false;
  bool layer_idx_given = false;
  int layer_idx = -1;
  std::string device;  // empty: the artifact's
  int threads = 0;
  int repeat = 1;
};

int ParseInt(const std::string& option, const char* text, int lowest) {
  char* end = nullptr;
  errno = 0;
  long value = std::strtol(text, &end, 10);
  if (errno || end == text || *end != '\0' || value < lowest || value > 1000000) {
    Fail(option, " needs an integer", lowest > -1000000 ? " >= " + std::to_string(lowest) : "",
         ", got '", text, "'");
  }
  return static_cast<int>(value);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  int first = 1;
  if (argc > 1 && std::string(argv[1]) == "classify") {
    o.mode = Mode::kClassify;
    first = 2;
  }
  bool image_options = false;
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) Fail(arg, " needs a value");
      return argv[++i];
    };
    const bool image_option = arg == "--features" || arg == "--norm" || arg == "--strip-cls" ||
                              arg == "--layer-idx" || arg == "--repeat";
    image_options = image_options || image_option;
    if (arg == "--features") {
      o.features = true;
    } else if (arg == "--norm") {
      o.norm = true;
    } else if (arg == "--strip-cls") {
      o.strip_cls = true;
    } else if (arg == "--text") {
      o.texts.push_back(value());
    } else if (arg == "--text-file") {
      o.text_file = value();
    } else if (arg == "--normalize") {
      o.normalize = true;
    } else if (arg == "--labels") {
      o.labels = value();
      o.labels_given = true;
    } else if (arg == "--labels-file") {
      o.labels_file = value();
    } else if (arg == "--templates") {
      o.templates_file = value();
    } else if (arg == "--top-k") {
      o.top_k = ParseInt(arg, value(), 1);
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--output") {
      o.probabilities_output = value();
    } else if (arg == "--center-crop") {
      o.center_crop = true;
    } else if (arg == "--quiet") {
      o.quiet = true;
    } else if (arg == "--layer-idx") {
      o.layer_idx = ParseInt(arg, value(), -1000000);
      o.layer_idx_given = true;
    } else if (arg == "--device") {
      o.device = value();
      if (o.device != "cpu" && o.device != "cuda") {
        Fail("--device must be cpu or cuda, got '", o.device, "'");
      }
    } else if (arg == "--threads") {
      o.threads = ParseInt(arg, value(), 1);
      // More threads than CPUs only spin: 300 threads took minutes to exit.
      const int cpus = LogicalCpus();
      if (o.threads > cpus) {
        Fail("--threads ", o.threads, " is more than this machine's ", cpus, " CPUs");
      }
    } else if (arg == "--repeat") {
      o.repeat = ParseInt(arg, value(), 1);
    } else if (arg.size() > 1 && arg[0] == '-' && arg != "-") {
      Fail("unknown option ", arg);
    } else {
      positional.push_back(arg);
    }
  }
  const bool text = !o.texts.empty() || !o.text_file.empty();
  const bool classify_options = o.labels_given || !o.labels_file.empty() ||
                                !o.templates_file.empty() || o.json || o.top_k != 5 ||
                                !o.probabilities_output.empty();
  if (o.mode == Mode::kClassify) {
    if (positional.size() < 2) Fail("classify needs ARTIFACT_DIR and at least one INPUT");
    if (text || o.normalize) Fail("classify takes --labels, not --text or --normalize");
    if (image_options) Fail("classify runs forward: --features and its options do not apply");
    if (!o.labels_given && o.labels_file.empty()) Fail("classify needs --labels or --labels-file");
    o.artifact = positional[0];
    o.inputs.assign(positional.begin() + 1, positional.end());
    return o;
  }
  if (classify_options) {
    Fail("--labels, --labels-file, --templates, --top-k, --json and --output belong to "
         "`pe_infer classify`");
  }
  if (text) {
    o.mode = Mode::kText;
    if (positional.size() != 2) {
      Fail("with --text or --text-file, expected ARTIFACT_DIR OUTPUT.npy, got ",
           positional.size(), " argument", positional.size() == 1 ? "" : "s");
    }
    if (image_options || o.center_crop) {
      Fail("--features, its options, --center-crop and --repeat apply to images, not --text");
    }
    o.artifact = positional[0];
    o.output = positional[1];
    return o;
  }
  if (o.normalize) Fail("--normalize applies to --text and --text-file");
  if (positional.size() != 3) {
    Fail("expected ARTIFACT_DIR INPUT OUTPUT.npy, got ", positional.size(), " argument",
         positional.size() == 1 ? "" : "s");
  }
  o.artifact = positional[0];
  o.input = positional[1];
  o.output = positional[2];
  if (!o.features && (o.layer_idx_given || o.norm || o.strip_cls)) {
    Fail("--layer-idx, --norm and --strip-cls choose a forward_features variant: add --features");
  }
  return o;
}

// What pe_port's CompiledTower.check_images checks, with the same wording.
void CheckPixels(const FloatArray& pixels, const std::string& path, int patch) {
  const auto& s = pixels.shape;
  if (s.size() != 4 || s[1] != 3) {
    Fail("input ", path, ": images must have shape (N, 3, H, W), got ", ShapeString(s));
  }
  if (s[0] == 0 || s[2] == 0 || s[3] == 0) {
    Fail("input ", path, ": images must not be empty, got shape ", ShapeString(s));
  }
  if (s[2] % patch || s[3] % patch) {
    Fail("input ", path, ": image size ", s[2], "x", s[3],
         " is not a multiple of the patch size ", patch);
  }
  for (float v : pixels.data) {
    if (!std::isfinite(v)) Fail("input ", path, ": images contain NaN or Inf");
  }
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Sizes TVM's thread pool, loads the artifact's metadata and checks it runs on the device asked.
Artifact LoadForDevice(const Options& o, std::string* device) {
  // TVM sizes its pool once, from TVM_NUM_THREADS, else half the logical CPUs (it assumes SMT
  // pairs; on machines without SMT that idles half the cores). As pe_port.threads does: the
  // user's choice, else one thread per physical core.
  if (o.threads > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(o.threads).c_str(), 1);
  } else if (!std::getenv("TVM_NUM_THREADS") && !std::getenv("OMP_NUM_THREADS")) {
    setenv("TVM_NUM_THREADS", std::to_string(PhysicalCores()).c_str(), 1);
  }
  // Idle workers spin TVM_THREAD_POOL_SPIN_COUNT sched_yield calls (default 300,000) and exit
  // waits for them: on a busy machine a finished run took minutes to exit. 100, as pe_port.
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "100", /*overwrite=*/0);

  Artifact artifact = LoadArtifact(o.artifact);
  const std::string compiled_for = DeviceForTarget(artifact.target_kind);
  *device = o.device.empty() ? compiled_for : o.device;
  if (*device != compiled_for) {
    Fail("artifact ", o.artifact, " was compiled for ", compiled_for, " (target ",
         artifact.target_kind, "); run it with --device ", compiled_for,
         " or export it with --target ", *device);
  }
  if (!artifact.tvm_version.empty() && artifact.tvm_version != PE_TVM_VERSION) {
    std::fprintf(stderr,
                 "pe_infer: warning: the artifact was exported with TVM %s, this runtime is "
                 "TVM %s\n",
                 artifact.tvm_version.c_str(), PE_TVM_VERSION);
  }
  return artifact;
}

int RunImages(const Options& o) {
  auto start = std::chrono::steady_clock::now();
  auto say = [&](const std::string& line) {
    if (!o.quiet) std::fprintf(stderr, "pe_infer: %s\n", line.c_str());
  };
  CheckOutputPath(o.output, ".npy");
  std::string device;
  Artifact artifact = LoadForDevice(o, &device);

  const int layers = artifact.config.layers;
  std::string function = "forward";
  if (o.features) {
    if (o.layer_idx < -layers || o.layer_idx >= layers) {
      Fail("--layer-idx ", o.layer_idx, " is out of range: ", artifact.model, " has ", layers,
           " blocks (use ", -layers, " to ", layers - 1, ")");
    }
    function = FeaturesFunctionName(o.norm, o.layer_idx, o.strip_cls, layers);
    if (!artifact.HasFunction(function)) {
      Fail("artifact ", o.artifact, " has no ", function, " (--layer-idx ", o.layer_idx,
           o.norm ? " --norm" : "", o.strip_cls ? " --strip-cls" : "", "); it holds ",
           artifact.FunctionList(), ". Export it with `pe-port export ", artifact.model,
           " -o DIR --features-variant ", o.layer_idx, o.norm ? ",norm" : "",
           o.strip_cls ? ",strip" : "", "`");
    }
  }

  auto read_start = std::chrono::steady_clock::now();
  FloatArray pixels;
  if (EndsWith(o.input, ".npy")) {
    if (o.center_crop) Fail("--center-crop applies to images; a .npy is already pre-processed");
    pixels = ReadNpyFloat32(o.input);
  } else {
    const int size = artifact.image_size;
    pixels.shape = {1, 3, size, size};
    pixels.data = PreprocessImage(o.input, size, o.center_crop, artifact.mean, artifact.std);
  }
  CheckPixels(pixels, o.input, artifact.config.patch_size);
  say(Cat("read ", o.input, EndsWith(o.input, ".npy") ? "" : " (decoded and pre-processed)",
          " in ", Cat(static_cast<int>(Seconds(read_start) * 1000 + 0.5)), " ms"));

  Runner runner(artifact, artifact.dtype, device == "cuda" ? kDLCUDA : kDLCPU);
  if (!runner.HasFunction(function)) {
    Fail("library ", artifact.library_path, " lacks ", function,
         ", which its metadata lists: the artifact is corrupt; export it again");
  }
  say(Cat("loaded ", artifact.model, " (", artifact.dtype, ", ", device, ") in ",
          static_cast<int>(Seconds(start) * 1000), " ms"));

  FloatArray result;
  std::vector<double> times;
  for (int r = 0; r < o.repeat; ++r) {
    auto begin = std::chrono::steady_clock::now();
    result = runner.Run(function, pixels);
    times.push_back(Seconds(begin) * 1000);
  }
  std::sort(times.begin(), times.end());
  char timing[128];
  if (o.repeat == 1) {
    std::snprintf(timing, sizeof timing, "%.1f ms", times[0]);
  } else {
    std::snprintf(timing, sizeof timing, "median %.1f ms, min %.1f ms over %d runs",
                  times[times.size() / 2], times[0], o.repeat);
  }
  say(Cat(function, " on ", ShapeString(pixels.shape), ": ", timing));

  // NaN weights (an artifact sealed over them) or an overflow in half precision: said, not
  // written as if it were an embedding.
  for (float v : result.data) {
    if (!std::isfinite(v)) {
      Fail("the model produced NaN or Inf for this input (", artifact.dtype,
           "); nothing written to ", o.output);
    }
  }
  WriteFileAtomically(o.output, EncodeNpyFloat32(result.shape, result.data.data()));
  say(Cat("wrote ", o.output, " ", ShapeString(result.shape)));
  return 0;
}

// ---- text and classify --------------------------------------------------------------------

const TextArtifact& RequireText(const Artifact& artifact, const std::string& dir) {
  if (artifact.text) return *artifact.text;
  if (artifact.model.rfind("PE-Core-", 0) != 0) {
    Fail("artifact ", dir, " holds ", artifact.model, ", which has no text tower; only PE-Core "
         "models do");
  }
  Fail("artifact ", dir, " has no text tower: it was exported from a vision-only checkpoint of ",
       artifact.model, "; export the model's CLIP checkpoint (`pe-port export ", artifact.model,
       " --checkpoint CLIP.pt -o DIR`)");
}

// A probability as Python's round(p, 6) prints in JSON, without a trailing run of zeros.
std::string Fixed6(double p) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6f", p);
  std::string out = text;
  while (out.size() > 3 && out.back() == '0' && out[out.size() - 2] != '.') out.pop_back();
  return out;
}

std::string Shortened(const std::string& text) {
  const std::u32string wide = DecodeUtf8(text, "the text");
  return EncodeUtf8(wide.substr(0, 40)) + (wide.size() > 40 ? "..." : "");
}

// The non-empty lines of a UTF-8 file, each stripped (as pe-port's CLI reads them).
std::vector<std::string> ReadLines(const Tokenizer& tokenizer, const std::string& path,
                                   const std::string& what) {
  RequireRegularFile(path, what + " file");
  const std::vector<uint8_t> bytes = ReadFile(path, what + " file");
  std::vector<std::string> lines;
  for (const std::u32string& line :
       SplitLines(DecodeUtf8(std::string(bytes.begin(), bytes.end()), what + " file " + path))) {
    const std::u32string stripped = tokenizer.Strip(line);
    if (!stripped.empty()) lines.push_back(EncodeUtf8(stripped));
  }
  return lines;
}

// `given` and the lines of `path`, stripped; none, or an empty one, is an error.
std::vector<std::string> Texts(const Tokenizer& tokenizer, const std::vector<std::string>& given,
                               const std::string& path, const std::string& what) {
  std::vector<std::string> texts;
  for (size_t i = 0; i < given.size(); ++i) {
    texts.push_back(EncodeUtf8(tokenizer.Strip(DecodeUtf8(given[i], Cat(what, " ", i)))));
  }
  if (!path.empty()) {
    for (std::string& line : ReadLines(tokenizer, path, what)) texts.push_back(std::move(line));
  }
  if (texts.empty() || std::any_of(texts.begin(), texts.end(),
                                   [](const std::string& t) { return t.empty(); })) {
    Fail("give at least one non-empty ", what);
  }
  return texts;
}

// Texts -> (N, output_dim) embeddings, as pe_port's Encoder.encode_text (not normalised).
FloatArray EncodeTexts(const std::vector<std::string>& texts, const Tokenizer& tokenizer,
                       Runner& runner, const std::string& model) {
  const int64_t rows = static_cast<int64_t>(texts.size());
  const int64_t context = tokenizer.context_length();
  std::vector<int32_t> ids;
  for (size_t i = 0; i < texts.size(); ++i) {
    bool truncated = false;
    const std::vector<int32_t> row = tokenizer.Row(texts[i], &truncated);
    ids.insert(ids.end(), row.begin(), row.end());
    if (truncated) {
      std::fprintf(stderr, "pe_infer: warning: text %zu ('%s') is longer than the %lld-token "
                   "context of %s; truncated as the original does\n", i,
                   Shortened(texts[i]).c_str(), static_cast<long long>(context), model.c_str());
    }
    if (tokenizer.OutsideScope(texts[i])) {
      std::fprintf(stderr, "pe_infer: warning: text %zu ('%s') has characters ftfy may rewrite "
                   "(mojibake, ligatures, full-width forms, quotes, controls, combining marks), "
                   "which pe_infer does not: its ids may differ from pe-port's\n", i,
                   Shortened(texts[i]).c_str());
    }
  }
  const int64_t columns = ColumnsToRun(ids, rows, context);
  const std::vector<int32_t> run = FirstColumns(ids, rows, context, columns);
  FloatArray out;
  for (int64_t start = 0; start < rows; start += kTextBatch) {
    const int64_t batch = std::min(kTextBatch, rows - start);
    const std::vector<int32_t> part(run.begin() + start * columns,
                                    run.begin() + (start + batch) * columns);
    FloatArray embeddings = runner.RunIds("forward", part, {batch, columns});
    out.shape = {rows, embeddings.shape.back()};
    out.data.insert(out.data.end(), embeddings.data.begin(), embeddings.data.end());
  }
  return out;
}

void RequireFinite(const FloatArray& x, const Artifact& artifact, const std::string& output) {
  // NaN weights (an artifact sealed over them) or an overflow in half precision: said, not
  // written as if it were an embedding.
  for (float v : x.data) {
    if (!std::isfinite(v)) {
      Fail("the model produced NaN or Inf for this input (", artifact.dtype, "); nothing written",
           output.empty() ? "" : " to " + output);
    }
  }
}

int RunText(const Options& o) {
  auto say = [&](const std::string& line) {
    if (!o.quiet) std::fprintf(stderr, "pe_infer: %s\n", line.c_str());
  };
  CheckOutputPath(o.output, ".npy");
  std::string device;
  const Artifact artifact = LoadForDevice(o, &device);
  const TextArtifact& text = RequireText(artifact, o.artifact);
  const Tokenizer tokenizer(text.tokenizer);
  const std::vector<std::string> texts = Texts(tokenizer, o.texts, o.text_file, "text");
  Runner runner(text, artifact.dtype, device == "cuda" ? kDLCUDA : kDLCPU);
  auto begin = std::chrono::steady_clock::now();
  FloatArray embeddings = EncodeTexts(texts, tokenizer, runner, artifact.model);
  say(Cat("text tower on ", texts.size(), " text", texts.size() == 1 ? "" : "s", ": ",
          static_cast<int>(Seconds(begin) * 1000 + 0.5), " ms"));
  RequireFinite(embeddings, artifact, o.output);
  if (o.normalize) NormalizeRows(embeddings);
  WriteFileAtomically(o.output, EncodeNpyFloat32(embeddings.shape, embeddings.data.data()));
  say(Cat("wrote ", o.output, " ", ShapeString(embeddings.shape)));
  return 0;
}

// A .npy of pixels (one name per row) or an image file, pre-processed.
void ReadImages(const std::string& path, const Artifact& artifact, bool center_crop,
                FloatArray& pixels, std::vector<std::string>& names) {
  FloatArray read;
  if (EndsWith(path, ".npy")) {
    if (center_crop) Fail("--center-crop applies to images; a .npy is already pre-processed");
    read = ReadNpyFloat32(path);
  } else {
    const int size = artifact.image_size;
    read.shape = {1, 3, size, size};
    read.data = PreprocessImage(path, size, center_crop, artifact.mean, artifact.std);
  }
  CheckPixels(read, path, artifact.config.patch_size);
  if (!pixels.data.empty() && std::vector<int64_t>(read.shape.begin() + 1, read.shape.end()) !=
                                  std::vector<int64_t>(pixels.shape.begin() + 1,
                                                       pixels.shape.end())) {
    Fail("input ", path, " has pixels ", ShapeString(read.shape), ", unlike the inputs before ",
         "it ", ShapeString(pixels.shape), ": give images of one size per run");
  }
  for (int64_t i = 0; i < read.shape[0]; ++i) {
    names.push_back(EndsWith(path, ".npy") ? Cat(path, "[", i, "]") : path);
  }
  pixels.shape = read.shape;
  pixels.shape[0] = static_cast<int64_t>(names.size());
  pixels.data.insert(pixels.data.end(), read.data.begin(), read.data.end());
}

std::string JsonString(const std::string& utf8) {
  std::string out = "\"";
  for (unsigned char c : utf8) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

void PrintProbabilities(const Options& o, const std::vector<std::string>& names,
                        const std::vector<std::string>& labels, const FloatArray& probabilities) {
  const size_t k = labels.size();
  const size_t top_k = std::min(static_cast<size_t>(o.top_k), k);
  for (size_t r = 0; r < names.size(); ++r) {
    const float* row = probabilities.data.data() + r * k;
    std::vector<size_t> order(k);
    for (size_t i = 0; i < k; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return row[a] > row[b]; });
    order.resize(top_k);
    if (o.json) {
      std::string line = "{\"image\": " + JsonString(names[r]) + ", \"labels\": [";
      for (size_t i = 0; i < top_k; ++i) line += (i ? ", " : "") + JsonString(labels[order[i]]);
      line += "], \"probabilities\": [";
      for (size_t i = 0; i < top_k; ++i) line += Cat(i ? ", " : "", Fixed6(row[order[i]]));
      std::printf("%s]}\n", line.c_str());
    } else {
      std::printf("%s\n", names[r].c_str());
      for (size_t i : order) std::printf("  %6.2f%%  %s\n", row[i] * 100.0, labels[i].c_str());
    }
  }
}

int RunClassify(const Options& o) {
  auto say = [&](const std::string& line) {
    if (!o.quiet) std::fprintf(stderr, "pe_infer: %s\n", line.c_str());
  };
  if (!o.probabilities_output.empty()) CheckOutputPath(o.probabilities_output, ".npy");
  std::string device;
  const Artifact artifact = LoadForDevice(o, &device);
  const TextArtifact& text = RequireText(artifact, o.artifact);
  const Tokenizer tokenizer(text.tokenizer);

  // Labels and templates first (as pe-port's classify): a bad one fails before any work.
  std::vector<std::string> given;
  if (o.labels_given) {
    for (size_t start = 0;;) {
      const size_t comma = o.labels.find(',', start);
      given.push_back(o.labels.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  const std::vector<std::string> labels = Texts(tokenizer, given, o.labels_file, "label");
  std::vector<std::string> templates = {"{}"};
  if (!o.templates_file.empty()) {
    templates = ReadLines(tokenizer, o.templates_file, "templates");
    if (templates.empty() || std::any_of(templates.begin(), templates.end(), [](auto& t) {
          return t.find("{}") == std::string::npos;
        })) {
      Fail("templates file ", o.templates_file, ": each line needs a {} for the label");
    }
  }
  std::vector<std::string> prompts;
  for (const std::string& label : labels) {
    for (const std::string& t : templates) prompts.push_back(FillTemplate(t, label));
  }
  FloatArray pixels;
  std::vector<std::string> names;
  for (const std::string& input : o.inputs) {
    ReadImages(input, artifact, o.center_crop, pixels, names);
  }

  const DLDeviceType device_type = device == "cuda" ? kDLCUDA : kDLCPU;
  Runner text_runner(text, artifact.dtype, device_type);
  auto begin = std::chrono::steady_clock::now();
  const FloatArray label_embeddings =
      LabelEmbeddings(EncodeTexts(prompts, tokenizer, text_runner, artifact.model),
                      static_cast<int64_t>(labels.size()));
  Runner image_runner(artifact, artifact.dtype, device_type);
  const FloatArray image_embeddings = image_runner.Run("forward", pixels);
  RequireFinite(label_embeddings, artifact, o.probabilities_output);
  RequireFinite(image_embeddings, artifact, o.probabilities_output);
  const FloatArray probabilities = ZeroShotProbabilities(
      image_embeddings, label_embeddings, std::exp(text.logit_scale));
  say(Cat(names.size(), " image", names.size() == 1 ? "" : "s", " x ", labels.size(), " label",
          labels.size() == 1 ? "" : "s", " (", prompts.size(), " prompt",
          prompts.size() == 1 ? "" : "s", ") in ", static_cast<int>(Seconds(begin) * 1000 + 0.5),
          " ms"));
  if (!o.probabilities_output.empty()) {
    WriteFileAtomically(o.probabilities_output,
                        EncodeNpyFloat32(probabilities.shape, probabilities.data.data()));
  }
  PrintProbabilities(o, names, labels, probabilities);
  return 0;
}

int Run(const Options& o) {
  switch (o.mode) {
    case Mode::kText: return RunText(o);
    case Mode::kClassify: return RunClassify(o);
    case Mode::kImages: break;
  }
  return RunImages(o);
}

}  // namespace
}  // namespace pe

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s%s", pe::kUsage, pe::kHelp);
      return 0;
    }
    if (arg == "--version") {
      std::printf("pe_infer %s (artifact format %lld, TVM %s)\n", PE_INFER_VERSION,
                  static_cast<long long>(pe::kFormatVersion), PE_TVM_VERSION);
      return 0;
    }
    if (arg == "--list-models") {
      std::printf("%s", pe::OfficialModelsJson().c_str());
      return 0;
    }
  }
  try {
    return pe::Run(pe::ParseArgs(argc, argv));
  } catch (const pe::UserError& err) {
    std::fprintf(stderr, "pe_infer: error: %s\n", err.what());
    if (argc < 4) std::fprintf(stderr, "%s", pe::kUsage);
    return 2;
  } catch (const tvm::ffi::Error& err) {
    std::fprintf(stderr, "pe_infer: error: TVM %s: %s\n", err.kind().c_str(),
                 err.message().c_str());
    return 1;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "pe_infer: error: %s\n", err.what());
    return 1;
  }
}
