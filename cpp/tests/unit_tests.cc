// Unit tests of pe_infer's pieces that need no artifact: number formats, .npy files, function
// names, the resize, decoder errors. Run by ctest; argv[1] is a scratch folder.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "clip.h"
#include "image.h"
#include "models.h"
#include "npy.h"
#include "tokenizer.h"
#include "util.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                 \
    }                                                                             \
  } while (0)

bool Throws(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
  } catch (const pe::UserError& err) {
    if (std::string(err.what()).find(needle) != std::string::npos) return true;
    std::fprintf(stderr, "unexpected message: %s\n", err.what());
    return false;
  }
  return false;
}

void TestHalf() {
  CHECK(pe::FloatToHalf(1.0f) == 0x3c00);
  CHECK(pe::FloatToHalf(-2.0f) == 0xc000);
  CHECK(pe::FloatToHalf(65504.0f) == 0x7bff);
  CHECK(pe::FloatToHalf(65519.0f) == 0x7bff);   // below the halfway point to 65536
  CHECK(pe::FloatToHalf(65520.0f) == 0x7c00);   // ties to even: overflows to inf
  CHECK(pe::FloatToHalf(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(pe::FloatToHalf(std::ldexp(1.0f, -25)) == 0x0000);  // tie, to even (zero)
  CHECK(pe::FloatToHalf(std::ldexp(3.0f, -26)) == 0x0001);
  CHECK(pe::FloatToHalf(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 units: tie, to even (2)
  CHECK(pe::FloatToHalf(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie, to even
  CHECK(pe::FloatToHalf(1.0f + std::ldexp(3.0f, -11)) == 0x3c02);  // tie, to even
  CHECK(pe::FloatToHalf(1e-10f) == 0);
  CHECK(std::isnan(pe::HalfToFloat(pe::FloatToHalf(NAN))));
  // Every finite half survives half -> float -> half.
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    if (pe::FloatToHalf(pe::HalfToFloat(static_cast<uint16_t>(h))) != h) ++bad;
  }
  CHECK(bad == 0);
  CHECK(pe::HalfToFloat(0x0001) == std::ldexp(1.0f, -24));

  CHECK(pe::FloatToBfloat16(1.0f) == 0x3f80);
  CHECK(pe::FloatToBfloat16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);          // tie, to even
  CHECK(pe::FloatToBfloat16(1.0f + std::ldexp(3.0f, -8)) == 0x3f82);          // tie, to even
  CHECK(pe::FloatToBfloat16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3f81);
  CHECK(pe::Bfloat16ToFloat(0x4049) == 3.140625f);
}

// A version 1.0 .npy file of `header` (padded as NumPy pads it) and `floats` float32 values.
std::string NpyWithHeader(const std::string& dir, const std::string& name, std::string header,
                          size_t floats) {
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::vector<uint8_t> bytes = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                static_cast<uint8_t>(header.size() & 0xff),
                                static_cast<uint8_t>(header.size() >> 8)};
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.resize(bytes.size() + 8 * floats, 0);  // room for float64 too
  const std::string path = dir + "/" + name + ".npy";
  pe::WriteFileAtomically(path, bytes);
  return path;
}

// The header is read with NumPy's rules (`np.load` refuses or reads each of these the same way).
void TestNpyHeaderRules(const std::string& dir) {
  const std::string shape = "'fortran_order': False, 'shape': (1, 3, 2, 2), }";
  auto refused = [&](const std::string& name, const std::string& header, const char* why) {
    const std::string path = NpyWithHeader(dir, name, header, 12);
    return Throws([&] { pe::ReadNpyFloat32(path); }, why);
  };
  // A repeated key takes its last value, as in a Python dict.
  CHECK(refused("dup8", "{'descr': '<f4', 'descr': '<f8', " + shape, "has dtype float64"));
  const std::string last_f4 = NpyWithHeader(dir, "dup4", "{'descr': '<f8', 'descr': '<f4', " +
                                            shape, 12);
  CHECK(pe::ReadNpyFloat32(last_f4).data.size() == 12);
  CHECK(refused("extra", "{'descr': '<f4', 'extra': 1, " + shape, "unknown key 'extra'"));
  CHECK(refused("missing", "{'descr': '<f4', 'shape': (1, 3, 2, 2), }", "lacks"));
  CHECK(refused("truex", "{'descr': '<f4', 'fortran_order': Truex, 'shape': (12,), }",
                "not True or False"));
  CHECK(refused("nocomma", "{'descr': '<f4', 'fortran_order': False, 'shape': (3 4), }",
                "lacks a comma"));
  CHECK(refused("int", "{'descr': '<f4', 'fortran_order': False, 'shape': (12), }",
                "not a tuple"));
  CHECK(refused("nul", std::string("{'descr': '<f4',") + '\0' + " " + shape, "NUL byte"));
  CHECK(refused("after", "{'descr': '<f4', " + shape + "x", "after the header"));
  CHECK(refused("big", "{'descr': '<f4', 'fortran_order': False, 'shape': "
                       "(99999999999999999999,), }", "past 2^63"));
  CHECK(refused("negative", "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
                "negative dimension"));
  // An item size past int: named as written, no signed overflow.
  CHECK(refused("huge", "{'descr': '<f999999999', " + shape, "has dtype '<f999999999'"));
  // Bytes of the file reach a message escaped, never raw.
  CHECK(refused("byte", "{'descr': '<\xff" "4', " + shape, "has dtype '<\\xff4'"));
  CHECK(refused("keybyte", "{'descr': '<f4', 'a\x1b[2J': 1, " + shape,
                "unknown key 'a\\x1b[2J'"));
  // No pixels at all: read without touching the (absent) data.
  const std::string empty = NpyWithHeader(dir, "empty", "{'descr': '<f4', 'fortran_order': "
                                          "False, 'shape': (0, 3, 2, 2), }", 0);
  CHECK(pe::ReadNpyFloat32(empty).data.empty());
}

void TestNpy(const std::string& dir) {
  const std::string path = dir + "/a.npy";
  std::vector<float> values(2 * 3 * 4);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.5f * i - 3;
  pe::WriteFileAtomically(path, pe::EncodeNpyFloat32({2, 3, 4}, values.data()));
  pe::FloatArray back = pe::ReadNpyFloat32(path);
  CHECK((back.shape == std::vector<int64_t>{2, 3, 4}));
  CHECK(back.data == values);
  std::vector<uint8_t> bytes = pe::ReadFile(path, "test");
  CHECK((10 + bytes[8] + 256 * bytes[9]) % 64 == 0);  // data aligned as NumPy aligns it

  // A Fortran-order file: element (i, j) of a 2x3 array at i + 2 j.
  std::string header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::vector<uint8_t> f = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                            static_cast<uint8_t>(header.size() & 0xff),
                            static_cast<uint8_t>(header.size() >> 8)};
  f.insert(f.end(), header.begin(), header.end());
  const float column_major[6] = {0, 3, 1, 4, 2, 5};  // the C-order array is 0..5
  const uint8_t* raw = reinterpret_cast<const uint8_t*>(column_major);
  f.insert(f.end(), raw, raw + sizeof column_major);
  pe::WriteFileAtomically(dir + "/f.npy", f);
  pe::FloatArray fortran = pe::ReadNpyFloat32(dir + "/f.npy");
  CHECK((fortran.data == std::vector<float>{0, 1, 2, 3, 4, 5}));

  // Wrong dtype, truncation, not .npy, missing.
  std::vector<uint8_t> f8 = bytes;
  const std::string f4 = "'<f4'";
  auto at = std::search(f8.begin(), f8.end(), f4.begin(), f4.end());
  at[3] = '8';
  pe::WriteFileAtomically(dir + "/f8.npy", f8);
  CHECK(Throws([&] { pe::ReadNpyFloat32(dir + "/f8.npy"); }, "has dtype float64"));
  std::vector<uint8_t> cut(bytes.begin(), bytes.end() - 4);
  pe::WriteFileAtomically(dir + "/cut.npy", cut);
  CHECK(Throws([&] { pe::ReadNpyFloat32(dir + "/cut.npy"); }, "is truncated"));
  pe::WriteFileAtomically(dir + "/text.npy", std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o'});
  CHECK(Throws([&] { pe::ReadNpyFloat32(dir + "/text.npy"); }, "not a .npy file"));
  CHECK(Throws([&] { pe::ReadNpyFloat32(dir + "/none.npy"); }, "does not exist"));
  TestNpyHeaderRules(dir);
}

void TestOutputChecks(const std::string& dir) {
  CHECK(Throws([&] { pe::CheckOutputPath(dir + "/out.txt", ".npy"); }, "must be a file name"));
  CHECK(Throws([&] { pe::CheckOutputPath(dir + "/nowhere/out.npy", ".npy"); },
               "does not exist"));
  mkdir((dir + "/x.npy").c_str(), 0755);
  CHECK(Throws([&] { pe::CheckOutputPath(dir + "/x.npy", ".npy"); }, "is a folder"));
  pe::CheckOutputPath(dir + "/fine.npy", ".npy");
}

void TestFunctionNames() {
  CHECK(pe::FeaturesFunctionName(false, -1, false, 12) == "forward_features");
  CHECK(pe::FeaturesFunctionName(false, 11, false, 12) == "forward_features");
  CHECK(pe::FeaturesFunctionName(true, -1, false, 12) == "forward_features_norm1_layer11_strip0");
  CHECK(pe::FeaturesFunctionName(true, -2, true, 12) == "forward_features_norm1_layer10_strip1");
  CHECK(pe::FeaturesFunctionName(false, -12, false, 12) == "forward_features_norm0_layer0_strip0");
  CHECK(pe::FeaturesFunctionName(false, 3, true, 12) == "forward_features_norm0_layer3_strip1");
  CHECK(pe::FindOfficialModel("PE-Core-T16-384")->width == 192);
  CHECK(pe::FindOfficialModel("PE-Core-T16") == nullptr);
}

pe::Image Grey(int w, int h, std::vector<uint8_t> px) {
  pe::Image image;
  image.width = w;
  image.height = h;
  image.channels = 1;
  image.pixels = std::move(px);
  return image;
}

void TestResize() {
  // 4 -> 2 columns: the triangle is widened to 2 pixels each side; weights 3/7, 3/7, 1/7.
  pe::Image row = Grey(4, 1, {0, 70, 140, 210});
  pe::Image half = pe::ResizeLikePillow(row, 2, 1);
  CHECK((half.pixels == std::vector<uint8_t>{50, 160}));
  // Upscaling interpolates between neighbours (plain bilinear, clamped at the edges).
  pe::Image up = pe::ResizeLikePillow(Grey(2, 1, {0, 100}), 4, 1);
  CHECK((up.pixels == std::vector<uint8_t>{0, 25, 75, 100}));
  // A constant image stays constant, whatever the sizes.
  pe::Image flat = Grey(37, 23, std::vector<uint8_t>(37 * 23, 173));
  for (auto [w, h] : std::vector<std::pair<int, int>>{{5, 7}, {64, 64}, {37, 1}, {100, 3}}) {
    pe::Image out = pe::ResizeLikePillow(flat, w, h);
    CHECK(out.width == w && out.height == h);
    CHECK(out.pixels == std::vector<uint8_t>(static_cast<size_t>(w) * h, 173));
  }
  // The same size is a copy; nearest picks pixels.
  CHECK(pe::ResizeLikePillow(row, 4, 1).pixels == row.pixels);
  row.nearest = true;
  CHECK((pe::ResizeLikePillow(row, 2, 1).pixels == std::vector<uint8_t>{70, 210}));
  // Centre crop: 30x20 -> shorter side 10 -> 15x10 -> columns 2..11 (round(2.5) = 2: half to
  // even, as Python's round; half up would start at 3). A ramp makes every offset visible.
  for (bool tall : {false, true}) {
    const int w = tall ? 20 : 30, h = tall ? 30 : 20;
    std::vector<uint8_t> ramp(static_cast<size_t>(w) * h);
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        ramp[y * w + x] = static_cast<uint8_t>(tall ? 8 * y + x : 8 * x + y);
      }
    }
    pe::Image image = Grey(w, h, ramp);
    pe::Image resized = pe::ResizeLikePillow(image, tall ? 10 : 15, tall ? 15 : 10);
    pe::Image cropped = pe::ResizeForModel(image, 10, true);
    CHECK(cropped.width == 10 && cropped.height == 10);
    bool same = cropped.pixels.size() == 100;
    for (int y = 0; same && y < 10; ++y) {
      for (int x = 0; x < 10; ++x) {
        const int source = tall ? (y + 2) * 10 + x : y * 15 + x + 2;
        same = same && cropped.pixels[y * 10 + x] == resized.pixels[source];
      }
    }
    CHECK(same);
  }
  // Normalisation: 0 -> -1, 255 -> 1.
  float tensor[3 * 2];
  const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
  pe::ToTensor(Grey(2, 1, {0, 255}), mean, std, tensor);
  CHECK(tensor[0] == -1.0f && tensor[1] == 1.0f && tensor[4] == -1.0f && tensor[5] == 1.0f);
}

void TestDecodeErrors() {
  CHECK(Throws([] { pe::DecodeImageBytes({'G', 'I', 'F', '8', '9', 'a'}, "x.gif"); },
               "not a PNG or JPEG"));
  const std::vector<uint8_t> png_head = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0};
  CHECK(Throws([&] { pe::DecodeImageBytes(png_head, "bad.png"); }, "cannot read image bad.png"));
  const std::vector<uint8_t> jpeg_head = {0xff, 0xd8, 0xff, 0xe0, 0, 16, 'J', 'F'};
  CHECK(Throws([&] { pe::DecodeImageBytes(jpeg_head, "bad.jpg"); }, "cannot read image bad.jpg"));
  CHECK(Throws([] { pe::DecodeImage("/nonexistent/image.png"); }, "does not exist"));
}

}  // namespace

void TestUtf8() {
  const std::string mixed = "a\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80";  // a é 日 😀
  CHECK(pe::DecodeUtf8(mixed, "t") == std::u32string(U"a\u00e9\u65e5\U0001F600"));
  CHECK(pe::EncodeUtf8(pe::DecodeUtf8(mixed, "t")) == mixed);
  for (const std::string bad : {"\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                "\xe6\x97", "\x80", "a\xff" "b"}) {
    CHECK(Throws([&] { pe::DecodeUtf8(bad, "text 3"); }, "text 3 is not valid UTF-8"));
  }
}

void TestSplitLines() {
  // Python's str.splitlines: \r\n is one break, a last break adds no empty line.
  const auto lines = pe::SplitLines(U"a\r\nb\rc\u2028d\x1c\n");
  CHECK(lines.size() == 5 && lines[0] == U"a" && lines[1] == U"b" && lines[3] == U"d" &&
        lines[4].empty());
  CHECK(pe::SplitLines(U"").empty());
}

void TestCodePointSet() {
  pe::CodePointSet set;
  set.Add(0x41, 0x5A);
  set.Add(0x100, 0x100);
  CHECK(set.Contains(0x41) && set.Contains(0x5A) && set.Contains(0x100));
  CHECK(!set.Contains(0x40) && !set.Contains(0x5B) && !set.Contains(0xFF) && !set.Contains(0x101));
}

void TestZeroShotMath() {
  // Token rows: columns up to the last row's first end (largest) id.
  const std::vector<int32_t> ids = {1, 5, 9, 0, 1, 9, 0, 0};  // end id 9
  CHECK(pe::ColumnsToRun(ids, 2, 4) == 3);
  CHECK((pe::FirstColumns(ids, 2, 4, 3) == std::vector<int32_t>{1, 5, 9, 1, 9, 0}));
  // Two labels, two templates each: the label embedding is the normalised mean of the
  // normalised prompts.
  pe::FloatArray prompts{{4, 2}, {3, 0, 0, 5, 0, 2, 0, 2}};
  const pe::FloatArray labels = pe::LabelEmbeddings(prompts, 2);
  const float half = static_cast<float>(std::sqrt(0.5));
  CHECK(labels.shape == (std::vector<int64_t>{2, 2}));
  CHECK(std::fabs(labels.data[0] - half) < 1e-7f && std::fabs(labels.data[1] - half) < 1e-7f);
  CHECK(labels.data[2] == 0.0f && labels.data[3] == 1.0f);
  // Softmax of scale * cosine: rows sum to 1, the closer label wins.
  pe::FloatArray images{{1, 2}, {0, 10}};
  const pe::FloatArray p = pe::ZeroShotProbabilities(images, labels, 100.0);
  const double expected = 1.0 / (1.0 + std::exp(100.0 * (half - 1.0)));
  CHECK(std::fabs(p.data[0] + p.data[1] - 1.0f) < 1e-6f);
  CHECK(std::fabs(p.data[1] - expected) < 1e-6);
  CHECK(pe::FillTemplate("a {} of a {}.", "dog") == "a dog of a dog.");
  CHECK(pe::FillTemplate("no slot", "dog") == "no slot");
}

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "unit_test_files";
  mkdir(dir.c_str(), 0755);
  try {
    TestHalf();
    TestNpy(dir);
    TestOutputChecks(dir);
    TestFunctionNames();
    TestResize();
    TestDecodeErrors();
    TestUtf8();
    TestSplitLines();
    TestCodePointSet();
    TestZeroShotMath();
  } catch (const std::exception& err) {
    std::fprintf(stderr, "unexpected exception: %s\n", err.what());
    return 1;
  }
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all unit checks passed\n");
  return 0;
}
