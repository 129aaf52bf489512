// pe_preprocess: pe_infer's image pipeline alone, so tests can compare it with Pillow's.
//
//   pe_preprocess IMAGE SIZE OUT.npy [--center-crop]   (1, 3, SIZE, SIZE), mean 0.5, std 0.5
//   pe_preprocess IMAGE --decode OUT.npy               (H, W, C) decoded pixel values
//   pe_preprocess IMAGE --resize W H OUT.npy           (H, W, C) after Image.resize((W, H))
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "image.h"
#include "npy.h"
#include "util.h"

namespace {

void WritePixels(const pe::Image& image, const std::string& out) {
  std::vector<float> values(image.pixels.begin(), image.pixels.end());
  if (!image.grey16.empty()) values.assign(image.grey16.begin(), image.grey16.end());
  pe::WriteFileAtomically(out, pe::EncodeNpyFloat32({image.height, image.width, image.channels},
                                                    values.data()));
}

int Main(const std::vector<std::string>& args) {
  if (args.size() == 3 && args[1] == "--decode") {
    WritePixels(pe::DecodeImage(args[0]), args[2]);
    return 0;
  }
  if (args.size() == 5 && args[1] == "--resize") {
    pe::Image image = pe::DecodeImage(args[0]);
    WritePixels(pe::ResizeLikePillow(image, std::stoi(args[2]), std::stoi(args[3])), args[4]);
    return 0;
  }
  if (args.size() == 3 || (args.size() == 4 && args[3] == "--center-crop")) {
    const int size = std::stoi(args[1]);
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
    std::vector<float> tensor = pe::PreprocessImage(args[0], size, args.size() == 4, mean, std);
    pe::WriteFileAtomically(args[2], pe::EncodeNpyFloat32({1, 3, size, size}, tensor.data()));
    return 0;
  }
  std::fprintf(stderr,
               "usage: pe_preprocess IMAGE SIZE OUT.npy [--center-crop]\n"
               "       pe_preprocess IMAGE --decode OUT.npy\n"
               "       pe_preprocess IMAGE --resize W H OUT.npy\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const pe::UserError& err) {
    std::fprintf(stderr, "pe_preprocess: error: %s\n", err.what());
    return 2;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "pe_preprocess: error: %s\n", err.what());
    return 1;
  }
}
