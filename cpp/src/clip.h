// The CLIP side of PE-Core around the two towers: the steps of pe_port.runtime's TextTower,
// Encoder.label_embeddings and Encoder.zero_shot, in the same order (no TVM here).
#ifndef PE_INFER_CLIP_H_
#define PE_INFER_CLIP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "npy.h"

namespace pe {

// Texts per call of the text tower, as pe_port.runtime.TEXT_BATCH.
constexpr int64_t kTextBatch = 64;

// Token rows (N, context) as the tokenizer gives them -> how many columns to run: up to the
// last of the rows' first end (largest) ids. With causal attention nothing after a row's end
// id changes its embedding, so the padding past it is not run (as TextTower does).
int64_t ColumnsToRun(const std::vector<int32_t>& ids, int64_t rows, int64_t context);

// The first `columns` of each row of an (N, context) array.
std::vector<int32_t> FirstColumns(const std::vector<int32_t>& ids, int64_t rows,
                                  int64_t context, int64_t columns);

// Each row scaled to unit L2 norm: x / max(|x|, 1e-12), as the original's F.normalize.
void NormalizeRows(FloatArray& x);

// (labels * templates, D) prompt embeddings, label-major -> (labels, D): each label's
// normalised prompt embeddings averaged, then normalised again.
FloatArray LabelEmbeddings(FloatArray prompts, int64_t labels);

// Softmax over labels of scale * normalised(images) @ labels.T: (images, labels).
FloatArray ZeroShotProbabilities(FloatArray images, const FloatArray& labels, double scale);

// `text` with every "{}" replaced by `label` (Python's str.replace).
std::string FillTemplate(const std::string& text, const std::string& label);

}  // namespace pe

#endif  // PE_INFER_CLIP_H_
