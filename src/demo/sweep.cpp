#include "demo/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "demo/report.h"
#include "demo/runs.h"
#include "demo/svg.h"
#include "io/model_dir.h"
#include "model/families.h"
#include "model/flops.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/progress.h"

namespace modlm::demo {

namespace fs = std::filesystem;

SweepSize parse_sweep_size(const std::string& s) {
  std::vector<int> v;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find_first_of("xX", i);
    if (j == std::string::npos) j = s.size();
    const std::string part = s.substr(i, j - i);
    size_t used = 0;
    int x = 0;
    try {
      x = std::stoi(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (part.empty() || used != part.size() || x < 1)
      throw usage_error("--sizes: \"" + s + "\" is not DxL or DxLxHxF (positive integers, e.g. 256x8 or 256x8x4x704)");
    v.push_back(x);
    i = j + 1;
  }
  if (v.size() != 2 && v.size() != 4) throw usage_error("--sizes: \"" + s + "\" is not DxL or DxLxHxF");
  SweepSize z;
  z.d_model = v[0], z.n_layers = v[1];
  if (v.size() == 4) {
    z.n_heads = v[2], z.d_ff = v[3];
  } else {
    z.n_heads = std::max(1, z.d_model / 64);
    z.d_ff = std::max(32, (int)std::lround(2.75 * z.d_model / 32.0) * 32);
  }
  if (z.d_model % z.n_heads != 0 || (z.d_model / z.n_heads) % 2 != 0)
    throw usage_error("--sizes: \"" + s + "\": d_model must split into heads of an even size");
  return z;
}

namespace {

std::string abs_path(const std::string& p) {
  std::error_code ec;
  auto a = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? p : a.string();
}

std::vector<json> read_records(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      json j = json::parse(line);
      if (j.is_object() && j.contains("name")) out.push_back(j);
    } catch (const json::exception&) {
      // a torn last line from a crash: that run is redone
    }
  }
  return out;
}

}  // namespace

int run_sweep(const SweepOptions& o) {
  install_stop_handlers();
  if (o.budgets.empty()) throw usage_error("give --budgets F1,F2,... (training FLOPs per run)");
  if (o.sizes.empty()) throw usage_error("give --sizes DxL,... (e.g. 128x4,192x6,256x8)");
  for (double b : o.budgets)
    if (!(b > 0) || !std::isfinite(b)) throw usage_error("--budgets must be positive numbers");
  if (o.families.empty()) throw usage_error("--families names no family");
  for (const auto& f : o.families) {
    const auto& known = model_families();
    if (std::find(known.begin(), known.end(), f) == known.end())
      throw usage_error("--families: \"" + f + "\" is not one of dense, mod, moe, mode_staged, mode_integrated");
  }
  if (o.data.empty() != o.val.empty()) throw usage_error("give both --data TRAIN and --val VAL (or neither, for the shipped corpus)");
  Corpus corpus = o.data.empty() ? default_corpus() : Corpus{abs_path(o.data), abs_path(o.val)};
  for (const auto& p : {corpus.train, corpus.val})
    if (!file_exists(p)) throw io_error(p + ": no such file");
  std::error_code ec;
  fs::create_directories(o.out + "/runs", ec);
  if (ec) throw io_error(o.out + ": cannot create: " + ec.message());

  const std::string tok_path = prepare_tokenizer(o.out + "/tokenizer", corpus.train, o.vocab_size);
  check_stop();
  io::SentencePieceTokenizer tok(tok_path);
  Tokens val = load_tokens(corpus.val, tok);
  const int T = o.seq_len, B = o.batch_size;
  if (count_windows(val.span.size, T) < 1) throw bad_input(corpus.val + ": fewer tokens than one window of seq-len + 1");

  const std::string jsonl = o.out + "/sweep.jsonl";
  std::vector<json> records = read_records(jsonl);
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < records.size(); ++i) by_name[records[i]["name"].get<std::string>()] = i;

  struct Job {
    std::string name, family;
    double budget;
    SweepSize size;
    RunConfig run;
    int64_t fwd;
  };
  std::vector<Job> jobs;
  int too_small = 0;
  for (double budget : o.budgets)
    for (const auto& z : o.sizes)
      for (const auto& fam : o.families) {
        json m{{"format", "modlm-1"}, {"vocab_size", o.vocab_size}, {"d_model", z.d_model}, {"n_layers", z.n_layers},
               {"n_heads", z.n_heads}, {"d_ff", z.d_ff}, {"max_seq_len", T}};
        const std::string what = "sweep model " + std::to_string(z.d_model) + "x" + std::to_string(z.n_layers);
        const ModelConfig dense = ModelConfig::from_json(m, what);
        ModelConfig mc;
        try {
          mc = family_config(dense, fam, o.family_settings, what);
        } catch (const Error& e) {
          throw usage_error(std::string("--sizes / --families: ") + e.what());
        }
        const int64_t fwd = analytic_forward_flops(mc, T).total();
        const int64_t steps = (int64_t)std::floor(budget / (3.0 * B * fwd));
        const std::string name = fam + "-d" + std::to_string(z.d_model) + "-l" + std::to_string(z.n_layers) + "-h" +
                                 std::to_string(z.n_heads) + "-f" + std::to_string(z.d_ff) + "-b" + short_number(budget);
        if (steps < 1) {
          std::fprintf(stderr, "%s: the budget is less than one training step (%s FLOPs); left out\n", name.c_str(),
                       short_number(3.0 * B * fwd).c_str());
          ++too_small;
          continue;
        }
        json t{{"steps", steps}, {"batch_size", B}, {"seq_len", T}, {"lr", o.lr}, {"min_lr", o.min_lr},
               {"warmup_steps", std::max<int64_t>(1, std::llround(o.warmup_fraction * steps))}, {"seed", o.seed},
               {"log_every", std::max<int64_t>(1, steps / 100)}, {"eval_every", std::max<int64_t>(1, steps / 4)},
               {"eval_windows", 8}, {"ckpt_every", std::max<int64_t>(1, steps / 4)}, {"keep_checkpoints", 1}, {"tokenizer", tok_path}};
        RunConfig run = RunConfig::from_json(json{{"model", mc.to_json()}, {"train", t}}, "sweep run " + name);
        run.train.validate(run.model, "sweep run " + name);
        jobs.push_back({name, fam, budget, z, run, fwd});
      }

  int trained = 0, skipped = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    check_stop();
    if (auto it = by_name.find(j.name); it != by_name.end()) {
      const json& r = records[it->second];
      if (r.contains("run") && r["run"] == j.run.to_json() && r.value("data", "") == corpus.train && r.value("val", "") == corpus.val &&
          r.value("eval_windows", (int64_t)0) == o.eval_windows) {
        std::fprintf(stderr, "[%zu/%zu] %s: already finished (val loss %.4f), skipped\n", i + 1, jobs.size(), j.name.c_str(),
                     r.value("val_loss", 0.0));
        ++skipped;
        continue;
      }
      throw usage_error(jsonl + " has a run " + j.name + " made with other settings; use another --out");
    }
    const std::string dir = o.out + "/runs/" + j.name;
    std::fprintf(stderr, "[%zu/%zu] %s: %lld steps of %s FLOPs\n", i + 1, jobs.size(), j.name.c_str(), (long long)j.run.train.steps,
                 short_number(3.0 * B * j.fwd).c_str());
    RunOutcome r = train_or_resume(dir, j.run, corpus.train, corpus.val, o.progress);
    if (r.interrupted) {
      std::fprintf(stderr, "interrupted: %s is checkpointed at step %lld; run the same command again to continue\n", dir.c_str(),
                   (long long)r.progress.step);
      return kExitInterrupted;
    }
    Model<float> model = io::load_model(r.checkpoint);
    Progress bar("eval " + j.name, o.eval_windows, "win", o.progress);
    EvalResult topk = evaluate(model, val.span, T, o.eval_windows, RouteMode::TopK, B, &bar);
    bar.finish();
    json rec{{"name", j.name},
             {"family", j.family},
             {"budget", j.budget},
             {"d_model", j.size.d_model},
             {"n_layers", j.size.n_layers},
             {"n_heads", j.size.n_heads},
             {"d_ff", j.size.d_ff},
             {"params", count_params(j.run.model)},
             {"flops_per_forward", j.fwd},
             {"steps", r.progress.step},
             {"tokens", r.progress.tokens},
             {"train_flops", r.progress.flops},
             {"train_seconds", r.progress.seconds},
             {"val_loss", topk.loss},
             {"val_loss_causal", nullptr},
             {"eval_windows", o.eval_windows},
             {"data", corpus.train},
             {"val", corpus.val},
             {"run_dir", dir},
             {"run", j.run.to_json()}};
    if (has_causal_mode(j.run.model)) {
      check_stop();
      Progress bar2("eval " + j.name + " causal", o.eval_windows, "win", o.progress);
      rec["val_loss_causal"] = evaluate(model, val.span, T, o.eval_windows, RouteMode::Causal, B, &bar2).loss;
      bar2.finish();
    }
    // Append the record (one line; a torn line from a crash is ignored on the next read).
    {
      std::FILE* f = std::fopen(jsonl.c_str(), "a");
      if (!f) throw io_error(jsonl + ": cannot open for appending");
      const std::string line = rec.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
      const bool ok = std::fwrite(line.data(), 1, line.size(), f) == line.size();
      const bool closed = std::fclose(f) == 0;
      if (!ok || !closed) throw io_error(jsonl + ": write failed");
    }
    by_name[j.name] = records.size();
    records.push_back(rec);
    ++trained;
  }

  const FamilySettings& fs = o.family_settings;
  json meta{{"training text", corpus.train}, {"validation text", corpus.val}, {"tokenizer", tok_path},
            {"batch", std::to_string(B) + " x " + std::to_string(T) + " tokens"},
            {"MoD routing", fs.routed_layers + ", capacity " + fmt_fixed(fs.capacity, 3)},
            {"MoE", std::to_string(fs.n_experts) + " experts of " + (fs.d_expert > 0 ? std::to_string(fs.d_expert) : std::string("d_ff")) +
                        ", top-" + std::to_string(fs.moe_top_k) + ", capacity factor " + fmt_fixed(fs.capacity_factor, 2)},
            {"final evaluation", std::to_string(o.eval_windows) + " validation windows"}};
  write_text(o.out + "/sweep.html", render_sweep_report(records, meta));
  std::printf("%-40s %10s %8s %10s %10s\n", "run", "params", "steps", "val loss", "causal");
  for (const auto& r : records)
    std::printf("%-40s %10s %8lld %10.4f %10s\n", r.value("name", std::string()).c_str(), fmt_si(r.value("params", 0.0)).c_str(),
                (long long)r.value("steps", (int64_t)0), r.value("val_loss", 0.0),
                r["val_loss_causal"].is_number() ? fmt_fixed(r["val_loss_causal"].get<double>(), 4).c_str() : "-");
  std::printf("sweep: %d trained, %d skipped (already finished)%s\n", trained, skipped,
              too_small ? (", " + std::to_string(too_small) + " left out (budget below one step)").c_str() : "");
  std::printf("sweep.jsonl: %s\nsweep.html:  %s/sweep.html\n", jsonl.c_str(), o.out.c_str());
  return 0;
}

}  // namespace modlm::demo
