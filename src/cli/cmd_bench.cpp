// `modlm bench train`: forward+backward time per step and achieved GFLOP/s of a random-weight
// model, next to the peak of the matrix-product routine on the model's own GEMM shapes, and
// (with routing) side by side with the dense twin, measured in the same run.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "model/families.h"
#include "model/flops.h"
#include "model/model.h"
#include "ops/gemm.h"
#include "util/error.h"
#include "util/profile.h"
#include "util/rng.h"

namespace modlm::cli {

namespace {

using clk = std::chrono::steady_clock;

double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

// CPU seconds of the whole process: on a shared, noisy machine the CPU time of a 1-thread run
// is a steadier measure of work than wall time.
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct StepTiming {
  double median_s = 0, min_s = 0, cpu_s = 0;  // cpu_s: mean CPU seconds per timed step
  int64_t flops = 0;  // analytic training FLOPs per step (3x forward)
  int64_t flops_executed = 0;  // 3x the matrix-product FLOPs the last forward executed
};

StepTiming time_steps(const ModelConfig& cfg, int B, int T, int steps, int warmup) {
  Model<float> m(cfg);
  m.init_weights(1);
  std::vector<int32_t> tok((size_t)B * T), tgt((size_t)B * T);
  Rng r(7);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = (int32_t)r.below(cfg.vocab_size), tgt[i] = (int32_t)r.below(cfg.vocab_size);
  std::vector<double> times;
  int64_t exec = 0;
  ForwardOptions fo;
  fo.train = true;
  double cpu0 = cpu_seconds();
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup) cpu0 = cpu_seconds();
    auto t0 = clk::now();
    m.zero_grad();
    const int64_t before = ops::FlopCounter::total().load();
    m.forward(tok.data(), tgt.data(), B, T, fo);
    exec = 3 * (ops::FlopCounter::total().load() - before);
    m.backward();
    if (s >= warmup) times.push_back(seconds_since(t0));
  }
  const double cpu = (cpu_seconds() - cpu0) / steps;
  std::sort(times.begin(), times.end());
  if (profile::enabled()) {
    std::fprintf(stderr, "profile (%d steps incl. warm-up):\n", warmup + steps);
    for (auto& [name, sec] : profile::totals()) std::fprintf(stderr, "  %-24s %8.3f s\n", name.c_str(), sec);
    profile::reset();
  }
  StepTiming st;
  st.median_s = times[times.size() / 2];
  st.min_s = times.front();
  st.cpu_s = cpu;
  st.flops = 3 * (int64_t)B * analytic_forward_flops(cfg, T).total();
  st.flops_executed = exec;
  return st;
}

// GFLOP/s of the BLAS on one product shape (median of reps).
double gemm_gflops(bool ta, bool tb, int M, int N, int K, int reps) {
  AlignedVector<float> A((size_t)M * K, 0.01f), Bm((size_t)K * N, 0.02f), C((size_t)M * N, 0.f);
  std::vector<double> t;
  for (int i = 0; i < reps + 1; ++i) {
    auto t0 = clk::now();
    ops::gemm_uncounted<float>(ta, tb, M, N, K, 1.f, A.data(), ta ? M : K, Bm.data(), tb ? K : N, 0.f, C.data(), N);
    if (i) t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return 2.0 * M * N * K / t[t.size() / 2] / 1e9;
}

}  // namespace

Command add_bench(CLI::App& app) {
  struct Opts {
    int batch = 8, seq_len = 512, steps = 5, warmup = 1;
    bool json_out = false, no_dense = false, no_peak = false;
    std::string families;
    ModelFlags flags;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("bench", "Benchmarks (random weights): `bench train`");
  sub->require_subcommand(1);
  CLI::App* tr = sub->add_subcommand("train", "Training step time and GFLOP/s; MoD against its dense twin");
  tr->add_option("--batch", o->batch, "sequences per step")->capture_default_str();
  tr->add_option("--seq-len", o->seq_len, "tokens per sequence")->capture_default_str();
  tr->add_option("--steps", o->steps, "timed steps")->capture_default_str();
  tr->add_option("--warmup", o->warmup, "untimed steps first")->capture_default_str();
  tr->add_flag("--no-dense", o->no_dense, "do not time the dense twin of a routed model");
  tr->add_flag("--no-peak", o->no_peak, "do not measure the GEMM peak");
  tr->add_flag("--json", o->json_out, "print JSON");
  tr->add_option("--families", o->families,
                 "time these families of the shape side by side with dense: comma list of mod, moe, mode_staged, mode_integrated "
                 "(routing from --routing/--capacity, default every_other 0.125; experts from --n-experts/--d-expert/--moe-top-k/"
                 "--capacity-factor/--n-noop, default 8 experts of d_ff, top-1, capacity factor 1.25, integrated: 8 no-op)");
  o->flags.add_to(*tr);
  tr->footer("Default shape: D=512 L=8 H=8 F=1408 V=256, 8 x 512 tokens. Example MoD comparison:\n"
             "  modlm bench train --vocab 8192 --routing every_other --capacity 0.125\n"
             "MoE and MoDE against dense in one run:\n"
             "  modlm bench train --vocab 8192 --families moe,mode_staged,mode_integrated");
  return {sub, [o]() -> int {
            json base{{"vocab_size", 256}, {"d_model", 512}, {"n_layers", 8}, {"n_heads", 8}, {"d_ff", 1408}, {"tokenizer", "bytes"}};
            ModelFlags flags = o->flags;
            if (!o->families.empty()) {
              // The families' routing and experts: the flags given, defaults for the rest.
              if (!flags.routing) flags.routing = "every_other";
              if (!flags.n_experts) flags.n_experts = 8;
              if (!flags.d_expert) flags.d_expert = flags.d_ff.value_or(1408);
              if (!flags.capacity_factor) flags.capacity_factor = 1.25;
            }
            ModelConfig cfg = flags.apply(base, "flags");
            if (o->batch < 1 || o->seq_len < 1 || o->steps < 1 || o->warmup < 0) throw usage_error("--batch, --seq-len, --steps must be >= 1");
            if (o->seq_len > cfg.max_seq_len) throw usage_error("--seq-len exceeds max_seq_len");
            const int B = o->batch, T = o->seq_len, n = B * T;
            json out{{"batch", B}, {"seq_len", T}, {"blas", ops::blas_kernels()}, {"config", cfg.to_json()}};
            if (!o->json_out) std::printf("matrix products: %s\n", out["blas"].get<std::string>().c_str());
            auto report = [&](const std::string& name_s, const ModelConfig& c) {
              const char* name = name_s.c_str();
              StepTiming st = time_steps(c, B, T, o->steps, o->warmup);
              json j{{"step_seconds", st.median_s}, {"step_seconds_min", st.min_s}, {"step_cpu_seconds", st.cpu_s}, {"train_flops_per_step", st.flops},
                     {"train_flops_executed_per_step", st.flops_executed},
                     {"tokens_per_second", n / st.median_s}, {"gflops", st.flops / st.median_s / 1e9}};
              if (!o->json_out)
                std::printf("%-16s step %.3f s (min %.3f, cpu %.3f)  %.0f tok/s  %.1f GFLOP/s  (%.3f TFLOP per step)\n", name,
                            st.median_s, st.min_s, st.cpu_s, n / st.median_s, st.flops / st.median_s / 1e9, st.flops / 1e12);
              out[name] = j;
              return st;
            };
            if (!o->families.empty()) {
              // Each family of the shape against dense (timed first), in one run.
              std::vector<std::string> fams = parse_families(o->families, "--families");
              fams.erase(std::remove(fams.begin(), fams.end(), "dense"), fams.end());
              const RoutingConfig routing = cfg.routing;
              const MoeConfig moe = cfg.moe;
              std::vector<std::pair<std::string, ModelConfig>> models;
              for (const auto& f : fams) {
                try {
                  models.push_back({f, family_config(cfg, f, routing, moe)});
                } catch (const Error& e) {
                  throw usage_error(std::string("--families: ") + e.what());
                }
              }
              StepTiming d = report("dense", dense_twin(cfg));
              json ratios = json::object();
              for (const auto& [f, c] : models) {
                StepTiming m = report(f.c_str(), c);
                const double time_ratio = m.median_s / d.median_s, flop_ratio = (double)m.flops / d.flops, cpu_ratio = m.cpu_s / d.cpu_s;
                // An MoE's analytic count is the capacity bound; with a random router some choices
                // are dropped (or go to no-op experts), so the executed count is lower.
                const double exec_ratio = (double)m.flops_executed / d.flops_executed;
                ratios[f] = {{"time_ratio", time_ratio}, {"cpu_time_ratio", cpu_ratio}, {"flop_ratio", flop_ratio},
                             {"executed_flop_ratio", exec_ratio}};
                out[f]["config"] = c.to_json();
              }
              out["ratios"] = ratios;
              if (!o->json_out) {
                std::printf("\nagainst dense (same run):      time   cpu time   FLOPs (analytic, executed)   time/FLOP (analytic, executed)\n");
                for (const auto& [f, c] : models) {
                  const json& r = ratios[f];
                  std::printf("  %-26s %7.3f %9.3f %9.3f %9.3f %17.2f %9.2f\n", family_label(f).c_str(), r["time_ratio"].get<double>(),
                              r["cpu_time_ratio"].get<double>(), r["flop_ratio"].get<double>(), r["executed_flop_ratio"].get<double>(),
                              r["time_ratio"].get<double>() / r["flop_ratio"].get<double>(),
                              r["time_ratio"].get<double>() / r["executed_flop_ratio"].get<double>());
                }
              }
            } else {
              const bool twin = cfg.n_routed() || cfg.n_moe();
              const std::string kind = model_kind(cfg);
              StepTiming m = report(kind, cfg);
              if (twin && !o->no_dense) {
                StepTiming d = report("dense", dense_twin(cfg));
                double time_ratio = m.median_s / d.median_s, flop_ratio = (double)m.flops / d.flops;
                out["time_ratio"] = time_ratio;
                out["cpu_time_ratio"] = m.cpu_s / d.cpu_s;
                out["flop_ratio"] = flop_ratio;
                if (!o->json_out)
                  std::printf("%s / dense: time %.3f, FLOPs %.3f (time/FLOP ratio %.2f)\n", kind.c_str(), time_ratio, flop_ratio, time_ratio / flop_ratio);
              }
            }
            if (!o->no_peak) {
              const int D = cfg.d_model, F = cfg.d_ff;
              struct Shape {
                const char* name;
                bool ta, tb;
                int M, N, K;
              };
              std::vector<Shape> shapes = {{"qkv fwd   x W^T [n,D]x[3D,D]^T", false, true, n, 3 * D, D},
                                           {"w13 fwd   x W^T [n,D]x[2F,D]^T", false, true, n, 2 * F, D},
                                           {"w2 fwd    g W^T [n,F]x[D,F]^T", false, true, n, D, F},
                                           {"w13 dX    dY W  [n,2F]x[2F,D]", false, false, n, D, 2 * F},
                                           {"w13 dW    dY^T X [2F,n]x[n,D]", true, false, 2 * F, D, n}};
              json peaks = json::array();
              double best = 0;
              for (const auto& s : shapes) {
                double g = gemm_gflops(s.ta, s.tb, s.M, s.N, s.K, 5);
                best = std::max(best, g);
                peaks.push_back({{"shape", s.name}, {"gflops", g}});
                if (!o->json_out) std::printf("  gemm %-34s %.1f GFLOP/s\n", s.name, g);
              }
              out["gemm_peak"] = peaks;
              out["gemm_peak_best"] = best;
            }
            if (o->json_out) std::printf("%s\n", out.dump().c_str());
            return 0;
          }};
}

}  // namespace modlm::cli
