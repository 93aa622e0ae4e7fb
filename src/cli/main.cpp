// `modlm`: one binary, subcommands, `--help` on each.
#include <omp.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <vector>

#include "cli/commands.h"
#include "ops/gemm.h"
#include "util/error.h"

int main(int argc, char** argv) {
  // OpenMP threads that spin at barriers collapse when another process takes a core: measured
  // here (S decode, batch 1, 2 threads, `yes` on one core) 5-8 tok/s with libgomp's default spin
  // against 264 quiet; with GOMP_SPINCOUNT=3000 the quiet speed is unchanged (268) and the busy
  // one 83 (docs/performance.md). libgomp reads the setting when it loads, before main, so when
  // the user set neither it nor OMP_WAIT_POLICY, modlm sets it and re-executes itself once.
  bool reexec = false;
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    setenv("GOMP_SPINCOUNT", "3000", 1);
    reexec = true;
  }
  // OpenBLAS also picks its kernels when it loads; where it took this CPU for one older than
  // AVX2 (a CPU newer than the library: ops::blas_core_to_pick), and the user chose none, the
  // re-executed process asks for the kernels the CPU runs (S training here 358 -> 1568 tok/s).
  if (modlm::ops::set_blas_core_for_reexec()) reexec = true;
  if (reexec) execv("/proc/self/exe", argv);  // on failure, go on with the defaults
  // A write past a file-size limit (ulimit -f) fails with EFBIG, reported as an I/O error (exit 4)
  // with the previous checkpoint intact, instead of killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"modlm: train, evaluate and run Mixture-of-Depths transformer language models on a CPU.\n"
               "Run `modlm <command> --help` for a command's flags. Exit codes: 0 ok, 1 failure, 2 usage,\n"
               "3 invalid input (file or value), 4 I/O, 130 interrupted."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "modlm 0.1.0");
  std::vector<modlm::cli::Command> commands = {
      modlm::cli::add_demo(app),
      modlm::cli::add_sweep(app),
      modlm::cli::add_init(app),
      modlm::cli::add_eval(app),
      modlm::cli::add_flops(app),
      modlm::cli::add_train(app),
      modlm::cli::add_tokenizer(app),
      modlm::cli::add_bench(app),
      modlm::cli::add_generate(app),
      modlm::cli::add_serve(app),
      modlm::cli::add_import(app),
      modlm::cli::add_export(app),
      modlm::cli::add_convert(app),
      modlm::cli::add_quantize(app),
  };
  commands.insert(commands.begin(), modlm::cli::add_bench_generate(app));  // before `bench`, whose child it is
  commands.insert(commands.begin(), modlm::cli::add_bench_serve(app));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return modlm::kExitUsage;
  }
  try {
    for (auto& c : commands)
      if (c.sub->parsed()) return c.run();
    return modlm::kExitUsage;
  } catch (const modlm::Error& e) {
    std::fprintf(stderr, "modlm: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "modlm: error: out of memory\n");
    return modlm::kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "modlm: internal error: %s\n", e.what());
    return modlm::kExitFailure;
  }
}
