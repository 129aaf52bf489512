#include "image.h"

// libjpeg's headers need FILE and size_t declared first.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstring>

#include "util.h"

namespace pe {
namespace {

// ---- PNG (libpng) -------------------------------------------------------------------------------

struct PngSource {
  const std::vector<uint8_t>* bytes;
  size_t offset;
};

std::string TooManyPixels(double width, double height) {
  char text[160];
  std::snprintf(text, sizeof text, "it is %.0fx%.0f pixels, more than the %llu pe_infer reads",
                width, height, static_cast<unsigned long long>(kMaxImagePixels));
  return text;
}

struct PngErrors {
  char message[256] = "";
};

void PngRead(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (source->offset + length > source->bytes->size()) png_error(png, "file is truncated");
  std::memcpy(out, source->bytes->data() + source->offset, length);
  source->offset += length;
}

void PngError(png_structp png, png_const_charp message) {
  auto* errors = static_cast<PngErrors*>(png_get_error_ptr(png));
  std::snprintf(errors->message, sizeof errors->message, "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}  // e.g. a bad ancillary chunk: Pillow goes on too

Image DecodePng(const std::vector<uint8_t>& bytes, const std::string& path) {
  PngErrors errors;
  PngSource source{&bytes, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &errors, PngError, PngWarning);
  if (!png) Fail("cannot read image ", path, ": out of memory");
  png_infop info = png_create_info_struct(png);
  // Everything the longjmp may cross is plain data, declared before setjmp.
  Image* image = new Image();
  std::vector<png_bytep>* rows = new std::vector<png_bytep>();
  std::vector<uint8_t>* raw = new std::vector<uint8_t>();
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    delete image;
    delete rows;
    delete raw;
    Fail("cannot read image ", path, ": ", errors.message);
  }
  png_set_read_fn(png, &source, PngRead);
  png_read_info(png, info);
  const double declared_w = png_get_image_width(png, info);
  const double declared_h = png_get_image_height(png, info);
  if (declared_w * declared_h > static_cast<double>(kMaxImagePixels)) {
    std::snprintf(errors.message, sizeof errors.message, "%s", TooManyPixels(
        declared_w, declared_h).c_str());
    png_longjmp(png, 1);  // frees what the decoder holds, then fails with the message
  }
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  // The channels of the Pillow mode this file opens as (before any conversion).
  int channels = 3;
  switch (color_type) {
    case PNG_COLOR_TYPE_PALETTE:  // Pillow "P": resized with NEAREST, then palette -> RGB
      png_set_palette_to_rgb(png);
      image->nearest = true;
      channels = 3;
      break;
    case PNG_COLOR_TYPE_GRAY:  // "1" (NEAREST, 0 or 255), "L" (2 and 4 bits scaled), "I;16"
      if (bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
      image->nearest = bit_depth == 1;
      channels = 1;
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      channels = 2;
      break;
    case PNG_COLOR_TYPE_RGB:
      channels = 3;
      break;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      channels = 4;
      break;
    default:
      png_error(png, "unknown PNG colour type");
  }
  // 16-bit samples: Pillow keeps the high byte for RGB(A) and LA; 16-bit grey opens as "I;16",
  // kept whole here: it is resized in 16 bits and clipped at 255 afterwards, as Pillow does.
  const bool grey16 = bit_depth == 16 && color_type == PNG_COLOR_TYPE_GRAY;
  if (bit_depth == 16 && !grey16) png_set_strip_16(png);
  if (grey16) png_set_swap(png);  // native-endian uint16
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int decoded_channels = png_get_channels(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  const int width = static_cast<int>(png_get_image_width(png, info));
  const int height = static_cast<int>(png_get_image_height(png, info));
  raw->resize(row_bytes * height);
  rows->resize(height);
  for (int y = 0; y < height; ++y) (*rows)[y] = raw->data() + row_bytes * y;
  png_read_image(png, rows->data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  delete rows;

  Image out = std::move(*image);
  delete image;
  out.width = width;
  out.height = height;
  out.channels = channels;
  if (grey16) {
    out.grey16.resize(static_cast<size_t>(width) * height);
    for (int y = 0; y < height; ++y) {
      std::memcpy(&out.grey16[static_cast<size_t>(y) * width], raw->data() + row_bytes * y,
                  static_cast<size_t>(width) * 2);
    }
  } else {
    // A tRNS chunk may have added an alpha channel the Pillow mode does not have: drop it.
    out.pixels.resize(static_cast<size_t>(width) * height * channels);
    for (int y = 0; y < height; ++y) {
      const uint8_t* src = raw->data() + row_bytes * y;
      uint8_t* dst = out.pixels.data() + static_cast<size_t>(y) * width * channels;
      for (int x = 0; x < width; ++x) {
        for (int c = 0; c < channels; ++c) dst[x * channels + c] = src[x * decoded_channels + c];
      }
    }
  }
  delete raw;
  return out;
}

// ---- JPEG (libjpeg) -----------------------------------------------------------------------------

struct JpegErrors {
  jpeg_error_mgr base;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  longjmp(errors->jump, 1);
}

void JpegMessage(j_common_ptr cinfo, int level) {
  // Warnings about odd but decodable data are ignored, as Pillow does; running out of data is
  // an error there ("image file is truncated") and here.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    reinterpret_cast<JpegErrors*>(cinfo->err)->truncated = true;
  }
}

Image DecodeJpeg(const std::vector<uint8_t>& bytes, const std::string& path) {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  errors.message[0] = '\0';
  errors.truncated = false;
  cinfo.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = JpegErrorExit;
  errors.base.emit_message = JpegMessage;
  Image* image = new Image();
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    delete image;
    Fail("cannot read image ", path, ": ", errors.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (static_cast<double>(cinfo.image_width) * cinfo.image_height >
      static_cast<double>(kMaxImagePixels)) {
    std::snprintf(errors.message, sizeof errors.message, "%s",
                  TooManyPixels(cinfo.image_width, cinfo.image_height).c_str());
    longjmp(errors.jump, 1);
  }
  // Pillow's modes: greyscale files open as "L", YCbCr and RGB ones as "RGB".
  if (cinfo.jpeg_color_space == JCS_GRAYSCALE) {
    cinfo.out_color_space = JCS_GRAYSCALE;
  } else if (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB) {
    cinfo.out_color_space = JCS_RGB;
  } else {
    std::snprintf(errors.message, sizeof errors.message,
                  "CMYK/YCCK JPEG is not supported (convert the image to RGB first)");
    longjmp(errors.jump, 1);
  }
  // libjpeg's defaults are Pillow's: ISLOW inverse DCT, fancy upsampling, no scaling.
  jpeg_start_decompress(&cinfo);
  image->width = static_cast<int>(cinfo.output_width);
  image->height = static_cast<int>(cinfo.output_height);
  image->channels = cinfo.output_components;
  image->pixels.resize(static_cast<size_t>(image->width) * image->height * image->channels);
  const size_t stride = static_cast<size_t>(image->width) * image->channels;
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = image->pixels.data() + stride * cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  if (errors.truncated) {
    std::snprintf(errors.message, sizeof errors.message, "file is truncated");
    longjmp(errors.jump, 1);
  }
  jpeg_destroy_decompress(&cinfo);
  Image out = std::move(*image);
  delete image;
  return out;
}

// ---- resize ---------------------------------------------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;  // fixed-point weights, as Pillow's 8-bit path

// For each output pixel: the first input pixel it reads, how many, and their weights.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // out_size x ksize, 22-bit fixed point (8-bit images)
  std::vector<double> real;      // the same weights as doubles (16-bit images)
};

double Triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// The bilinear filter widened by the downscale factor (antialiasing), centred on each output
// pixel's centre mapped into the input, its weights normalised to sum 1, then made fixed point.
Taps BilinearTaps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  Taps taps;
  taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<size_t>(out_size) * taps.ksize, 0);
  taps.real.assign(static_cast<size_t>(out_size) * taps.ksize, 0.0);
  std::vector<double> k(taps.ksize);
  // A product with the inverse, not a quotient: they differ in the last bit, and Pillow's 16-bit
  // path (which keeps the weights as doubles) shows which one it uses.
  const double inverse_scale = 1.0 / filter_scale;
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    int lo = static_cast<int>(center - support + 0.5);  // truncation, as a C cast
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int n = hi - lo;
    double total = 0.0;
    for (int x = 0; x < n; ++x) {
      k[x] = Triangle((x + lo - center + 0.5) * inverse_scale);
      total += k[x];
    }
    int32_t* w = &taps.weights[static_cast<size_t>(i) * taps.ksize];
    double* r = &taps.real[static_cast<size_t>(i) * taps.ksize];
    for (int x = 0; x < n; ++x) {
      r[x] = total != 0.0 ? k[x] / total : k[x];
      const double fixed = r[x] * (1 << kPrecisionBits);
      w[x] = static_cast<int32_t>(fixed < 0 ? fixed - 0.5 : fixed + 0.5);
    }
    taps.first[i] = lo;
    taps.count[i] = n;
  }
  return taps;
}

inline uint8_t Clip8(int32_t sum) {
  const int32_t value = sum >> kPrecisionBits;
  return static_cast<uint8_t>(value < 0 ? 0 : value > 255 ? 255 : value);
}

// Premultiplies colour by alpha (Pillow's RGBA -> RGBa): c * a / 255, rounded.
void Premultiply(Image& image) {
  const int alpha = image.channels - 1;
  for (size_t p = 0; p < image.pixels.size(); p += image.channels) {
    const int a = image.pixels[p + alpha];
    for (int c = 0; c < alpha; ++c) {
      const int t = image.pixels[p + c] * a + 128;
      image.pixels[p + c] = static_cast<uint8_t>(((t >> 8) + t) >> 8);
    }
  }
}

// Back to straight alpha (RGBa -> RGBA): 255 c / a, truncated and clipped; a = 0 keeps c.
void Unpremultiply(Image& image) {
  const int alpha = image.channels - 1;
  for (size_t p = 0; p < image.pixels.size(); p += image.channels) {
    const int a = image.pixels[p + alpha];
    if (a == 0) continue;
    for (int c = 0; c < alpha; ++c) {
      image.pixels[p + c] = static_cast<uint8_t>(std::min(255, 255 * image.pixels[p + c] / a));
    }
  }
}

// One pass along columns (horizontal) or rows (vertical), rounding to uint8.
Image ResamplePass(const Image& image, int size, bool horizontal) {
  const int ch = image.channels;
  Image out;
  out.width = horizontal ? size : image.width;
  out.height = horizontal ? image.height : size;
  out.channels = ch;
  out.nearest = image.nearest;
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * ch);
  const Taps taps = BilinearTaps(horizontal ? image.width : image.height, size);
  // Input elements between two taps, and between two outputs along the other axis.
  const size_t tap_step = horizontal ? ch : static_cast<size_t>(image.width) * ch;
  const size_t lines = horizontal ? image.height : 1;
  const size_t line_len = horizontal ? 1 : static_cast<size_t>(image.width) * ch;
  for (size_t line = 0; line < lines; ++line) {
    for (int o = 0; o < size; ++o) {
      const int32_t* w = &taps.weights[static_cast<size_t>(o) * taps.ksize];
      const int n = taps.count[o];
      if (horizontal) {
        const uint8_t* src = &image.pixels[(line * image.width + taps.first[o]) * ch];
        uint8_t* dst = &out.pixels[(line * size + o) * ch];
        for (int c = 0; c < ch; ++c) {
          int32_t sum = 1 << (kPrecisionBits - 1);
          for (int t = 0; t < n; ++t) sum += src[t * tap_step + c] * w[t];
          dst[c] = Clip8(sum);
        }
      } else {
        const uint8_t* src = &image.pixels[static_cast<size_t>(taps.first[o]) * tap_step];
        uint8_t* dst = &out.pixels[static_cast<size_t>(o) * line_len];
        for (size_t i = 0; i < line_len; ++i) {
          int32_t sum = 1 << (kPrecisionBits - 1);
          for (int t = 0; t < n; ++t) sum += src[t * tap_step + i] * w[t];
          dst[i] = Clip8(sum);
        }
      }
    }
  }
  return out;
}

// The same pass on 16-bit grey ("I;16"): double weights, rounded half away from zero, clamped.
Image ResamplePass16(const Image& image, int size, bool horizontal) {
  Image out;
  out.width = horizontal ? size : image.width;
  out.height = horizontal ? image.height : size;
  out.channels = 1;
  out.grey16.resize(static_cast<size_t>(out.width) * out.height);
  const Taps taps = BilinearTaps(horizontal ? image.width : image.height, size);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      const int o = horizontal ? x : y;
      const double* w = &taps.real[static_cast<size_t>(o) * taps.ksize];
      double sum = 0.0;
      for (int t = 0; t < taps.count[o]; ++t) {
        const int sx = horizontal ? taps.first[o] + t : x;
        const int sy = horizontal ? y : taps.first[o] + t;
        sum += image.grey16[static_cast<size_t>(sy) * image.width + sx] * w[t];
      }
      const int rounded = static_cast<int>(sum >= 0.0 ? sum + 0.5 : sum - 0.5);
      out.grey16[static_cast<size_t>(y) * out.width + x] =
          static_cast<uint16_t>(std::clamp(rounded, 0, 65535));
    }
  }
  return out;
}

// Both passes where needed. The order matters in the last bit, since each pass rounds. Pillow 13
// (the version pe-port's Python side uses) resizes rows first when that shrinks the image by
// more than twice the columns the other order's first pass would drop; found by testing it on
// thousands of size pairs (tests/cpp/test_preprocess_cpp.py), see the README.
Image TwoPasses(const Image& image, int width, int height,
                Image (*pass)(const Image&, int, bool)) {
  const bool horizontal = width != image.width, vertical = height != image.height;
  if (!horizontal && !vertical) return image;
  if (!horizontal) return pass(image, height, false);
  if (!vertical) return pass(image, width, true);
  const bool rows_first =
      height < image.height && (image.height - height) > 2 * (image.width - width);
  if (rows_first) return pass(pass(image, height, false), width, true);
  return pass(pass(image, width, true), height, false);
}

// "I;16" -> 8 bits as Pillow's convert does it: values above 255 become 255.
Image ClipGrey16(const Image& image) {
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.channels = 1;
  out.pixels.resize(image.grey16.size());
  for (size_t i = 0; i < image.grey16.size(); ++i) {
    out.pixels[i] = static_cast<uint8_t>(std::min<uint16_t>(image.grey16[i], 255));
  }
  return out;
}

}  // namespace

Image ResampleBilinear(const Image& image, int width, int height) {
  if (!image.grey16.empty()) return TwoPasses(image, width, height, ResamplePass16);
  return TwoPasses(image, width, height, ResamplePass);
}

namespace {
// The input index under each output pixel's centre: a running sum of the scale from half a step,
// truncated, as Pillow's NEAREST resize computes it (a product would differ in the last bit).
std::vector<int> NearestIndices(int in_size, int out_size) {
  std::vector<int> index(out_size);
  const double scale = static_cast<double>(in_size) / out_size;
  double at = scale * 0.5;
  for (int o = 0; o < out_size; ++o) {
    index[o] = std::min(static_cast<int>(at), in_size - 1);
    at += scale;
  }
  return index;
}
}  // namespace

Image ResampleNearest(const Image& image, int width, int height) {
  const int ch = image.channels;
  const std::vector<int> columns = NearestIndices(image.width, width);
  const std::vector<int> rows = NearestIndices(image.height, height);
  Image out;
  out.width = width;
  out.height = height;
  out.channels = ch;
  out.nearest = image.nearest;
  out.pixels.resize(static_cast<size_t>(width) * height * ch);
  for (int y = 0; y < height; ++y) {
    const uint8_t* src = &image.pixels[static_cast<size_t>(rows[y]) * image.width * ch];
    uint8_t* dst = &out.pixels[static_cast<size_t>(y) * width * ch];
    for (int x = 0; x < width; ++x) {
      std::memcpy(dst + x * ch, src + static_cast<size_t>(columns[x]) * ch, ch);
    }
  }
  return out;
}

Image ResizeLikePillow(const Image& image, int width, int height) {
  if (width <= 0 || height <= 0) Fail("cannot resize an image to ", width, "x", height);
  if (!image.grey16.empty()) return ClipGrey16(ResampleBilinear(image, width, height));
  if (width == image.width && height == image.height) return image;
  if (image.nearest) return ResampleNearest(image, width, height);
  if (image.channels == 2 || image.channels == 4) {
    Image premultiplied = image;
    Premultiply(premultiplied);
    Image out = ResampleBilinear(premultiplied, width, height);
    Unpremultiply(out);
    return out;
  }
  return ResampleBilinear(image, width, height);
}

Image Crop(const Image& image, int left, int top, int width, int height) {
  if (left < 0 || top < 0 || left + width > image.width || top + height > image.height) {
    Fail("crop box outside the image");
  }
  Image out;
  out.width = width;
  out.height = height;
  out.channels = image.channels;
  out.nearest = image.nearest;
  const size_t row = static_cast<size_t>(width) * image.channels;
  out.pixels.resize(row * height);
  for (int y = 0; y < height; ++y) {
    std::memcpy(&out.pixels[row * y],
                &image.pixels[(static_cast<size_t>(top + y) * image.width + left) *
                              image.channels],
                row);
  }
  return out;
}

Image ResizeForModel(const Image& image, int size, bool center_crop) {
  if (!center_crop) return ResizeLikePillow(image, size, size);
  // Shorter side to `size`, the longer one scaled and truncated (Python's int()); bounded like
  // a decoded image before it is made (or cast to int).
  const double longer = std::trunc(static_cast<double>(size) *
                                   std::max(image.width, image.height) /
                                   std::min(image.width, image.height));
  CheckPixelCount(size, longer, "resized for the centre crop");
  const int new_w = image.width <= image.height ? size : static_cast<int>(longer);
  const int new_h = image.width <= image.height ? static_cast<int>(longer) : size;
  Image resized = ResizeLikePillow(image, new_w, new_h);
  // torchvision's CenterCrop: round((new - size) / 2), halves to even as Python's round().
  const int left = static_cast<int>(std::nearbyint((new_w - size) / 2.0));
  const int top = static_cast<int>(std::nearbyint((new_h - size) / 2.0));
  return Crop(resized, left, top, size, size);
}

void ToTensor(const Image& image, const float mean[3], const float std[3], float* out) {
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  // L and LA give the same value to R, G and B; alpha is dropped (Pillow's convert("RGB")).
  const bool grey = image.channels <= 2;
  for (size_t p = 0; p < plane; ++p) {
    const uint8_t* px = &image.pixels[p * image.channels];
    for (int c = 0; c < 3; ++c) {
      const float unit = static_cast<float>(px[grey ? 0 : c]) / 255.0f;
      out[c * plane + p] = (unit - mean[c]) / std[c];
    }
  }
}

void CheckPixelCount(double width, double height, const std::string& what) {
  if (width * height > static_cast<double>(kMaxImagePixels)) {
    Fail("image ", what, ": ", TooManyPixels(width, height));
  }
}

Image DecodeImageBytes(const std::vector<uint8_t>& bytes, const std::string& path) {
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Image image;
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), kPng, 8) == 0) {
    image = DecodePng(bytes, path);
  } else if (bytes.size() >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff) {
    image = DecodeJpeg(bytes, path);
  } else {
    Fail("cannot read image ", path, ": not a PNG or JPEG file (pe_infer reads those two; "
         "give other formats as a pre-processed .npy)");
  }
  if (image.width <= 0 || image.height <= 0) Fail("cannot read image ", path, ": it is empty");
  return image;
}

Image DecodeImage(const std::string& path) {
  RequireRegularFile(path, "input");
  return DecodeImageBytes(ReadFile(path, "image"), path);
}

std::vector<float> PreprocessImage(const std::string& path, int size, bool center_crop,
                                   const float mean[3], const float std[3]) {
  Image image = ResizeForModel(DecodeImage(path), size, center_crop);
  std::vector<float> tensor(static_cast<size_t>(3) * size * size);
  ToTensor(image, mean, std, tensor.data());
  return tensor;
}

}  // namespace pe
