// Image files to the tensor the model takes, as pe_port.preprocess makes it with Pillow.
//
// PNG is decoded with libpng and JPEG with libjpeg(-turbo); the resize re-implements what
// Pillow's Image.resize(size, BILINEAR) computes (see image.cc and the README's C++ section).
#ifndef PE_INFER_IMAGE_H_
#define PE_INFER_IMAGE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace pe {

// 8-bit pixels, rows top to bottom, channels interleaved.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;  // 1: L, 2: LA, 3: RGB, 4: RGBA (the Pillow mode the file opens as)
  // Pillow resizes palette ("P") and 1-bit ("1") images with NEAREST whatever is asked; the
  // decoder expands those to L or RGB and sets this flag so the resize does the same.
  bool nearest = false;
  std::vector<uint8_t> pixels;
  // 16-bit greyscale PNGs open in Pillow as "I;16": their samples are kept here (and `pixels` is
  // empty) until the resize, which works in 16 bits and then clips at 255 as Pillow does.
  std::vector<uint16_t> grey16;
};

// The largest image (width x height) read, checked from the file's header before decoding (a
// few hundred bytes can declare gigapixels) and for the resize before a centre crop (a 1 x 20000
// strip would become 384 x 7.7 million): pe_port.preprocess.MAX_IMAGE_PIXELS, the same number.
constexpr uint64_t kMaxImagePixels = 100000000;

// A UserError "image WHAT is WxH pixels, more than ..." past kMaxImagePixels.
void CheckPixelCount(double width, double height, const std::string& what);

// Decodes a PNG or JPEG file (recognised by its signature, not its name). An unreadable,
// truncated or corrupt file, another format, or one over kMaxImagePixels is a UserError naming
// the file.
Image DecodeImage(const std::string& path);
Image DecodeImageBytes(const std::vector<uint8_t>& bytes, const std::string& path);

// Pillow's Image.resize((width, height), BILINEAR), mode handling included: "1" and "P" use
// NEAREST, "LA" and "RGBA" are resized premultiplied by alpha, an unchanged size is a copy.
// The result always has 8-bit `pixels`.
Image ResizeLikePillow(const Image& image, int width, int height);

// The two passes of the resize itself, exposed for tests: a triangle filter whose support
// grows with the downscale factor, 22-bit fixed-point weights, rounding to uint8 between the
// horizontal and the vertical pass.
Image ResampleBilinear(const Image& image, int width, int height);
Image ResampleNearest(const Image& image, int width, int height);

// Pillow's Image.crop for a box inside the image.
Image Crop(const Image& image, int left, int top, int width, int height);

// pe_port.preprocess.resize: squash to size x size, or shorter side to `size` and centre crop.
Image ResizeForModel(const Image& image, int size, bool center_crop);

// RGB (L repeated, alpha dropped), [0, 1], (x - mean) / std, written as (3, H, W) float32.
void ToTensor(const Image& image, const float mean[3], const float std[3], float* out);

// All of the above for one file: a (3, size, size) tensor.
std::vector<float> PreprocessImage(const std::string& path, int size, bool center_crop,
                                   const float mean[3], const float std[3]);

}  // namespace pe

#endif  // PE_INFER_IMAGE_H_
