#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm {

namespace fs = std::filesystem;

json TrainProgress::to_json() const {
  return json{{"step", step}, {"tokens", tokens}, {"flops", flops}, {"flops_executed", flops_executed}, {"seconds", seconds}};
}

TrainProgress TrainProgress::from_json(const json& j) {
  TrainProgress p;
  p.step = j.at("step").get<int64_t>();
  p.tokens = j.at("tokens").get<int64_t>();
  p.flops = j.at("flops").get<int64_t>();
  p.flops_executed = j.at("flops_executed").get<int64_t>();
  p.seconds = j.at("seconds").get<double>();
  return p;
}

static std::string ckpt_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "ckpt-%08lld", (long long)step);
  return b;
}

static void sync_dir(const std::string& dir) {
  if (FILE* f = std::fopen(dir.c_str(), "r")) {
    fsync(fileno(f));
    std::fclose(f);
  }
}

std::string save_checkpoint(const std::string& run_dir, const Model<float>& model, const AdamWState& adam,
                            const TrainProgress& progress, const std::string& tokenizer_model, int keep) {
  const std::string name = ckpt_name(progress.step);
  const std::string final_dir = run_dir + "/" + name;
  const std::string tmp = run_dir + "/." + name + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  // A write that fails (disk full, a file-size limit, a read-only folder) leaves no half-written
  // folder behind: the previous checkpoint and `latest` are untouched.
  try {
    io::save_model(tmp, model);
    std::vector<io::TensorRef> refs;
    for (const ParamInfo& p : model.layout().params()) {
      refs.push_back({"adam.m." + p.name, io::DType::F32, p.shape, adam.m.data() + p.offset});
      refs.push_back({"adam.v." + p.name, io::DType::F32, p.shape, adam.v.data() + p.offset});
    }
    io::write_safetensors(tmp + "/train_state.safetensors", refs, {{"adam_t", std::to_string(adam.t)}});
    json state = progress.to_json();
    state["adam_t"] = adam.t;
    const std::string text = state.dump(2) + "\n";
    atomic_write_file(tmp + "/train_state.json", [&](std::FILE* f) { fwrite_checked(f, text.data(), text.size(), tmp); });
    if (!tokenizer_model.empty()) {
      // tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE), under its own name.
      const std::string name = fs::path(tokenizer_model).filename().string();
      fs::copy_file(tokenizer_model, tmp + "/" + name, fs::copy_options::overwrite_existing, ec);
      if (ec) throw io_error(tmp + "/" + name + ": " + ec.message());
    }
    sync_dir(tmp);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fs::remove_all(final_dir, ec);  // a same-step checkpoint from an earlier attempt
  fs::rename(tmp, final_dir, ec);
  if (ec) throw io_error(final_dir + ": cannot rename checkpoint into place: " + ec.message());
  sync_dir(run_dir);
  const std::string latest = name + "\n";
  atomic_write_file(run_dir + "/latest", [&](std::FILE* f) { fwrite_checked(f, latest.data(), latest.size(), run_dir + "/latest"); });
  // Prune: keep the newest `keep` checkpoints (names sort by step).
  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("ckpt-", 0) == 0) all.push_back(n);
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + keep < all.size(); ++i)
    if (all[i] != name) fs::remove_all(run_dir + "/" + all[i], ec);
  return final_dir;
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  if (!file_exists(run_dir + "/latest")) return std::nullopt;
  std::string name = read_text_file(run_dir + "/latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.rfind("ckpt-", 0) != 0 || name.find('/') != std::string::npos)
    throw bad_input(run_dir + "/latest: does not name a checkpoint");
  const std::string dir = run_dir + "/" + name;
  if (!fs::is_directory(dir)) throw bad_input(run_dir + "/latest names " + name + ", which does not exist");
  return dir;
}

TrainProgress load_checkpoint(const std::string& dir, Model<float>& model, AdamWState& adam) {
  ModelConfig saved = io::load_model_config(dir);
  if (saved.to_json() != model.config().to_json())
    throw bad_input(dir + ": the checkpoint's model config differs from this run's config");
  io::load_model_weights(dir, model);
  io::SafetensorsFile f = io::SafetensorsFile::open(dir + "/train_state.safetensors");
  adam.resize(model.params().size());
  for (const ParamInfo& p : model.layout().params()) {
    f.read_f32_into("adam.m." + p.name, p.shape, adam.m.data() + p.offset);
    f.read_f32_into("adam.v." + p.name, p.shape, adam.v.data() + p.offset);
  }
  json state;
  try {
    state = json::parse(read_text_file(dir + "/train_state.json"));
    adam.t = state.at("adam_t").get<int64_t>();
    return TrainProgress::from_json(state);
  } catch (const json::exception& e) {
    throw bad_input(dir + "/train_state.json: " + e.what());
  }
}

}  // namespace modlm
