#include "clip.h"

#include <algorithm>
#include <cmath>

#include "util.h"

namespace pe {

int64_t ColumnsToRun(const std::vector<int32_t>& ids, int64_t rows, int64_t context) {
  int64_t columns = 1;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = ids.data() + r * context;
    // NumPy's argmax: the first position of the largest id.
    const int64_t first_max = std::max_element(row, row + context) - row;
    columns = std::max(columns, first_max + 1);
  }
  return columns;
}

std::vector<int32_t> FirstColumns(const std::vector<int32_t>& ids, int64_t rows,
                                  int64_t context, int64_t columns) {
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(rows * columns));
  for (int64_t r = 0; r < rows; ++r) {
    out.insert(out.end(), ids.begin() + r * context, ids.begin() + r * context + columns);
  }
  return out;
}

void NormalizeRows(FloatArray& x) {
  const int64_t width = x.shape.back();
  for (size_t start = 0; start < x.data.size(); start += static_cast<size_t>(width)) {
    double sum = 0;
    for (int64_t i = 0; i < width; ++i) sum += double(x.data[start + i]) * x.data[start + i];
    const double norm = std::max(std::sqrt(sum), 1e-12);
    for (int64_t i = 0; i < width; ++i) {
      x.data[start + i] = static_cast<float>(x.data[start + i] / norm);
    }
  }
}

FloatArray LabelEmbeddings(FloatArray prompts, int64_t labels) {
  NormalizeRows(prompts);
  const int64_t width = prompts.shape[1];
  const int64_t templates = prompts.shape[0] / labels;
  FloatArray out;
  out.shape = {labels, width};
  out.data.assign(static_cast<size_t>(labels * width), 0.0f);
  for (int64_t l = 0; l < labels; ++l) {
    for (int64_t i = 0; i < width; ++i) {
      double sum = 0;
      for (int64_t t = 0; t < templates; ++t) sum += prompts.data[(l * templates + t) * width + i];
      out.data[l * width + i] = static_cast<float>(sum / templates);
    }
  }
  NormalizeRows(out);
  return out;
}

FloatArray ZeroShotProbabilities(FloatArray images, const FloatArray& labels, double scale) {
  NormalizeRows(images);
  const int64_t n = images.shape[0], k = labels.shape[0], width = labels.shape[1];
  if (images.shape[1] != width) {
    Fail("the image embeddings have width ", images.shape[1], ", the text embeddings ", width,
         ": the towers do not belong together");
  }
  FloatArray out;
  out.shape = {n, k};
  out.data.resize(static_cast<size_t>(n * k));
  std::vector<double> logits(static_cast<size_t>(k));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      double dot = 0;
      for (int64_t i = 0; i < width; ++i) {
        dot += double(images.data[r * width + i]) * labels.data[c * width + i];
      }
      logits[c] = scale * dot;
    }
    const double top = *std::max_element(logits.begin(), logits.end());
    double total = 0;
    for (double& v : logits) total += (v = std::exp(v - top));
    for (int64_t c = 0; c < k; ++c) out.data[r * k + c] = static_cast<float>(logits[c] / total);
  }
  return out;
}

std::string FillTemplate(const std::string& text, const std::string& label) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, 2, "{}") == 0) {
      out += label;
      i += 2;
    } else {
      out += text[i++];
    }
  }
  return out;
}

}  // namespace pe
