// pe_fuzz_inputs: pe_infer's readers of untrusted input, many inputs in one process, for the
// fuzz tests (tests/cpp/test_fuzz_cpp.py; `make fuzz` runs them under ASan + UBSan).
//
//   pe_fuzz_inputs npy FILE...       the .npy reader
//   pe_fuzz_inputs image FILE...     decode, then pre-process to 64 x 64 with a centre crop
//   pe_fuzz_inputs artifact DIR...   metadata.json read and checked, then weights and library
//   pe_fuzz_inputs tokenizer DIR...  DIR/merges.txt and DIR/tables.json read (their CRC-32s
//                                    taken as they are, so damage reaches the parsers), then
//                                    a few texts tokenised with them
//
// Prints one line per input: "ok" or "refused: MESSAGE". A refusal is a UserError, which
// pe_infer reports in one line with exit 2; anything else thrown is a defect: its line starts
// "unexpected:" and the exit status is 1. A crash or a sanitizer report is one too.
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "artifact.h"
#include "image.h"
#include "npy.h"
#include "tokenizer.h"
#include "util.h"

namespace {

void ReadArtifact(const std::string& dir) {
  const pe::Artifact artifact = pe::LoadArtifact(dir);
  const pe::MappedFile weights(artifact.weights_path, "weights");
  pe::VerifyWeights(artifact, weights);
  pe::VerifyLibrary(artifact);
}

void ReadTokenizer(const std::string& dir) {
  pe::TokenizerFiles files = pe::FilesAsTheyAre(dir + "/merges.txt", dir + "/tables.json");
  // CLIP's counts and ids, as pe-port exports them.
  files.num_merges = 48894;
  files.context_length = 32;
  files.start_id = 49406;
  files.end_id = 49407;
  files.pad_id = 0;
  const pe::Tokenizer tokenizer(files);
  bool truncated = false;
  for (const char* text : {"A PHOTO of ΟΔΟΣ &amp;amp; &#x41; &ntilde 42 it's İ café",
                           "<start_of_text>!<end_of_text> \xef\xac\x81 \xc3\x83\xc2\xa9",
                           "\t\xc2\x85 x\xe2\x80\xa8 \xcd\x85\xc5\xbf's"}) {
    tokenizer.Row(text, &truncated);
    tokenizer.OutsideScope(text);
  }
}

void PreprocessSmall(const std::string& path) {
  const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
  pe::PreprocessImage(path, 64, true, mean, std);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string kind = argc > 1 ? argv[1] : "";
  std::function<void(const std::string&)> read;
  if (kind == "npy") read = [](const std::string& path) { pe::ReadNpyFloat32(path); };
  if (kind == "image") read = PreprocessSmall;
  if (kind == "artifact") read = ReadArtifact;
  if (kind == "tokenizer") read = ReadTokenizer;
  if (!read) {
    std::fprintf(stderr, "usage: pe_fuzz_inputs npy|image|artifact|tokenizer INPUT...\n");
    return 2;
  }
  int status = 0;
  for (int i = 2; i < argc; ++i) {
    try {
      read(argv[i]);
      std::printf("ok\n");
    } catch (const pe::UserError& err) {
      std::printf("refused: %s\n", err.what());
    } catch (const std::exception& err) {
      std::printf("unexpected: %s\n", err.what());
      status = 1;
    }
    std::fflush(stdout);
  }
  return status;
}
