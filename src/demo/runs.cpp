#include "demo/runs.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "model/model.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/sampler.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/progress.h"

namespace modlm::demo {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Corpus

static std::string exe_dir() {
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

Corpus default_corpus() {
  std::vector<std::string> dirs;
  if (const char* e = std::getenv("MODLM_DATA_DIR"); e && *e) dirs.push_back(e);
  dirs.push_back("data");
  if (std::string x = exe_dir(); !x.empty()) {
    dirs.push_back(x + "/data");
    dirs.push_back(x + "/../data");
    dirs.push_back(x + "/../../data");
    dirs.push_back(x + "/../share/modlm/data");
  }
  for (const auto& d : dirs) {
    if (file_exists(d + "/train.txt.gz") && file_exists(d + "/valid.txt.gz")) {
      std::error_code ec;
      std::string abs = fs::weakly_canonical(fs::absolute(d), ec).string();
      if (ec) abs = d;
      return {abs + "/train.txt.gz", abs + "/valid.txt.gz"};
    }
  }
  throw usage_error(
      "the default corpus (data/train.txt.gz, data/valid.txt.gz) was not found: run from the repository "
      "root, set MODLM_DATA_DIR, or give --data TRAIN --val VAL");
}

// ---------------------------------------------------------------------------------------------
// Stop

static std::atomic<bool> g_stop{false};
static void on_stop_signal(int) {
  g_stop.store(true);
  request_training_stop();
}
void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}
bool stop_requested() { return g_stop.load(); }
void check_stop() {
  if (g_stop.load()) throw Error(kExitInterrupted, "interrupted; run the same command again to continue");
}

// ---------------------------------------------------------------------------------------------
// Files

void write_text(const std::string& path, const std::string& text) {
  atomic_write_file(path, [&](std::FILE* f) { fwrite_checked(f, text.data(), text.size(), path); });
}

std::string short_number(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.3g", v);
  std::string s = b;
  // 1e+13 -> 1e13
  auto e = s.find("e+");
  if (e != std::string::npos) {
    std::string exp = s.substr(e + 2);
    while (exp.size() > 1 && exp[0] == '0') exp.erase(0, 1);
    s = s.substr(0, e) + "e" + exp;
  }
  return s;
}

static json read_json_file(const std::string& path) {
  try {
    return json::parse(read_text_file(path));
  } catch (const json::parse_error& e) {
    throw bad_input(path + ": not valid JSON: " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer and tokens

std::string prepare_tokenizer(const std::string& dir, const std::string& train_text, int vocab_size) {
  const std::string model = dir + "/tokenizer.model", meta_path = dir + "/tokenizer.json";
  std::error_code ec;
  const auto size = fs::file_size(train_text, ec);
  json want{{"text", train_text}, {"text_bytes", ec ? 0 : (int64_t)size}, {"vocab_size", vocab_size}};
  if (file_exists(model) && file_exists(meta_path)) {
    json have;
    try {
      have = json::parse(read_text_file(meta_path));
    } catch (const json::exception&) {
    }
    if (have == want) return model;
  }
  fs::create_directories(dir, ec);
  if (ec) throw io_error(dir + ": cannot create: " + ec.message());
  std::fprintf(stderr, "training a SentencePiece BPE tokenizer (vocab %d) on %s ...\n", vocab_size, train_text.c_str());
  auto t0 = std::chrono::steady_clock::now();
  io::train_sentencepiece(train_text, vocab_size, dir);
  std::fprintf(stderr, "  done in %.1f s -> %s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), model.c_str());
  write_text(meta_path, want.dump(2) + "\n");
  return model;
}

Tokens load_tokens(const std::string& text, const io::Tokenizer& tok) {
  Tokens t;
  t.file = std::make_shared<io::TokenFile>(io::load_or_build_tokens(text, tok));
  if (t.file->size() == 0) throw bad_input(text + ": no tokens");
  auto f = t.file;
  t.span.size = f->size();
  t.span.copy = [f](size_t b, size_t c, int32_t* d) { f->copy(b, c, d); };
  return t;
}

// ---------------------------------------------------------------------------------------------
// Runs

RunStatus run_status(const std::string& run_dir) {
  RunStatus s;
  s.exists = file_exists(run_dir + "/run.json");
  if (!s.exists) return s;
  if (auto ck = latest_checkpoint(run_dir)) {
    s.checkpoint = *ck;
    s.progress = TrainProgress::from_json(read_json_file(*ck + "/train_state.json"));
    s.step = s.progress.step;
  }
  json run = read_json_file(run_dir + "/run.json");
  int64_t steps = run.contains("train") ? run["train"].value("steps", (int64_t)0) : 0;
  s.finished = !s.checkpoint.empty() && steps > 0 && s.step >= steps;
  return s;
}

RunOutcome train_or_resume(const std::string& run_dir, const RunConfig& run, const std::string& data,
                           const std::string& val, bool progress_bar) {
  RunOutcome out;
  RunStatus st = run_status(run_dir);
  if (st.exists) {
    json saved = read_json_file(run_dir + "/run.json");
    const std::string sdata = saved.value("data", ""), sval = saved.value("val", "");
    saved.erase("data");
    saved.erase("val");
    RunConfig have = RunConfig::from_json(saved, run_dir + "/run.json");
    if (have.to_json() != run.to_json() || sdata != data || sval != val)
      throw usage_error(run_dir + " holds a training run with other settings (model, training or data) than this one; "
                        "use another --out, or remove that folder");
    if (st.finished) {
      out.reused = true;
      out.checkpoint = st.checkpoint;
      out.progress = st.progress;
      return out;
    }
    out.resumed = true;
  }
  check_stop();
  TrainOptions t;
  t.out_dir = run_dir;
  t.data_path = data;
  t.val_path = val;
  t.run = run;
  t.resume = st.exists;
  t.progress_bar = progress_bar;
  TrainSummary s = train(t);
  out.checkpoint = s.checkpoint;
  out.progress = s.progress;
  out.interrupted = s.interrupted || stop_requested();
  return out;
}

std::vector<json> read_log(const std::string& run_dir) {
  std::vector<json> lines;
  std::ifstream in(run_dir + "/log.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      lines.push_back(json::parse(line));
    } catch (const json::exception&) {
    }
  }
  return lines;
}

int64_t count_params(const ModelConfig& cfg) {
  ParamLayout layout(cfg);
  int64_t n = 0;
  for (const auto& p : layout.params()) n += (int64_t)p.numel;
  return n;
}

double time_train_step(const ModelConfig& cfg, int batch, int seq_len, const TokenSpan& data, int reps,
                       bool progress_bar) {
  Model<float> model(cfg);
  model.init_weights(1);
  AdamWState adam;
  adam.resize(model.params().size());
  AdamWConfig oc;
  oc.total_steps = reps + 1;
  oc.warmup_steps = 0;
  WindowSampler sampler(data, seq_len, 12345);
  std::vector<int32_t> tok((size_t)batch * seq_len), tgt((size_t)batch * seq_len);
  std::vector<double> times;
  Progress bar("calibrate " + std::string(cfg.n_routed() ? "MoD" : "dense"), reps + 1, "step", progress_bar);
  for (int i = 0; i <= reps; ++i) {
    check_stop();
    auto t0 = std::chrono::steady_clock::now();
    sampler.fill((int64_t)i * batch, batch, tok.data(), tgt.data());
    model.zero_grad();
    ForwardOptions fo;
    fo.train = true;
    fo.noise_seed = (uint64_t)i;
    model.forward(tok.data(), tgt.data(), batch, seq_len, fo);
    model.backward();
    adamw_step(model.layout(), oc, oc.lr, model.params().data(), model.grads().data(), adam);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) times.push_back(s);
    bar.update(i + 1);
  }
  bar.finish();
  // The fastest step: a burst of load from elsewhere during the few timed steps should not
  // shrink the whole demo's budget (a sustained load slows every step, the fastest too).
  return *std::min_element(times.begin(), times.end());
}

}  // namespace modlm::demo
