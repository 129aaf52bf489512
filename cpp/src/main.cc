// pe_infer: run a Perception Encoder artifact written by `pe-port export` on a .npy or an image.
//
//   pe_infer ARTIFACT_DIR INPUT OUTPUT.npy [--features] [--layer-idx N] [--norm] [--strip-cls]
//            [--center-crop] [--device cpu|cuda] [--threads N] [--repeat N] [--quiet]
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
#include "image.h"
#include "models.h"
#include "npy.h"
#include "runner.h"
#include "util.h"

namespace pe {
namespace {

const char kUsage[] =
    "usage: pe_infer ARTIFACT_DIR INPUT OUTPUT.npy [--features] [--layer-idx N] [--norm]\n"
    "                [--strip-cls] [--center-crop] [--device cpu|cuda] [--threads N]\n"
    "                [--repeat N] [--quiet]\n"
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
    "  --list-models    the models and configs this program accepts, as JSON\n";

struct Options {
  std::string artifact, input, output;
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
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) Fail(arg, " needs a value");
      return argv[++i];
    };
    if (arg == "--features") {
      o.features = true;
    } else if (arg == "--norm") {
      o.norm = true;
    } else if (arg == "--strip-cls") {
      o.strip_cls = true;
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

int Run(const Options& o) {
  auto start = std::chrono::steady_clock::now();
  auto say = [&](const std::string& line) {
    if (!o.quiet) std::fprintf(stderr, "pe_infer: %s\n", line.c_str());
  };
  CheckOutputPath(o.output, ".npy");
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
  const std::string device = o.device.empty() ? compiled_for : o.device;
  if (device != compiled_for) {
    Fail("artifact ", o.artifact, " was compiled for ", compiled_for, " (target ",
         artifact.target_kind, "); run it with --device ", compiled_for,
         " or export it with --target ", device);
  }
  if (!artifact.tvm_version.empty() && artifact.tvm_version != PE_TVM_VERSION) {
    std::fprintf(stderr,
                 "pe_infer: warning: the artifact was exported with TVM %s, this runtime is "
                 "TVM %s\n",
                 artifact.tvm_version.c_str(), PE_TVM_VERSION);
  }

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

  Runner runner(artifact, device == "cuda" ? kDLCUDA : kDLCPU);
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
