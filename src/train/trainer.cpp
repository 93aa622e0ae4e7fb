#include "train/trainer.h"

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "io/bpe_tokenizer.h"
#include "io/model_dir.h"
#include "io/token_file.h"
#include "io/tokenizer.h"
#include "model/flops.h"
#include "ops/gemm.h"
#include "train/evaluate.h"
#include "train/distributed.h"
#include "train/sampler.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/progress.h"

namespace modlm {

namespace fs = std::filesystem;

static std::atomic<bool> g_stop{false};
void request_training_stop() { g_stop.store(true); }
static void on_signal(int) { g_stop.store(true); }
void install_stop_signal_handlers() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

namespace {

struct Data {
  std::unique_ptr<io::Tokenizer> tokenizer;
  std::string tokenizer_model;  // path copied into checkpoints ("" for bytes)
  std::shared_ptr<io::TokenFile> train, val;
};

TokenSpan span_of(const std::shared_ptr<io::TokenFile>& f) {
  TokenSpan s;
  s.size = f->size();
  s.copy = [f](size_t b, size_t c, int32_t* d) { f->copy(b, c, d); };
  return s;
}

std::shared_ptr<io::TokenFile> load_tokens(const std::string& path, const io::Tokenizer& tok, int V) {
  auto f = std::make_shared<io::TokenFile>(io::load_or_build_tokens(path, tok));
  if (f->size() == 0) throw bad_input(path + ": no tokens");
  return f;
}

// Tokenizer of the run: bytes, the given tokenizer.model, or one trained on the training text.
Data prepare_data(const TrainOptions& o, const std::string& run_dir) {
  Data d;
  const ModelConfig& m = o.run.model;
  if (m.tokenizer == "bytes") {
    d.tokenizer = std::make_unique<io::ByteTokenizer>();
  } else {
    const std::string& given = o.run.train.tokenizer;
    const bool bpe = given.size() >= 5 && given.ends_with(".json");  // a byte-level BPE tokenizer.json
    d.tokenizer_model = run_dir + (bpe ? "/tokenizer.json" : "/tokenizer.model");
    if (!file_exists(d.tokenizer_model)) {
      if (!o.run.train.tokenizer.empty()) {
        std::error_code ec;
        fs::copy_file(o.run.train.tokenizer, d.tokenizer_model, ec);
        if (ec) throw io_error(o.run.train.tokenizer + ": cannot copy the tokenizer: " + ec.message());
      } else {
        std::fprintf(stderr, "training a SentencePiece BPE tokenizer (vocab %d) on %s\n", m.vocab_size, o.data_path.c_str());
        io::train_sentencepiece(o.data_path, m.vocab_size, run_dir);
      }
    }
    if (bpe) d.tokenizer = std::make_unique<io::BpeTokenizer>(d.tokenizer_model);
    else d.tokenizer = std::make_unique<io::SentencePieceTokenizer>(d.tokenizer_model);
  }
  if (d.tokenizer->vocab_size() > m.vocab_size)
    throw bad_input("the tokenizer has " + std::to_string(d.tokenizer->vocab_size()) + " ids but model.vocab_size is " +
                    std::to_string(m.vocab_size));
  d.train = load_tokens(o.data_path, *d.tokenizer, m.vocab_size);
  if (!o.val_path.empty()) d.val = load_tokens(o.val_path, *d.tokenizer, m.vocab_size);
  return d;
}

json routed_log(const std::vector<RoutedLayerStats>& stats) {
  json a = json::array();
  for (const auto& s : stats)
    a.push_back({{"layer", s.layer},
                 {"processed", s.tokens ? (double)s.processed / s.tokens : 0.0},
                 {"mean_gate", s.processed ? s.gate_sum / s.processed : 0.0},
                 {"decision_accuracy", s.tokens ? (double)s.decision_correct / s.tokens : 0.0},
                 {"decision_loss", s.decision_loss}});
  return a;
}

// Keeps the log lines of steps <= `step` (a resumed run redoes the rest, identically).
void truncate_log(const std::string& path, int64_t step) {
  if (!file_exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      json j = json::parse(line);
      if (j.value("step", (int64_t)0) > step) continue;
    } catch (const json::exception&) {
      continue;  // a torn last line from a crash
    }
    kept += line + "\n";
  }
  atomic_write_file(path, [&](std::FILE* f) { fwrite_checked(f, kept.data(), kept.size(), path); });
}

}  // namespace

// Sums a step's statistics over the ranks (distributed.h): counts add, per-rank means average.
void reduce_stats(double& loss, double& lm_loss, int64_t& exec, std::vector<RoutedLayerStats>& rs, std::vector<MoeLayerStats>& ms) {
  if (!dist::enabled()) return;
  const double N = dist::size();
  std::vector<double> v = {loss, lm_loss, (double)exec};
  for (const auto& r : rs) v.insert(v.end(), {(double)r.tokens, (double)r.processed, r.gate_sum, (double)r.decision_correct, r.decision_loss});
  for (const auto& m : ms) {
    v.insert(v.end(), {(double)m.tokens, (double)m.assignments, (double)m.dropped, (double)m.noop, (double)m.computed,
                       (double)m.sequences, m.balance * m.sequences, m.balance_loss * m.sequences});
    for (int64_t l : m.load) v.push_back((double)l);
  }
  dist::allreduce_sum(v.data(), v.size());
  size_t i = 0;
  loss = v[i++] / N;
  lm_loss = v[i++] / N;
  exec = (int64_t)v[i++];
  for (auto& r : rs) {
    r.tokens = (int64_t)v[i++];
    r.processed = (int64_t)v[i++];
    r.gate_sum = v[i++];
    r.decision_correct = (int64_t)v[i++];
    r.decision_loss = v[i++] / N;
  }
  for (auto& m : ms) {
    m.tokens = (int64_t)v[i++];
    m.assignments = (int64_t)v[i++];
    m.dropped = (int64_t)v[i++];
    m.noop = (int64_t)v[i++];
    m.computed = (int64_t)v[i++];
    m.sequences = (int64_t)v[i++];
    const double bsum = v[i++], lsum = v[i++];
    m.balance = m.sequences ? bsum / (double)m.sequences : 0;
    m.balance_loss = m.sequences ? lsum / (double)m.sequences : 0;
    for (auto& l : m.load) l = (int64_t)v[i++];
  }
}

TrainSummary train(const TrainOptions& o) {
  const std::string& dir = o.out_dir;
  const ModelConfig& mc = o.run.model;
  const TrainConfig& tc = o.run.train;
  if (o.data_path.empty()) throw usage_error("no training data (--data)");
  if (!file_exists(o.data_path)) throw io_error(o.data_path + ": no such file");
  if (!o.val_path.empty() && !file_exists(o.val_path)) throw io_error(o.val_path + ": no such file");
  tc.validate(mc, "train config");
  if (o.stop_at < 0) throw usage_error("--stop-at must be >= 0");
  dist::init();
  const int n_ranks = dist::size(), rank = dist::rank();
  const bool root = dist::is_root();
  if (tc.batch_size % n_ranks != 0)
    throw usage_error("--batch-size " + std::to_string(tc.batch_size) + " does not split over " + std::to_string(n_ranks) +
                      " MPI ranks: give a multiple of " + std::to_string(n_ranks));

  std::error_code ec;
  if (!o.resume) {
    if (file_exists(dir + "/run.json"))
      throw usage_error(dir + " already holds a training run (use --resume to continue it, or another --out)");
    dist::barrier();  // every rank has seen the folder without a run before rank 0 starts one
    if (root) fs::create_directories(dir, ec);
    if (ec) throw io_error(dir + ": cannot create: " + ec.message());
  }
  // Rank 0 tokenizes (and caches) the text first; the others then read its cache.
  Data data;
  if (root) data = prepare_data(o, dir);
  dist::barrier();
  if (!root) data = prepare_data(o, dir);
  WindowSampler sampler(span_of(data.train), tc.seq_len, tc.seed);
  if (data.val && count_windows(data.val->size(), tc.seq_len) < 1)
    throw bad_input(o.val_path + ": fewer tokens than one sequence of seq_len + 1 = " + std::to_string(tc.seq_len + 1));

  Model<float> model(mc);
  // Fine-tuning starts from a folder's weights (which must be this config's), else from init_weights.
  auto start_weights = [&]() {
    if (tc.init.empty()) return model.init_weights(tc.seed);
    const ModelConfig own = io::load_model_config(tc.init);
    if (own.to_json() != mc.to_json()) throw bad_input(tc.init + ": its config.json is not the run's model config");
    io::load_model_weights(tc.init, model);
  };
  // Frozen while step < freeze_backbone_steps: everything but routers and predictors.
  std::vector<char> frozen;
  for (const ParamInfo& p : model.layout().params())
    frozen.push_back(p.name.find(".router.") == std::string::npos && p.name.find(".predictor.") == std::string::npos);
  AdamWState adam;
  adam.resize(model.params().size());
  TrainProgress prog;
  const std::string log_path = dir + "/log.jsonl";
  if (o.resume) {
    if (auto ck = latest_checkpoint(dir)) {
      prog = load_checkpoint(*ck, model, adam);
      if (root) std::fprintf(stderr, "resuming %s from %s (step %lld)\n", dir.c_str(), ck->c_str(), (long long)prog.step);
    } else {
      start_weights();
    }
    if (root) truncate_log(log_path, prog.step);
  } else {
    start_weights();
  }
  if (!o.resume && root) {
    json run = o.run.to_json();
    run["data"] = o.data_path;
    run["val"] = o.val_path;
    const std::string text = run.dump(2) + "\n";
    atomic_write_file(dir + "/run.json", [&](std::FILE* f) { fwrite_checked(f, text.data(), text.size(), dir + "/run.json"); });
    atomic_write_file(log_path, [](std::FILE*) {});
  }
  // Only rank 0 writes: the log, the progress bar, checkpoints.
  std::FILE* log = root ? std::fopen(log_path.c_str(), "a") : nullptr;
  if (root && !log) throw io_error(log_path + ": cannot open for appending");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log_guard(log, [](std::FILE* f) { return f ? std::fclose(f) : 0; });

  // Overlap: each part's gradient all-reduce starts as soon as backward() finishes that part
  // (Model::on_grads_ready), during the last micro-batch; the embeddings (final last) after it.
  // MODLM_DP_OVERLAP=0 reduces the whole buffer after backward instead (for benchmarks).
  const bool overlap = dist::enabled() && !(std::getenv("MODLM_DP_OVERLAP") && std::string(std::getenv("MODLM_DP_OVERLAP")) == "0");
  std::vector<std::vector<const ParamInfo*>> part_params(mc.n_layers + 1);
  std::vector<const ParamInfo*> rest_params;
  for (const ParamInfo& p : model.layout().params()) {
    int part = -1;
    if (p.name.rfind("layers.", 0) == 0) part = std::stoi(p.name.substr(7));
    else if (p.name == "norm.weight" || p.name == "output.weight") part = mc.n_layers;
    (part >= 0 ? part_params[part] : rest_params).push_back(&p);
  }
  dist::GradientReducer reducer;

  // This rank's share of each micro-batch: sequences [rank * Bl, (rank + 1) * Bl) of B.
  const int B = tc.batch_size, T = tc.seq_len, A = tc.grad_accum, Bl = B / n_ranks;
  const int64_t step_flops = 3 * (int64_t)B * A * analytic_forward_flops(mc, T).total();
  std::vector<int32_t> tok((size_t)Bl * T), tgt((size_t)Bl * T);
  TrainSummary sum;
  sum.steps = prog.step;
  std::string last_ckpt;
  auto checkpoint = [&]() {
    if (root) last_ckpt = save_checkpoint(dir, model, adam, prog, data.tokenizer_model, tc.keep_checkpoints);
  };
  auto validate = [&]() -> double {
    if (!data.val) return -1;
    return evaluate(model, span_of(data.val), T, tc.eval_windows, RouteMode::TopK, B).loss;
  };

  g_stop.store(false);
  const int64_t end = o.stop_at > 0 ? std::min(o.stop_at, tc.steps) : tc.steps;
  Progress bar("train", tc.steps, "step", o.progress_bar && root);
  bar.update(prog.step);
  auto t_run = std::chrono::steady_clock::now();
  const double seconds_before = prog.seconds;
  while (prog.step < end) {
    const int64_t step = prog.step;
    auto t0 = std::chrono::steady_clock::now();
    model.zero_grad();
    double loss = 0, lm_loss = 0;
    std::vector<RoutedLayerStats> rstats;
    std::vector<MoeLayerStats> mstats;
    int64_t exec_before = ops::FlopCounter::total().load();
    for (int a = 0; a < A; ++a) {
      const int64_t g0 = (step * A + a) * (int64_t)B;
      sampler.fill(g0 + (int64_t)rank * Bl, Bl, tok.data(), tgt.data());
      ForwardOptions fo;
      fo.train = true;
      fo.noise_seed = tc.seed * 1000003ull + (uint64_t)(step * A + a);
      fo.noise_offset = (int64_t)rank * Bl * T;  // the draws the sequences before this rank's took
      ForwardResult fr = model.forward(tok.data(), tgt.data(), Bl, T, fo);
      if (overlap && a == A - 1)
        model.on_grads_ready = [&](int part) {
          for (const ParamInfo* p : part_params[part]) reducer.post(model.grads().data() + p->offset, p->numel);
          reducer.progress();
        };
      model.backward();
      model.on_grads_ready = nullptr;
      loss += fr.loss / A;
      lm_loss += fr.lm_loss / A;
      if (mstats.empty()) mstats.resize(fr.moe.size());
      for (size_t i = 0; i < fr.moe.size(); ++i) mstats[i].merge(fr.moe[i]);
      if (rstats.empty()) rstats = fr.routed;
      else
        for (size_t i = 0; i < rstats.size(); ++i) {
          rstats[i].tokens += fr.routed[i].tokens;
          rstats[i].processed += fr.routed[i].processed;
          rstats[i].gate_sum += fr.routed[i].gate_sum;
          rstats[i].decision_correct += fr.routed[i].decision_correct;
          rstats[i].decision_loss += fr.routed[i].decision_loss;
        }
    }
    for (auto& s : rstats) s.decision_loss /= A;
    int64_t exec = ops::FlopCounter::total().load() - exec_before;
    // Data parallel: the gradient of the global batch's mean loss is the mean of the ranks'.
    const double ar0 = dist::allreduce_seconds();
    if (dist::enabled()) {
      if (overlap) {
        for (const ParamInfo* p : rest_params) reducer.post(model.grads().data() + p->offset, p->numel);
        reducer.wait();
      } else {
        dist::allreduce_sum(model.grads().data(), model.grads().size());
      }
      reduce_stats(loss, lm_loss, exec, rstats, mstats);
    }
    if (!std::isfinite(loss))
      throw Error(kExitFailure, "training stopped: the loss became " + std::string(std::isnan(loss) ? "NaN" : "infinite") +
                                    " at step " + std::to_string(step + 1) + "; the last good checkpoint is " +
                                    (last_ckpt.empty() ? std::string("(none this run)") : last_ckpt) +
                                    " (try a lower lr or stronger clipping)");
    // Accumulated micro-batch gradients (summed over ranks too) are sums of per-batch means:
    // average them.
    if (A * n_ranks > 1) {
      scale_grads(model.layout(), model.grads().data(), true, 1.0f / (float)(A * n_ranks));
      scale_grads(model.layout(), model.grads().data(), false, 1.0f / (float)(A * n_ranks));
    }
    // Clip the backbone and the predictor separately: a joint norm would let the predictor's
    // gradient change the backbone's update, which its stop-gradient forbids.
    double gnorm = grad_norm(model.layout(), model.grads().data(), true);
    double pnorm = grad_norm(model.layout(), model.grads().data(), false);
    if (!std::isfinite(gnorm))
      throw Error(kExitFailure, "training stopped: non-finite gradient norm at step " + std::to_string(step + 1));
    if (tc.grad_clip > 0 && gnorm > tc.grad_clip) scale_grads(model.layout(), model.grads().data(), true, (float)(tc.grad_clip / gnorm));
    if (tc.grad_clip > 0 && pnorm > tc.grad_clip) scale_grads(model.layout(), model.grads().data(), false, (float)(tc.grad_clip / pnorm));
    const double lr = learning_rate(tc.opt, step);
    adamw_step(model.layout(), tc.opt, lr, model.params().data(), model.grads().data(), adam,
               step < tc.freeze_backbone_steps ? &frozen : nullptr);

    prog.step = step + 1;
    prog.tokens += tc.tokens_per_step();
    prog.flops += step_flops;
    prog.flops_executed += 3 * exec;
    prog.seconds = seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
    const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool last = prog.step == tc.steps;
    const bool do_eval = data.val && ((tc.eval_every > 0 && prog.step % tc.eval_every == 0) || last);
    double val = do_eval && root ? validate() : -1;
    if (do_eval) sum.val_loss = val;
    if (root && (prog.step % tc.log_every == 0 || last || do_eval)) {
      json line{{"step", prog.step},       {"tokens", prog.tokens}, {"loss", loss},
                {"lm_loss", lm_loss},      {"lr", lr},              {"grad_norm", gnorm},
                {"time", prog.seconds},    {"step_seconds", step_s}, {"flops", prog.flops},
                {"flops_executed", prog.flops_executed}};
      if (!rstats.empty()) {
        line["predictor_grad_norm"] = pnorm;
        line["routed"] = routed_log(rstats);
      }
      if (!mstats.empty()) line["moe"] = moe_stats_json(mstats);
      if (dist::enabled()) {
        line["ranks"] = n_ranks;
        line["allreduce_seconds"] = dist::allreduce_seconds() - ar0;  // this step's gradient all-reduce
      }
      if (do_eval) line["val_loss"] = val;
      const std::string s = line.dump() + "\n";
      fwrite_checked(log, s.data(), s.size(), log_path);
      std::fflush(log);
      if (o.echo_log) std::fputs(s.c_str(), stdout);
    }
    char extra[160];
    std::snprintf(extra, sizeof extra, "loss %.4f  %.0f tok/s  %.1f GFLOP/s%s", lm_loss, tc.tokens_per_step() / step_s,
                  step_flops / step_s / 1e9, val >= 0 ? ("  val " + std::to_string(val).substr(0, 6)).c_str() : "");
    bar.update(prog.step, extra);
    sum.train_loss = lm_loss;
    const bool stop = dist::any(g_stop.load());  // every rank stops at the same step
    if ((tc.ckpt_every > 0 && prog.step % tc.ckpt_every == 0) || prog.step == end || stop) checkpoint();
    if (stop) {
      sum.interrupted = true;
      break;
    }
  }
  bar.finish();
  if (last_ckpt.empty() && root) {
    if (auto ck = latest_checkpoint(dir)) last_ckpt = *ck;
    else checkpoint();
  }
  dist::barrier();  // the last checkpoint is in place before any rank returns
  sum.steps = prog.step;
  sum.progress = prog;
  sum.checkpoint = last_ckpt;
  return sum;
}

}  // namespace modlm
