#include "models.h"

#include <cstdio>
#include <sstream>

namespace pe {
namespace {

ModelConfig Core(int image_size, int patch_size, int width, int layers, int heads,
                 double mlp_ratio, int output_dim, bool cls) {
  ModelConfig config;
  config.image_size = image_size;
  config.patch_size = patch_size;
  config.width = width;
  config.layers = layers;
  config.heads = heads;
  config.mlp_ratio = mlp_ratio;
  config.output_dim = output_dim;
  config.use_cls_token = cls;
  config.pool_type = "attn";
  return config;
}

// Lang and Spatial towers: the Core tower without pooling, projection or ln_post.
ModelConfig Dense(ModelConfig config, int image_size, std::optional<double> ls_init_value,
                  int layers = 0) {
  config.pool_type = "none";
  config.use_ln_post = false;
  config.output_dim.reset();
  config.image_size = image_size;
  config.ls_init_value = ls_init_value;
  if (layers) config.layers = layers;
  return config;
}

std::string Number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

}  // namespace

const std::vector<OfficialModel>& OfficialModels() {
  static const std::vector<OfficialModel> models = [] {
    const ModelConfig g = Core(448, 14, 1536, 50, 16, 8960.0 / 1536.0, 1280, false);
    const ModelConfig l = Core(336, 14, 1024, 24, 16, 4.0, 1024, true);
    const ModelConfig b = Core(224, 16, 768, 12, 12, 4.0, 1024, true);
    const ModelConfig s = Core(384, 16, 384, 12, 6, 4.0, 512, true);
    const ModelConfig t = Core(384, 16, 192, 12, 3, 4.0, 512, true);
    const ModelConfig lang_g = Dense(g, 448, 0.1, 47);
    const ModelConfig lang_l = Dense(l, 448, 0.1, 23);
    return std::vector<OfficialModel>{
        {"PE-Core-G14-448", g},
        {"PE-Core-L14-336", l},
        {"PE-Core-B16-224", b},
        {"PE-Core-S16-384", s},
        {"PE-Core-T16-384", t},
        {"PE-Lang-G14-448", lang_g},
        {"PE-Lang-L14-448", lang_l},
        {"PE-Spatial-G14-448", Dense(g, 448, 0.1)},
        {"PE-Spatial-L14-448", Dense(l, 448, std::nullopt)},
        {"PE-Spatial-B16-512", Dense(b, 512, std::nullopt)},
        {"PE-Spatial-S16-512", Dense(s, 512, std::nullopt)},
        {"PE-Spatial-T16-512", Dense(t, 512, std::nullopt)},
        {"PE-Lang-G14-448-Tiling", lang_g},
        {"PE-Lang-L14-448-Tiling", lang_l},
    };
  }();
  return models;
}

const ModelConfig* FindOfficialModel(const std::string& name) {
  for (const OfficialModel& model : OfficialModels()) {
    if (model.name == name) return &model.config;
  }
  return nullptr;
}

std::string ConfigDifferences(const ModelConfig& expected, const ModelConfig& actual) {
  std::ostringstream out;
  auto field = [&](const char* name, const auto& want, const auto& got, auto show) {
    if (want == got) return;
    if (out.tellp() > 0) out << "; ";
    out << name << " " << show(got) << " (expected " << show(want) << ")";
  };
  auto plain = [](const auto& v) {
    std::ostringstream s;
    s << std::boolalpha << v;
    return s.str();
  };
  auto optional = [](const auto& v) {
    if (!v) return std::string("null");
    std::ostringstream s;
    s << *v;
    return s.str();
  };
  field("patch_size", expected.patch_size, actual.patch_size, plain);
  field("width", expected.width, actual.width, plain);
  field("layers", expected.layers, actual.layers, plain);
  field("heads", expected.heads, actual.heads, plain);
  field("mlp_ratio", expected.mlp_ratio, actual.mlp_ratio, plain);
  field("output_dim", expected.output_dim, actual.output_dim, optional);
  field("ls_init_value", expected.ls_init_value, actual.ls_init_value, optional);
  field("drop_path", expected.drop_path, actual.drop_path, plain);
  field("image_size", expected.image_size, actual.image_size, plain);
  field("use_abs_posemb", expected.use_abs_posemb, actual.use_abs_posemb, plain);
  field("use_cls_token", expected.use_cls_token, actual.use_cls_token, plain);
  field("use_rope2d", expected.use_rope2d, actual.use_rope2d, plain);
  field("pool_type", expected.pool_type, actual.pool_type, plain);
  field("attn_pooler_heads", expected.attn_pooler_heads, actual.attn_pooler_heads, plain);
  field("use_ln_pre", expected.use_ln_pre, actual.use_ln_pre, plain);
  field("use_ln_post", expected.use_ln_post, actual.use_ln_post, plain);
  return out.str();
}

std::string OfficialModelsJson() {
  std::ostringstream out;
  auto flag = [](bool b) { return b ? "true" : "false"; };
  out << "{";
  bool first = true;
  for (const OfficialModel& model : OfficialModels()) {
    const ModelConfig& c = model.config;
    out << (first ? "\n" : ",\n") << "  \"" << model.name << "\": {"
        << "\"patch_size\": " << c.patch_size << ", \"width\": " << c.width
        << ", \"layers\": " << c.layers << ", \"heads\": " << c.heads
        << ", \"mlp_ratio\": " << Number(c.mlp_ratio) << ", \"output_dim\": "
        << (c.output_dim ? std::to_string(*c.output_dim) : "null") << ", \"ls_init_value\": "
        << (c.ls_init_value ? Number(*c.ls_init_value) : "null")
        << ", \"drop_path\": " << Number(c.drop_path) << ", \"image_size\": " << c.image_size
        << ", \"use_abs_posemb\": " << flag(c.use_abs_posemb)
        << ", \"use_cls_token\": " << flag(c.use_cls_token)
        << ", \"use_rope2d\": " << flag(c.use_rope2d) << ", \"pool_type\": \"" << c.pool_type
        << "\", \"attn_pooler_heads\": " << c.attn_pooler_heads
        << ", \"use_ln_pre\": " << flag(c.use_ln_pre)
        << ", \"use_ln_post\": " << flag(c.use_ln_post) << "}";
    first = false;
  }
  out << "\n}\n";
  return out.str();
}

std::string FeaturesFunctionName(bool norm, int layer_idx, bool strip_cls_token, int layers) {
  // Python's modulo: the result has the sign of the divisor.
  const int stop_idx = ((layers + layer_idx) % layers + layers) % layers;
  if (!norm && stop_idx == layers - 1 && !strip_cls_token) return "forward_features";
  return "forward_features_norm" + std::to_string(norm ? 1 : 0) + "_layer" +
         std::to_string(stop_idx) + "_strip" + std::to_string(strip_cls_token ? 1 : 0);
}

}  // namespace pe
