#include "demo/demo.h"

#include <omp.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <optional>

#include "demo/decode.h"
#include "demo/report.h"
#include "demo/runs.h"
#include "demo/svg.h"
#include "io/model_dir.h"
#include "model/families.h"
#include "model/flops.h"
#include "model/model.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/progress.h"

namespace modlm::demo {

namespace fs = std::filesystem;
using clk = std::chrono::steady_clock;

namespace {

double since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

json read_json(const std::string& path) {
  try {
    return json::parse(read_text_file(path));
  } catch (const json::parse_error& e) {
    throw bad_input(path + ": not valid JSON: " + e.what());
  }
}

std::string abs_path(const std::string& p) {
  std::error_code ec;
  auto a = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? p : a.string();
}

ModelConfig make_config(const DemoOptions& o, const std::string& family) {
  const std::string what = "demo " + family_label(family) + " model";
  json m{{"format", "modlm-1"},          {"vocab_size", o.vocab_size}, {"d_model", o.d_model},
         {"n_layers", o.n_layers},       {"n_heads", o.n_heads},       {"d_ff", o.d_ff},
         {"max_seq_len", o.seq_len},     {"rope_theta", 10000.0},      {"norm_eps", 1e-5},
         {"tie_embeddings", false}};
  return family_config(ModelConfig::from_json(m, what), family, o.family_settings, what);
}

RunConfig make_run(const DemoOptions& o, const ModelConfig& mc, int64_t steps, const std::string& tokenizer) {
  json t{{"steps", steps},
         {"batch_size", o.batch_size},
         {"seq_len", o.seq_len},
         {"lr", o.lr},
         {"min_lr", o.min_lr},
         {"warmup_steps", std::max<int64_t>(1, std::llround(o.warmup_fraction * steps))},
         {"seed", o.seed},
         {"log_every", 1},  // every step's step_seconds: the training time without validation passes
         {"eval_every", std::max<int64_t>(1, steps / std::max(1, o.evals))},
         {"eval_windows", o.eval_windows},
         {"ckpt_every", std::max<int64_t>(1, steps / 4)},
         {"keep_checkpoints", 1},
         {"tokenizer", tokenizer}};
  RunConfig r = RunConfig::from_json(json{{"model", mc.to_json()}, {"train", t}}, "demo run");
  r.train.validate(r.model, "demo run");
  return r;
}

json eval_json(const EvalResult& r) {
  json layers = routed_summary_json(r.routed);
  json j{{"loss", r.loss}, {"tokens", r.tokens}, {"windows", r.windows}, {"seconds", r.seconds}, {"routed", layers}};
  if (!r.moe.empty()) j["moe"] = moe_stats_json(r.moe);
  return j;
}


double mean_of(const json& routed, const char* key) {
  if (!routed.is_array() || routed.empty()) return std::nan("");
  double s = 0;
  for (const auto& l : routed) s += l.value(key, 0.0);
  return s / routed.size();
}

// A passage of the validation text for the routing picture and the prompts: T tokens of prose
// (a paragraph start after a blank line, mostly letters, long lines, no front matter), searched
// from a third of the way in; the first window if none is found.
size_t passage_start(const Tokens& val, const io::Tokenizer& tok, int T) {
  const size_t n = val.span.size;
  if (n < (size_t)T + 2) return 0;
  const size_t from = n / 3, count = std::min<size_t>(n - from, 80000);
  if (count < (size_t)T + 2) return 0;
  std::vector<int32_t> ids(count);
  val.span.copy(from, count, ids.data());
  std::vector<std::string> piece(count);
  for (size_t i = 0; i < count; ++i) piece[i] = tok.decode({ids[i]});
  auto prose = [&](size_t i) {
    std::string text;
    for (size_t j = i; j < i + (size_t)T; ++j) text += piece[j];
    for (const char* bad : {"http", "Produced", "Gutenberg", "CHAPTER", "[", "_", "*"})
      if (text.find(bad) != std::string::npos) return false;
    size_t letters = 0, digits = 0, lines = 0, long_lines = 0, len = 0;
    for (char c : text) {
      letters += std::isalpha((unsigned char)c) || c == ' ';
      digits += std::isdigit((unsigned char)c) != 0;
      if (c == '\n') {
        ++lines, long_lines += len >= 50, len = 0;
      } else {
        ++len;
      }
    }
    return digits <= 2 && letters >= 0.9 * text.size() && lines >= 1 && long_lines * 10 >= lines * 8;
  };
  for (size_t i = 2; i + (size_t)T < count; ++i) {
    const std::string& a = piece[i - 1];
    const bool blank_before = !a.empty() && a.back() == '\n' && (a.size() >= 2 ? a[a.size() - 2] == '\n' : piece[i - 2] == "\n");
    if (blank_before && !piece[i].empty() && std::isupper((unsigned char)piece[i][0]) && prose(i)) return from + i;
  }
  return 0;
}

struct Curves {
  json val{{"step", json::array()}, {"flops", json::array()}, {"time", json::array()}, {"loss", json::array()}};
  json train{{"step", json::array()}, {"flops", json::array()}, {"time", json::array()}, {"loss", json::array()}};
  json accuracy{{"step", json::array()}, {"layers", json::array()}};
  double train_seconds = 0;  // sum of step times: training only, without validation passes and checkpoints
};

// Curves from a run's log. Time is the cumulative step time (the "step_seconds" of each logged
// step, times the steps it stands for), so validation passes and checkpoints do not count. The
// training loss is averaged over bins of consecutive steps (at most ~160 points).
Curves curves_of(const std::vector<json>& log) {
  Curves c;
  std::vector<int> layer_ids;
  const size_t per_bin = std::max<size_t>(1, (log.size() + 159) / 160);
  double cum = 0, bin_loss = 0;
  size_t bin_n = 0;
  int64_t prev = 0;
  for (size_t li = 0; li < log.size(); ++li) {
    const json& l = log[li];
    const int64_t step = l.value("step", (int64_t)0);
    const double flops = l.value("flops", 0.0);
    cum += l.value("step_seconds", 0.0) * (double)std::max<int64_t>(1, step - prev);
    prev = step;
    bin_loss += l.value("lm_loss", 0.0), ++bin_n;
    if (bin_n == per_bin || li + 1 == log.size()) {
      c.train["step"].push_back(step);
      c.train["flops"].push_back(flops);
      c.train["time"].push_back(cum);
      c.train["loss"].push_back(bin_loss / bin_n);
      bin_loss = 0, bin_n = 0;
    }
    if (l.contains("val_loss")) {
      c.val["step"].push_back(step);
      c.val["flops"].push_back(flops);
      c.val["time"].push_back(cum);
      c.val["loss"].push_back(l["val_loss"]);
    }
    if (l.contains("routed") && l["routed"].is_array()) {
      const json& r = l["routed"];
      if (layer_ids.empty()) {
        for (const auto& x : r) {
          layer_ids.push_back(x.value("layer", 0));
          c.accuracy["layers"].push_back({{"layer", x.value("layer", 0)}, {"accuracy", json::array()}});
        }
      }
      if (r.size() != layer_ids.size() || (li % per_bin != 0 && li + 1 != log.size())) continue;
      c.accuracy["step"].push_back(step);
      for (size_t i = 0; i < r.size(); ++i) c.accuracy["layers"][i]["accuracy"].push_back(r[i].value("decision_accuracy", 0.0));
    }
  }
  c.train_seconds = cum;
  return c;
}

// Linear interpolation of y(x) on a polyline at x (nullopt outside its range).
std::optional<double> interp(const json& xs, const json& ys, double x) {
  for (size_t i = 0; i + 1 < xs.size(); ++i) {
    double x0 = xs[i], x1 = xs[i + 1];
    if (x >= x0 && x <= x1) {
      double y0 = ys[i], y1 = ys[i + 1];
      return x1 > x0 ? y0 + (y1 - y0) * (x - x0) / (x1 - x0) : y1;
    }
  }
  if (xs.size() == 1 && (double)xs[0] == x) return (double)ys[0];
  return std::nullopt;
}

// Everything measured on a finished model: final evaluation, decode, sample, routing.
json evaluate_model(const std::string& ckpt, const ModelConfig& cfg, const std::string& label, const DemoOptions& o,
                    const Tokens& val, const io::Tokenizer& tok, size_t passage) {
  Model<float> model = io::load_model(ckpt);
  const bool routed = cfg.n_routed() > 0;
  const int T = o.seq_len;
  json r = json::object();
  const int64_t W = std::min<int64_t>(o.final_windows, count_windows(val.span.size, T));
  {
    Progress bar("eval " + label + " top-k", W, "win", o.progress);
    r["topk"] = eval_json(evaluate(model, val.span, T, W, RouteMode::TopK, o.batch_size, &bar));
    bar.finish();
  }
  check_stop();
  if (has_causal_mode(cfg)) {
    Progress bar("eval " + label + " causal", W, "win", o.progress);
    r["causal"] = eval_json(evaluate(model, val.span, T, W, RouteMode::Causal, o.batch_size, &bar));
    bar.finish();
    check_stop();
  }
  // Decode: the passage's first tokens as the prompt.
  {
    std::vector<int32_t> prompt(std::min<size_t>(o.prompt_tokens, (size_t)T / 2));
    if (prompt.empty()) prompt.resize(1);
    val.span.copy(passage, prompt.size(), prompt.data());
    const int n_new = std::max(1, std::min(o.new_tokens, T - (int)prompt.size()));
    DecodeResult d = decode_sample(model, tok, prompt, n_new, o.temperature, o.top_k, o.seed);
    if (d.available)
      r["decode"] = {{"prompt", d.prompt},
                     {"continuation", d.continuation},
                     {"prompt_tokens", d.prompt_tokens},
                     {"new_tokens", d.new_tokens},
                     {"seconds", d.seconds},
                     {"tokens_per_second", d.tokens_per_second},
                     {"kv_cache_bytes", d.kv_cache_bytes},
                     {"kv_cache_tokens", d.kv_cache_tokens},
                     {"kv_dense_bytes", d.kv_dense_bytes},
                     {"threads", d.threads},
                     {"context_tokens", d.prompt_tokens + d.new_tokens - 1}};
    else
      r["decode"] = {{"prompt", d.prompt}};
  }
  check_stop();
  if (routed) {
    // Routing picture: one window of the passage, top-k routing (as in training).
    std::vector<int32_t> ids(T);
    val.span.copy(passage, T, ids.data());
    ForwardOptions fo;
    fo.mode = RouteMode::TopK;
    model.forward(ids.data(), nullptr, 1, T, fo);
    json tokens = json::array();
    for (int32_t id : ids) tokens.push_back(tok.decode({id}));
    json layers = json::array();
    for (const auto& tr : model.routing_trace()) {
      json rl = json::array(), pr = json::array(), pd = json::array();
      for (int t = 0; t < T; ++t) {
        rl.push_back(std::round(tr.router_logit[t] * 1e4) / 1e4);
        pr.push_back((int)tr.processed[t]);
        pd.push_back(tr.decision_logit[t] > 0 ? 1 : 0);
      }
      layers.push_back({{"layer", tr.layer}, {"router_logit", rl}, {"processed", pr}, {"predicted", pd}});
    }
    r["routing"] = {{"passage_start", passage}, {"tokens", tokens}, {"layers", layers}};
    // Router-weight histogram over a few windows.
    const int HW = (int)std::min<int64_t>(8, count_windows(val.span.size, T));
    std::vector<int32_t> win((size_t)HW * (T + 1)), tk((size_t)HW * T);
    val.span.copy(0, win.size(), win.data());
    for (int b = 0; b < HW; ++b)
      for (int t = 0; t < T; ++t) tk[(size_t)b * T + t] = win[(size_t)b * (T + 1) + t];
    model.forward(tk.data(), nullptr, HW, T, fo);
    // Router logits r of every token, processed (top-k) and skipped, on shared bins.
    const auto traces = model.routing_trace();
    double lo = 1e300, hi = -1e300;
    for (const auto& tr : traces)
      for (float v : tr.router_logit) lo = std::min(lo, (double)v), hi = std::max(hi, (double)v);
    if (!(hi > lo)) lo -= 1, hi += 1;
    const int bins = 24;
    json edges = json::array();
    for (int i = 0; i <= bins; ++i) edges.push_back(lo + (hi - lo) * i / bins);
    json hl = json::array();
    for (const auto& tr : traces) {
      std::vector<int64_t> proc(bins, 0), skip(bins, 0);
      for (size_t i = 0; i < tr.router_logit.size(); ++i) {
        int b = std::min(bins - 1, std::max(0, (int)((tr.router_logit[i] - lo) / (hi - lo) * bins)));
        (tr.processed[i] ? proc : skip)[b]++;
      }
      hl.push_back({{"layer", tr.layer}, {"processed", proc}, {"skipped", skip}});
    }
    r["router_histogram"] = {{"edges", edges}, {"tokens_per_layer", (int64_t)HW * T}, {"layers", hl}};
  }
  return r;
}

// The comparison of one family's run with the baseline's: budgets, losses, wall-clock, and when
// (if ever) its validation curve reached the baseline's final validation loss.
json compare_models(const json& base, const json& m) {
  json cmp;
  const double step_b = base["flops_per_step"], step_m = m["flops_per_step"];
  cmp["flops_per_forward_ratio"] = m["flops_per_forward"].get<double>() / base["flops_per_forward"].get<double>();
  cmp["steps_ratio"] = m["steps"].get<double>() / std::max(1.0, base["steps"].get<double>());
  cmp["train_flops_ratio"] = m["train_flops"].get<double>() / std::max(1.0, base["train_flops"].get<double>());
  cmp["same_budget"] = std::fabs(m["train_flops"].get<double>() - base["train_flops"].get<double>()) <= std::max(step_b, step_m);
  cmp["val_loss_diff_topk"] = m["val_loss_topk"].get<double>() - base["val_loss_topk"].get<double>();
  cmp["val_loss_diff_causal"] = m["val_loss_causal"].get<double>() - base["val_loss_causal"].get<double>();
  cmp["wall_clock_ratio"] = m["train_seconds"].get<double>() / std::max(1e-9, base["train_seconds"].get<double>());
  const json& dv = base["curves"]["val"];
  const json& mv = m["curves"]["val"];
  json reach = {{"reached", false}, {"time", nullptr}, {"flops", nullptr}, {"step", nullptr}, {"speedup", nullptr}};
  if (!dv["loss"].empty() && !mv["loss"].empty()) {
    const double target = dv["loss"].back(), dense_time = dv["time"].back();
    reach["dense_final_loss"] = target;
    reach["dense_time"] = dense_time;
    reach["dense_flops"] = dv["flops"].back();
    const json& L = mv["loss"];
    for (size_t i = 0; i < L.size(); ++i) {
      if (L[i].get<double>() <= target) {
        double f = 1.0;
        if (i > 0) {
          double a = L[i - 1], b = L[i];
          f = a > b ? (a - target) / (a - b) : 1.0;
        }
        auto lerp = [&](const json& xs) {
          double x1 = xs[i];
          double x0 = i > 0 ? xs[i - 1].get<double>() : x1;
          return x0 + f * (x1 - x0);
        };
        reach["reached"] = true;
        reach["time"] = lerp(mv["time"]);
        reach["flops"] = lerp(mv["flops"]);
        reach["step"] = lerp(mv["step"]);
        reach["speedup"] = dense_time / std::max(1e-9, reach["time"].get<double>());
        break;
      }
    }
    auto at = interp(mv["time"], mv["loss"], dense_time);
    reach["mod_loss_at_dense_time"] = at ? json(*at) : json(nullptr);
    reach["mod_final_loss"] = mv["loss"].back();
    double best = mv["loss"][0];
    for (const auto& v : mv["loss"]) best = std::min(best, v.get<double>());
    reach["mod_best_loss"] = best;
    reach["mod_time"] = mv["time"].back();
  }
  cmp["reach_dense_loss"] = reach;  // "dense" = the baseline, "mod" = this family (names kept from the two-model demo)
  return cmp;
}

// Mean over MoE layers of a field of moe_stats_json (NaN without MoE layers).
double moe_mean(const json& eval, const char* key) {
  if (!eval.contains("moe") || !eval["moe"].is_array() || eval["moe"].empty()) return std::nan("");
  double s = 0;
  for (const auto& l : eval["moe"]) s += l.value(key, 0.0);
  return s / eval["moe"].size();
}

}  // namespace

int run_demo(const DemoOptions& o) {
  const auto t_start = clk::now();
  install_stop_handlers();
  if (o.data.empty() != o.val.empty()) throw usage_error("give both --data TRAIN and --val VAL (or neither, for the shipped corpus)");
  if (o.budget_flops < 0 || !std::isfinite(o.budget_flops)) throw usage_error("--budget-flops must be > 0");
  if (!(o.minutes > 0) || !std::isfinite(o.minutes)) throw usage_error("--minutes must be > 0");
  if (o.out.empty()) throw usage_error("--out must name a folder");
  if (o.families.empty()) throw usage_error("--family names no family");

  // The models, validated before anything is written.
  struct Side {
    std::string name, label;
    ModelConfig model;
    int64_t flops_per_forward = 0;
    double flops_per_step = 0;
    RunConfig run;
    RunOutcome outcome;
    json result;
  };
  std::vector<Side> sides;
  const int T = o.seq_len, B = o.batch_size;
  for (const auto& f : o.families) {
    Side s;
    s.name = f;
    s.label = family_label(f);
    try {
      s.model = make_config(o, f);
    } catch (const Error& e) {
      throw usage_error(e.what());
    }
    s.flops_per_forward = analytic_forward_flops(s.model, T).total();
    s.flops_per_step = 3.0 * B * s.flops_per_forward;
    sides.push_back(std::move(s));
  }
  size_t base_i = 0;
  for (size_t i = 0; i < sides.size(); ++i)
    if (sides[i].name == "dense") {
      base_i = i;
      break;
    }

  Corpus corpus;
  if (o.data.empty()) corpus = default_corpus();
  else corpus = {abs_path(o.data), abs_path(o.val)};
  for (const auto& p : {corpus.train, corpus.val})
    if (!file_exists(p)) throw io_error(p + ": no such file");
  const std::string out = o.out;
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw io_error(out + ": cannot create: " + ec.message());

  // Seconds of each phase of this invocation (a rerun shows what it redid).
  json phases = json::object();
  auto t_phase = clk::now();
  auto phase = [&](const std::string& name) {
    phases[name] = phases.value(name, 0.0) + since(t_phase);
    t_phase = clk::now();
  };
  // Time to make this report, over every invocation that worked on it (a rerun that only
  // redraws adds just its own seconds): OUT/timings.json.
  auto record_timings = [&]() {
    phases["total"] = since(t_start);
    json total = json::object();
    const std::string tp = out + "/timings.json";
    if (file_exists(tp)) {
      try {
        total = json::parse(read_text_file(tp));
      } catch (const json::exception&) {
      }
      if (!total.is_object()) total = json::object();
    }
    for (auto it = phases.begin(); it != phases.end(); ++it) total[it.key()] = total.value(it.key(), 0.0) + it.value().get<double>();
    write_text(tp, total.dump(2) + "\n");
    return total;
  };
  // Tokenizer and tokens.
  const std::string tok_path = prepare_tokenizer(out + "/tokenizer", corpus.train, o.vocab_size);
  phase("tokenizer");
  check_stop();
  io::SentencePieceTokenizer tok(tok_path);
  std::fprintf(stderr, "tokenizing (cached after the first time) ...\n");
  Tokens train_tokens = load_tokens(corpus.train, tok), val_tokens = load_tokens(corpus.val, tok);
  phase("tokenize");
  if (count_windows(val_tokens.span.size, T) < 1) throw bad_input(corpus.val + ": fewer tokens than one window of seq-len + 1");
  if (count_windows(train_tokens.span.size, T) < 1) throw bad_input(corpus.train + ": fewer tokens than one window of seq-len + 1");
  check_stop();

  // The plan: budget and steps, reused by a rerun with the same settings. The key holds each
  // family's config under its name (a dense + MoD demo keeps the key it always had).
  json key{{"data", corpus.train},          {"val", corpus.val},       {"seq_len", T},
           {"batch_size", B},               {"lr", o.lr},              {"min_lr", o.min_lr},
           {"warmup_fraction", o.warmup_fraction}, {"seed", o.seed},   {"evals", o.evals},
           {"eval_windows", o.eval_windows}};
  for (const auto& s : sides) key[s.name] = s.model.to_json();
  if (o.budget_flops > 0) key["budget_flops"] = o.budget_flops;
  else key["minutes"] = o.minutes;
  const std::string plan_path = out + "/plan.json";
  json plan;
  if (file_exists(plan_path)) {
    json have = read_json(plan_path);
    bool any_run = false;
    for (const auto& f : model_families()) any_run = any_run || file_exists(out + "/" + f + "/run.json");
    if (have.contains("key") && have["key"] == key) {
      plan = have;
      std::fprintf(stderr, "reusing the plan in %s (budget %s FLOPs per model)\n", plan_path.c_str(),
                   short_number(plan["budget_flops"].get<double>()).c_str());
    } else if (any_run) {
      throw usage_error(out + " holds a demo made with other settings (see " + plan_path +
                        "); use another --out, or remove that folder");
    }
  }
  if (plan.is_null()) {
    double budget = o.budget_flops;
    json calib = nullptr;
    if (budget <= 0) {
      std::fprintf(stderr, "calibrating: timing %d training steps of each model ...\n", o.calibration_steps);
      // The fastest of a few steps, times 1.2: sustained training on this machine ran ~1.2x slower
      // per step than its fastest calibration step (a 10-minute demo took 12 without it).
      const double sustained = 1.2;
      calib = json::object();
      // The rest of the demo after training: final evaluations (a forward is ~1/3 of a step),
      // decoding, routing pictures; validation passes and checkpoints during training.
      double post = 4.0, during = 0, seconds_per_flop = 0;
      for (const auto& s : sides) {
        const double t = sustained * time_train_step(s.model, B, T, train_tokens.span, o.calibration_steps, o.progress);
        calib[s.name + "_step_seconds"] = t;
        const double fwd = t / (3.0 * B);
        post += o.final_windows * fwd * (has_causal_mode(s.model) ? 2 : 1) + (s.model.n_routed() ? 16 * fwd : 0) +
                (o.prompt_tokens + o.new_tokens) * 6 * fwd / T;
        during += (o.evals + 1) * o.eval_windows * fwd + 4 * 0.4;
        seconds_per_flop += t / s.flops_per_step;
      }
      const double elapsed = since(t_start), total = o.minutes * 60;
      double avail = total - elapsed - post - during;
      if (avail < 0.25 * (total - elapsed)) {
        std::fprintf(stderr,
                     "warning: --minutes %.3g leaves little time to train models of this size (%.0f s); training for %.0f s anyway\n",
                     o.minutes, avail, 0.25 * (total - elapsed));
        avail = std::max(0.25 * (total - elapsed), 1.0);
      }
      // avail = sum_i steps_i t_i with steps_i = budget / step_flops_i.
      budget = avail / seconds_per_flop;
      // Three significant digits, so that --budget-flops can repeat it.
      const double mag = std::pow(10.0, std::floor(std::log10(budget)) - 2);
      budget = std::max(mag, std::round(budget / mag) * mag);
      calib["elapsed_before"] = elapsed;
      calib["post_estimate"] = post;
      calib["during_estimate"] = during;
      calib["train_seconds_target"] = avail;
    }
    phase("calibrate");
    plan = {{"key", key}, {"budget_flops", budget}, {"calibration", calib}};
    for (const auto& s : sides) plan[s.name + "_steps"] = std::max<int64_t>(1, (int64_t)std::floor(budget / s.flops_per_step));
    write_text(plan_path, plan.dump(2) + "\n");
  }
  const double budget = plan["budget_flops"];
  {
    std::string line;
    for (const auto& s : sides)
      line += (line.empty() ? "" : ", ") + s.label + " " + std::to_string(plan[s.name + "_steps"].get<int64_t>()) + " steps x " +
              short_number(s.flops_per_step);
    std::fprintf(stderr, "iso-FLOP budget %s FLOPs per model: %s FLOPs (%d threads)\n", short_number(budget).c_str(), line.c_str(),
                 omp_get_max_threads());
  }
  for (auto& s : sides) s.run = make_run(o, s.model, plan[s.name + "_steps"].get<int64_t>(), tok_path);

  // Train (or reuse / resume) each.
  for (auto& s : sides) {
    const std::string dir = out + "/" + s.name;
    check_stop();
    RunStatus st = run_status(dir);
    if (st.finished) std::fprintf(stderr, "%s: reusing the finished run in %s\n", s.label.c_str(), dir.c_str());
    else if (st.exists) std::fprintf(stderr, "%s: resuming %s at step %lld of %lld\n", s.label.c_str(), dir.c_str(), (long long)st.step, (long long)s.run.train.steps);
    else std::fprintf(stderr, "%s: training %lld steps in %s\n", s.label.c_str(), (long long)s.run.train.steps, dir.c_str());
    s.outcome = train_or_resume(dir, s.run, corpus.train, corpus.val, o.progress);
    phase("train " + s.label);
    if (s.outcome.interrupted) {
      record_timings();
      std::fprintf(stderr, "interrupted: %s is checkpointed at step %lld; run the same command again to continue\n", dir.c_str(),
                   (long long)s.outcome.progress.step);
      return kExitInterrupted;
    }
  }

  // Final evaluation, decoding and routing (cached per checkpoint).
  const size_t passage = passage_start(val_tokens, tok, T);
  for (auto& s : sides) {
    const std::string cache = out + "/" + s.name + "/demo_eval.json";
    json ekey{{"checkpoint", s.outcome.checkpoint}, {"step", s.outcome.progress.step}, {"final_windows", o.final_windows},
              {"prompt_tokens", o.prompt_tokens}, {"new_tokens", o.new_tokens}, {"temperature", o.temperature},
              {"top_k", o.top_k}, {"passage", passage}, {"val", corpus.val}, {"format", 1}};
    if (file_exists(cache)) {
      json have = read_json(cache);
      if (have.contains("key") && have["key"] == ekey) s.result = have;
    }
    if (s.result.is_null()) {
      check_stop();
      std::fprintf(stderr, "%s: evaluating %s\n", s.label.c_str(), s.outcome.checkpoint.c_str());
      s.result = evaluate_model(s.outcome.checkpoint, s.run.model, s.label, o, val_tokens, tok, passage);
      s.result["key"] = ekey;
      write_text(cache, s.result.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
      phase("evaluate " + s.label);
    }
  }

  // Decode rates side by side: every model in turn, the same prompt and thread count, best of 3
  // rounds (the per-model rates measured during evaluation, at different moments and maybe with
  // different thread counts, made ratios swing 2x on this machine). Not cached: it measures this
  // binary.
  DecodeRace race;
  {
    std::vector<Model<float>> loaded;
    loaded.reserve(sides.size());
    for (const auto& s : sides) loaded.push_back(io::load_model(s.outcome.checkpoint));
    std::vector<const Model<float>*> ptrs;
    for (const auto& m : loaded) ptrs.push_back(&m);
    std::vector<int32_t> prompt(std::min<size_t>(o.prompt_tokens, (size_t)T / 2));
    if (prompt.empty()) prompt.resize(1);
    val_tokens.span.copy(passage, prompt.size(), prompt.data());
    const int n_new = std::max(1, std::min(o.new_tokens, T - (int)prompt.size()));
    std::fprintf(stderr, "timing single-stream decoding of the %zu models side by side ...\n", sides.size());
    race = decode_race(ptrs, prompt, n_new, o.temperature, o.top_k, o.seed, 3);
    phase("decode race");
  }

  // summary.json
  json summary;
  summary["format"] = "modlm-demo-1";
  {
    std::time_t now = std::time(nullptr);
    char b[64];
    std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
    summary["created"] = b;
  }
  summary["families"] = json::array();
  for (const auto& s : sides) summary["families"].push_back(s.name);
  summary["baseline"] = sides[base_i].name;
  summary["settings"] = {{"data", corpus.train},
                         {"val", corpus.val},
                         {"tokenizer", tok_path},
                         {"vocab_size", o.vocab_size},
                         {"seq_len", T},
                         {"batch_size", B},
                         {"lr", o.lr},
                         {"min_lr", o.min_lr},
                         {"capacity", o.family_settings.capacity},
                         {"routed_layers", o.family_settings.routed_layers},
                         {"minutes", o.budget_flops > 0 ? json(nullptr) : json(o.minutes)},
                         {"final_windows", sides[0].result["topk"]["windows"]},
                         {"eval_windows", o.eval_windows},
                         {"threads", omp_get_max_threads()},
                         {"calibration", plan["calibration"]}};
  summary["budget_flops"] = budget;
  summary["decode_race"] = {{"threads", race.threads}, {"rounds", race.rounds}, {"new_tokens", race.new_tokens}};
  json total_phases = record_timings();
  summary["phases"] = total_phases;
  summary["phases_this_run"] = phases;
  // The routing picture comes from the MoD model, else the staged MoDE one.
  std::string routing_from;
  for (const char* f : {"mod", "mode_staged"})
    for (const auto& s : sides)
      if (routing_from.empty() && s.name == f) routing_from = f;
  for (auto& s : sides) {
    const json& r = s.result;
    const ModelConfig& mc = s.run.model;
    const bool routed = mc.n_routed() > 0, causal = r.contains("causal");
    const TrainProgress& p = s.outcome.progress;
    json m;
    m["family"] = s.name;
    m["label"] = s.label;
    m["run_dir"] = out + "/" + s.name;
    m["checkpoint"] = s.outcome.checkpoint;
    m["config"] = mc.to_json();
    m["params"] = count_params(mc);
    m["flops_per_forward"] = s.flops_per_forward;
    m["flops_per_step"] = s.flops_per_step;
    m["train_flops"] = p.flops;
    m["train_flops_executed"] = p.flops_executed;
    m["steps"] = p.step;
    m["tokens"] = p.tokens;
    Curves c = curves_of(read_log(out + "/" + s.name));
    m["train_seconds"] = c.train_seconds;  // steps only (validation passes and checkpoints excluded)
    m["run_seconds"] = p.seconds;          // the run's whole wall-clock
    m["train_tokens_per_second"] = c.train_seconds > 0 ? p.tokens / c.train_seconds : 0.0;
    m["val_loss_topk"] = r["topk"]["loss"];
    m["val_loss_causal"] = causal ? r["causal"]["loss"] : r["topk"]["loss"];
    m["predictor_accuracy"] = routed ? json(mean_of(r["topk"]["routed"], "decision_accuracy")) : json(nullptr);
    m["processed_fraction"] = routed ? json(mean_of(r["causal"]["routed"], "processed_fraction")) : json(1.0);
    m["processed_fraction_topk"] = routed ? json(mean_of(r["topk"]["routed"], "processed_fraction")) : json(1.0);
    if (r["topk"].contains("moe")) {
      m["moe_dropped_fraction"] = moe_mean(r["topk"], "dropped_fraction");
      m["moe_noop_fraction"] = moe_mean(r["topk"], "noop_fraction");
      m["moe_balance"] = moe_mean(r["topk"], "balance");
    }
    m["eval"] = {{"topk", r["topk"]}};
    if (causal) m["eval"]["causal"] = r["causal"];
    // Decode (null where this build has no KV-cache decoder).
    const json& d = r["decode"];
    const bool dec = d.contains("tokens_per_second");
    const size_t si = &s - sides.data();
    const bool raced = si < race.tokens_per_second.size() && race.tokens_per_second[si] > 0;
    m["decode_tokens_per_second"] = raced ? json(race.tokens_per_second[si]) : dec ? d["tokens_per_second"] : json(nullptr);
    m["decode_tokens_per_second_sample"] = dec ? d["tokens_per_second"] : json(nullptr);  // while sampling, on its own
    m["kv_cache_bytes"] = dec ? d["kv_cache_bytes"] : json(nullptr);
    m["kv_cache_context_tokens"] = dec ? d["context_tokens"] : json(nullptr);
    m["decode_threads"] = raced ? json(race.threads) : dec ? d["threads"] : json(nullptr);
    m["sample"] = dec ? json{{"prompt", d["prompt"]}, {"continuation", d["continuation"]}, {"new_tokens", d["new_tokens"]},
                             {"temperature", o.temperature}, {"top_k", o.top_k}, {"seed", o.seed}}
                      : json(nullptr);
    m["curves"] = {{"val", c.val}, {"train", c.train}};
    if (routed) {
      m["predictor_accuracy_curve"] = c.accuracy;
      json layers = json::array();
      for (int l = 0; l < mc.n_layers; ++l)
        if (mc.routed(l)) layers.push_back(l);
      m["routed_layers"] = layers;
    }
    summary["models"][s.name] = m;
    if (s.name == routing_from) {
      summary["routing_family"] = s.name;
      summary["routing"] = r["routing"];
      summary["router_histogram"] = r["router_histogram"];
    }
  }
  // Each family against the baseline; "comparison" is MoD's (the two-model demo's) or the first's.
  const json& base = summary["models"][sides[base_i].name];
  summary["comparisons"] = json::object();
  for (size_t i = 0; i < sides.size(); ++i)
    if (i != base_i) summary["comparisons"][sides[i].name] = compare_models(base, summary["models"][sides[i].name]);
  std::string headline;
  if (summary["comparisons"].contains("mod")) headline = "mod";
  else if (!summary["comparisons"].empty()) headline = summary["comparisons"].begin().key();
  if (!headline.empty()) {
    summary["comparison"] = summary["comparisons"][headline];
    summary["comparison"]["family"] = headline;
  }
  const std::string table = demo_table_text(summary);
  summary["table_text"] = table;
  write_text(out + "/summary.json", summary.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
  write_text(out + "/report.html", render_demo_report(summary));

  std::printf("\n%s\n", table.c_str());
  const std::string base_label = sides[base_i].label;
  for (size_t i = 0; i < sides.size(); ++i) {
    if (i == base_i) continue;
    const json& cmp = summary["comparisons"][sides[i].name];
    const json& reach = cmp["reach_dense_loss"];
    const double dl = cmp["val_loss_diff_topk"];
    const char* label = sides[i].label.c_str();
    std::printf("At equal training FLOPs (%s), %s's validation loss is %s %s's by %.3f nats (top-k routing).\n", fmt_si(budget).c_str(),
                label, dl <= 0 ? "below" : "above", base_label.c_str(), std::fabs(dl));
    if (reach.value("reached", false))
      std::printf("  %s reached %s's final validation loss (%.4f) after %s of training; %s took %s (%.2fx).\n", label,
                  base_label.c_str(), reach["dense_final_loss"].get<double>(), fmt_seconds(reach["time"].get<double>()).c_str(),
                  base_label.c_str(), fmt_seconds(reach["dense_time"].get<double>()).c_str(), reach["speedup"].get<double>());
    else if (reach.contains("dense_final_loss"))
      std::printf("  %s did not reach %s's final validation loss (%.4f) in its run (its best: %.4f).\n", label, base_label.c_str(),
                  reach["dense_final_loss"].get<double>(), reach["mod_best_loss"].get<double>());
  }
  std::string ph;
  for (auto it = phases.begin(); it != phases.end(); ++it)
    if (it.key() != "total" && it.value().get<double>() >= 0.5) ph += (ph.empty() ? "" : ", ") + it.key() + " " + fmt_seconds(it.value().get<double>());
  std::printf("summary: %s/summary.json\nreport:  %s/report.html\ntime:    %s in all (%s)\n", out.c_str(), out.c_str(),
              fmt_seconds(since(t_start)).c_str(), ph.c_str());
  return 0;
}

}  // namespace modlm::demo
