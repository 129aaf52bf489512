// The official Perception Encoder vision configs, as src/pe_port/config.py defines them.
// An artifact must name one of these models and carry exactly its config; a test checks that
// this table and Python's PE_VISION_CONFIG agree (pe_infer --list-models).
#ifndef PE_INFER_MODELS_H_
#define PE_INFER_MODELS_H_

#include <optional>
#include <string>
#include <vector>

namespace pe {

struct ModelConfig {
  int patch_size = 0;
  int width = 0;
  int layers = 0;
  int heads = 0;
  double mlp_ratio = 0.0;
  std::optional<int> output_dim;
  std::optional<double> ls_init_value;
  double drop_path = 0.0;
  int image_size = 224;
  bool use_abs_posemb = true;
  bool use_cls_token = false;
  bool use_rope2d = true;
  std::string pool_type = "attn";
  int attn_pooler_heads = 8;
  bool use_ln_pre = true;
  bool use_ln_post = true;
};

struct OfficialModel {
  std::string name;
  ModelConfig config;
};

const std::vector<OfficialModel>& OfficialModels();

// The official config of `name`, or nullptr.
const ModelConfig* FindOfficialModel(const std::string& name);

// "width 192 != 384; layers ..." for the fields that differ; empty when equal.
std::string ConfigDifferences(const ModelConfig& expected, const ModelConfig& actual);

// {"PE-Core-G14-448": {"patch_size": 14, ...}, ...} with the field names of PEConfig.
std::string OfficialModelsJson();

// The exported name of one forward_features variant, as pe_port.compile.features_function_name.
std::string FeaturesFunctionName(bool norm, int layer_idx, bool strip_cls_token, int layers);

}  // namespace pe

#endif  // PE_INFER_MODELS_H_
