#include "io/model_dir.h"

#include <filesystem>
#include <set>

#include "io/safetensors.h"
#include "ops/q8.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::io {

namespace fs = std::filesystem;

ModelConfig load_model_config(const std::string& dir) {
  if (!fs::is_directory(dir)) throw io_error(dir + ": not a model folder (no such directory)");
  return ModelConfig::load(dir + "/config.json");
}

void load_model_weights(const std::string& dir, Model<float>& model) {
  const std::string path = dir + "/model.safetensors";
  SafetensorsFile f = SafetensorsFile::open(path);
  std::set<std::string> expected;
  for (const ParamInfo& p : model.layout().params()) {
    expected.insert(p.name);
    const TensorInfo* t = f.find(p.name);
    if (!t) throw bad_input(path + ": missing tensor '" + p.name + "' " + shape_str(p.shape) + " that config.json implies");
    if (t->dtype == DType::I8 && p.shape.size() == 2) {
      // q8 (`modlm quantize`): w = q * scale, one float scale per 32 weights of a row.
      const std::string sn = p.name + ".scales";
      expected.insert(sn);
      if (t->shape != p.shape)
        throw bad_input(path + ": tensor '" + p.name + "' has shape " + shape_str(t->shape) + ", expected " + shape_str(p.shape));
      const int rows = (int)p.shape[0], cols = (int)p.shape[1];
      if (!f.find(sn)) throw bad_input(path + ": the I8 tensor '" + p.name + "' has no '" + sn + "' beside it");
      const std::vector<float> sc = f.read_f32(sn, {rows, q8_blocks(cols)});
      dequantize_q8(reinterpret_cast<const int8_t*>(f.data(*t)), sc.data(), rows, cols, model.params().data() + p.offset);
      continue;
    }
    f.read_f32_into(p.name, p.shape, model.params().data() + p.offset);
  }
  for (const TensorInfo& t : f.tensors())
    if (!expected.count(t.name))
      throw bad_input(path + ": unexpected tensor '" + t.name + "' (not implied by config.json" +
                      (t.name == "output.weight" ? ", which says tie_embeddings = true" : "") + ")");
}

Model<float> load_model(const std::string& dir) {
  Model<float> m(load_model_config(dir));
  load_model_weights(dir, m);
  return m;
}

void save_model(const std::string& dir, const Model<float>& model) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw io_error(dir + ": cannot create folder: " + ec.message());
  std::vector<TensorRef> refs;
  for (const ParamInfo& p : model.layout().params())
    refs.push_back({p.name, DType::F32, p.shape, model.params().data() + p.offset});
  write_safetensors(dir + "/model.safetensors", refs, {{"format", "pt"}, {"modlm_format", "modlm-1"}});
  const std::string text = model.config().to_json().dump(2) + "\n";
  atomic_write_file(dir + "/config.json", [&](std::FILE* f) { fwrite_checked(f, text.data(), text.size(), dir + "/config.json"); });
}

}  // namespace modlm::io
