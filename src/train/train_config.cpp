#include "train/train_config.h"

#include <cmath>
#include <set>

#include "util/error.h"

namespace modlm {

namespace {
const std::set<std::string> kTrainKeys = {
    "steps",        "batch_size", "seq_len",      "grad_accum", "lr",         "min_lr",     "warmup_steps",
    "weight_decay", "beta1",      "beta2",        "eps",        "grad_clip",  "seed",       "log_every",
    "eval_every",   "eval_windows", "ckpt_every", "keep_checkpoints", "tokenizer",
    "init",         "freeze_backbone_steps"};

template <typename V>
void read(const json& j, const char* key, V& out, const std::string& src) {
  if (!j.contains(key)) return;
  const json& v = j.at(key);
  if constexpr (std::is_same_v<V, std::string>) {
    if (!v.is_string()) throw bad_input(src + ": train." + key + " must be a string");
  } else if constexpr (std::is_integral_v<V>) {
    if (!v.is_number_integer()) throw bad_input(src + ": train." + key + " must be an integer");
    if (std::is_unsigned_v<V> && v.get<int64_t>() < 0) throw bad_input(src + ": train." + key + " must be >= 0");
  } else {
    if (!v.is_number()) throw bad_input(src + ": train." + key + " must be a number");
  }
  out = v.get<V>();
}
}  // namespace

json TrainConfig::to_json() const {
  json j{{"steps", steps},         {"batch_size", batch_size},     {"seq_len", seq_len},
         {"grad_accum", grad_accum}, {"lr", opt.lr},                 {"min_lr", opt.min_lr},
         {"warmup_steps", opt.warmup_steps}, {"weight_decay", opt.weight_decay}, {"beta1", opt.beta1},
         {"beta2", opt.beta2},     {"eps", opt.eps},                {"grad_clip", grad_clip},
         {"seed", seed},           {"log_every", log_every},        {"eval_every", eval_every},
         {"eval_windows", eval_windows}, {"ckpt_every", ckpt_every}, {"keep_checkpoints", keep_checkpoints}};
  if (!tokenizer.empty()) j["tokenizer"] = tokenizer;
  if (!init.empty()) j["init"] = init;
  if (freeze_backbone_steps) j["freeze_backbone_steps"] = freeze_backbone_steps;
  return j;
}

TrainConfig TrainConfig::from_json(const json& j, const std::string& src) {
  if (!j.is_object()) throw bad_input(src + ": \"train\" must be an object");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kTrainKeys.count(it.key())) throw bad_input(src + ": unknown key train." + it.key());
  TrainConfig t;
  read(j, "steps", t.steps, src);
  read(j, "batch_size", t.batch_size, src);
  read(j, "seq_len", t.seq_len, src);
  read(j, "grad_accum", t.grad_accum, src);
  read(j, "lr", t.opt.lr, src);
  read(j, "min_lr", t.opt.min_lr, src);
  read(j, "warmup_steps", t.opt.warmup_steps, src);
  read(j, "weight_decay", t.opt.weight_decay, src);
  read(j, "beta1", t.opt.beta1, src);
  read(j, "beta2", t.opt.beta2, src);
  read(j, "eps", t.opt.eps, src);
  read(j, "grad_clip", t.grad_clip, src);
  read(j, "seed", t.seed, src);
  read(j, "log_every", t.log_every, src);
  read(j, "eval_every", t.eval_every, src);
  read(j, "eval_windows", t.eval_windows, src);
  read(j, "ckpt_every", t.ckpt_every, src);
  read(j, "keep_checkpoints", t.keep_checkpoints, src);
  read(j, "tokenizer", t.tokenizer, src);
  read(j, "init", t.init, src);
  read(j, "freeze_backbone_steps", t.freeze_backbone_steps, src);
  t.opt.total_steps = t.steps;
  return t;
}

void TrainConfig::validate(const ModelConfig& m, const std::string& src) const {
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) throw bad_input(src + ": " + msg);
  };
  auto finite_nonneg = [](double x) { return std::isfinite(x) && x >= 0; };
  need(steps >= 1, "train.steps must be >= 1");
  need(batch_size >= 1 && batch_size <= 65536, "train.batch_size must be in [1, 65536]");
  need(seq_len >= 1, "train.seq_len must be >= 1");
  need(seq_len <= m.max_seq_len, "train.seq_len " + std::to_string(seq_len) + " exceeds the model's max_seq_len " +
                                     std::to_string(m.max_seq_len));
  need(grad_accum >= 1 && grad_accum <= 65536, "train.grad_accum must be in [1, 65536]");
  need(finite_nonneg(opt.lr) && opt.lr > 0, "train.lr must be a positive number");
  need(finite_nonneg(opt.min_lr) && opt.min_lr <= opt.lr, "train.min_lr must be in [0, lr]");
  need(opt.warmup_steps >= 0, "train.warmup_steps must be >= 0");
  need(finite_nonneg(opt.weight_decay), "train.weight_decay must be >= 0");
  need(std::isfinite(opt.beta1) && opt.beta1 >= 0 && opt.beta1 < 1, "train.beta1 must be in [0, 1)");
  need(std::isfinite(opt.beta2) && opt.beta2 >= 0 && opt.beta2 < 1, "train.beta2 must be in [0, 1)");
  need(std::isfinite(opt.eps) && opt.eps > 0, "train.eps must be > 0");
  need(finite_nonneg(grad_clip), "train.grad_clip must be >= 0 (0 = off)");
  need(log_every >= 1, "train.log_every must be >= 1");
  need(eval_every >= 0, "train.eval_every must be >= 0");
  need(eval_windows >= 1, "train.eval_windows must be >= 1");
  need(ckpt_every >= 0, "train.ckpt_every must be >= 0");
  need(keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1");
  need(freeze_backbone_steps >= 0 && freeze_backbone_steps <= steps, "train.freeze_backbone_steps must be in [0, steps]");
  need(freeze_backbone_steps == 0 || m.n_routed() > 0, "train.freeze_backbone_steps needs routed layers (an MoD model)");
  need((int64_t)batch_size * seq_len <= (int64_t)1 << 26, "train.batch_size * seq_len is too large");
}

RunConfig RunConfig::from_json(const json& j, const std::string& src) {
  if (!j.is_object()) throw bad_input(src + ": must be a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "model" && it.key() != "train")
      throw bad_input(src + ": unknown key \"" + it.key() + "\" (expected \"model\" and \"train\")");
  RunConfig r;
  json mj = j.contains("model") ? j.at("model") : json::object();
  if (!mj.is_object()) throw bad_input(src + ": \"model\" must be an object");
  r.model = ModelConfig::from_json(mj, src + " (model)");
  for (auto it = r.model.extra.begin(); it != r.model.extra.end(); ++it)
    if (it.key() != "hf")  // what `modlm import hf` keeps for export
      throw bad_input(src + ": unknown key model." + it.key());
  for (auto it = r.model.routing.extra.begin(); it != r.model.routing.extra.end(); ++it)
    throw bad_input(src + ": unknown key model.routing." + it.key());
  r.train = TrainConfig::from_json(j.contains("train") ? j.at("train") : json::object(), src);
  r.train.validate(r.model, src);
  return r;
}

}  // namespace modlm
