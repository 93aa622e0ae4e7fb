// One function per `modlm` subcommand; each registers its flags and returns the code to exit with.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace modlm::cli {

// A subcommand's action, run after parsing succeeds. Throws modlm::Error for user errors.
struct Command {
  CLI::App* sub = nullptr;
  std::function<int()> run;
};

Command add_demo(CLI::App& app);   // the main job: dense vs MoD at equal FLOPs, report.html
Command add_sweep(CLI::App& app);  // iso-FLOP sweep, sweep.html
Command add_init(CLI::App& app);
Command add_eval(CLI::App& app);
Command add_flops(CLI::App& app);
Command add_train(CLI::App& app);
Command add_tokenizer(CLI::App& app);
Command add_bench(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_serve(CLI::App& app);     // OpenAI-compatible HTTP server
Command add_import(CLI::App& app);    // `import hf`
Command add_export(CLI::App& app);    // `export hf`
Command add_convert(CLI::App& app);   // dense -> MoD
Command add_quantize(CLI::App& app);  // bf16 / f16 / q8 folders
Command add_bench_generate(CLI::App& app);  // `bench generate`: call after add_bench
Command add_bench_serve(CLI::App& app);     // `bench serve`: call after add_bench

}  // namespace modlm::cli
