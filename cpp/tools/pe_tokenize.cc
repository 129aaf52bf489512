// pe_tokenize: pe_infer's tokenizer alone, so tests can compare its ids with pe_port's.
//
//   pe_tokenize MERGES TABLES NUM_MERGES CONTEXT START END PAD < TEXTS
//
// TEXTS: one text per line, its UTF-8 bytes in hex (a text may hold line breaks). Prints one
// line per text: its row of CONTEXT ids, then "|", then 1 if the text is outside the scope the
// tokenizer reproduces exactly (Tokenizer::OutsideScope), else 0; or "error: ..." for a text
// the tokenizer refuses. The files' checksums are taken as they are (the artifact's metadata
// checks them in pe_infer).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "tokenizer.h"
#include "util.h"

namespace {

std::string FromHex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return bytes;
}

int Main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: pe_tokenize MERGES TABLES NUM_MERGES CONTEXT START END PAD\n");
    return 2;
  }
  pe::TokenizerFiles files = pe::FilesAsTheyAre(argv[1], argv[2]);
  files.num_merges = std::stoi(argv[3]);
  files.context_length = std::stoi(argv[4]);
  files.start_id = std::stoi(argv[5]);
  files.end_id = std::stoi(argv[6]);
  files.pad_id = std::stoi(argv[7]);
  const pe::Tokenizer tokenizer(files);
  std::string line;
  while (std::getline(std::cin, line)) {
    const std::string text = FromHex(line);
    try {
      bool truncated = false;
      std::string out;
      for (int32_t id : tokenizer.Row(text, &truncated)) out += std::to_string(id) + " ";
      std::printf("%s| %d\n", out.c_str(), tokenizer.OutsideScope(text) ? 1 : 0);
    } catch (const pe::UserError& err) {
      std::printf("error: %s\n", err.what());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& err) {
    std::fprintf(stderr, "pe_tokenize: error: %s\n", err.what());
    return 2;
  }
}
