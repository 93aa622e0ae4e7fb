// Data-parallel training under mpirun (Open MPI, installed by scripts/setup.sh): -np 2 against
// one process, resume, MoD with a causal predictor, MoE, and a rank that dies. Skipped (with a
// message) where the binary was built without MPI or mpirun is missing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_helpers.h"
#include "io/safetensors.h"
#include "train/distributed.h"

using json = nlohmann::json;
using namespace modlm::testing;
namespace fs = std::filesystem;

namespace {

std::string mpirun(int np, const std::string& options = "") {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun --oversubscribe -np " + std::to_string(np) +
         " --mca btl self,vader -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive " + options + " " + MODLM_BINARY + " ";
}

bool have_mpi() { return modlm::dist::built_with_mpi() && std::system("command -v mpirun > /dev/null 2>&1") == 0; }

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Largest |a - b| / (|b| + 1e-3) over every tensor of two model files.
double max_rel_diff(const std::string& a, const std::string& b) {
  auto fa = modlm::io::SafetensorsFile::open(a), fb = modlm::io::SafetensorsFile::open(b);
  double worst = 0;
  EXPECT_EQ(fa.tensors().size(), fb.tensors().size());
  for (const auto& t : fa.tensors()) {
    auto x = fa.read_f32(t.name, t.shape), y = fb.read_f32(t.name, t.shape);
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs((double)x[i] - y[i]) / (std::fabs((double)y[i]) + 1e-3));
  }
  return worst;
}

std::vector<double> losses(const std::string& log) {
  std::vector<double> v;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) v.push_back(json::parse(line)["loss"].get<double>());
  return v;
}

// The modlm processes (the ranks) training into `run`: argv[0] is the binary, argv holds run.
std::vector<pid_t> rank_pids(const std::string& run) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = slurp(e.path().string() + "/cmdline");
    std::vector<std::string> argv;
    for (size_t a = 0; a < cmd.size();) {
      const size_t z = cmd.find('\0', a);
      argv.push_back(cmd.substr(a, z == std::string::npos ? std::string::npos : z - a));
      if (z == std::string::npos) break;
      a = z + 1;
    }
    if (argv.size() > 3 && argv[0] == MODLM_BINARY && argv[1] == "train" && std::find(argv.begin(), argv.end(), run) != argv.end())
      out.push_back(std::stoi(name));
  }
  std::sort(out.begin(), out.end());
  return out;
}

const std::string kShape = " --d-model 32 --n-layers 2 --n-heads 2 --d-ff 64 --vocab bytes --batch-size 4 --seq-len 32 --no-progress";

}  // namespace

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_mpi()) GTEST_SKIP() << "built without MPI or no mpirun: distributed training not tested here";
    dir_ = temp_dir("dist_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    ASSERT_TRUE(write_train_head(dir_ + "/train.txt", 80000));
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(Distributed, TwoRanksGiveOneProcessWeightsAndLossCurve) {
  // Same global batch and seed. Tolerance: the ranks' gradients are summed in another order
  // than one process sums its batch; after 8 AdamW steps the weights agree to ~1e-5 relative.
  for (const std::string& family : {std::string(""), std::string(" --routing every_other --capacity 0.25 --method stochastic"),
                                    std::string(" --routing every_other --capacity 0.25 --causal predictor"),
                                    std::string(" --grad-accum 2")}) {
    const std::string args = " --data " + dir_ + "/train.txt --steps 8 --log-every 1 --ckpt-every 0" + kShape + family;
    fs::remove_all(dir_ + "/one");
    fs::remove_all(dir_ + "/two");
    auto r1 = run_modlm("train --out " + dir_ + "/one" + args);
    ASSERT_EQ(r1.code, 0) << r1.out;
    auto r2 = run_modlm_raw(mpirun(2) + "train --out " + dir_ + "/two" + args + " 2>&1");
    ASSERT_EQ(r2.code, 0) << r2.out;
    const double diff = max_rel_diff(dir_ + "/one/ckpt-00000008/model.safetensors", dir_ + "/two/ckpt-00000008/model.safetensors");
    std::printf("-np 2 vs one process%s: max relative weight difference %.2e\n", family.c_str(), diff);
    EXPECT_LT(diff, 1e-4) << family;
    const auto l1 = losses(dir_ + "/one/log.jsonl"), l2 = losses(dir_ + "/two/log.jsonl");
    ASSERT_EQ(l1.size(), 8u);
    ASSERT_EQ(l2.size(), 8u) << "rank 0 alone writes the log";
    for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l1[i], l2[i], 1e-4 * std::fabs(l1[i])) << family << " step " << i + 1;
    if (family.empty()) {
      // The gradient all-reduce overlapped with the backward pass (the default) and done after it
      // (MODLM_DP_OVERLAP=0) sum the same numbers: the same weights, bit for bit.
      fs::remove_all(dir_ + "/two_after");
      auto r3 = run_modlm_raw(mpirun(2, "-x MODLM_DP_OVERLAP=0") + "train --out " + dir_ + "/two_after" + args + " 2>&1");
      ASSERT_EQ(r3.code, 0) << r3.out;
      EXPECT_TRUE(slurp(dir_ + "/two/ckpt-00000008/model.safetensors") == slurp(dir_ + "/two_after/ckpt-00000008/model.safetensors"));
    }
  }
}

TEST_F(Distributed, ResumeUnderTwoRanksEqualsAnUninterruptedRun) {
  const std::string args = " --data " + dir_ + "/train.txt --steps 8 --log-every 1 --ckpt-every 4" + kShape +
                           " --routing every_other --capacity 0.25 --causal predictor";
  auto a = run_modlm_raw(mpirun(2) + "train --out " + dir_ + "/a" + args + " 2>&1");
  ASSERT_EQ(a.code, 0) << a.out;
  auto b = run_modlm_raw(mpirun(2) + "train --out " + dir_ + "/b --stop-at 4" + args + " 2>&1");
  ASSERT_EQ(b.code, 0) << b.out;
  b = run_modlm_raw(mpirun(2) + "train --resume " + dir_ + "/b 2>&1");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_TRUE(slurp(dir_ + "/a/ckpt-00000008/model.safetensors") == slurp(dir_ + "/b/ckpt-00000008/model.safetensors"));
  EXPECT_TRUE(slurp(dir_ + "/a/ckpt-00000008/train_state.safetensors") == slurp(dir_ + "/b/ckpt-00000008/train_state.safetensors"));
}

TEST_F(Distributed, MoeTrainsAndBadSplitsAreRefused) {
  const std::string args = " --data " + dir_ + "/train.txt --steps 4 --ckpt-every 0" + kShape;
  auto r = run_modlm_raw(mpirun(2) + "train --out " + dir_ + "/moe" + args + " --moe-layers all --n-experts 4 --d-expert 16 --json 2>&1");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto l = losses(dir_ + "/moe/log.jsonl");
  ASSERT_FALSE(l.empty());
  EXPECT_TRUE(std::isfinite(l.back()));
  // A batch that does not split over the ranks: a usage error, exit 2, nothing trained.
  r = run_modlm_raw(mpirun(3) + "train --out " + dir_ + "/odd" + args + " 2>&1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("does not split over 3"), std::string::npos) << r.out;
}

TEST_F(Distributed, ARankThatDiesEndsTheJob) {
  // A long run; one rank is killed; mpirun must end the job (non-zero) instead of hanging, and
  // the last checkpoint stays loadable.
  const std::string run = dir_ + "/long";
  const std::string cmd = mpirun(2) + "train --out " + run + " --data " + dir_ + "/train.txt --steps 100000 --ckpt-every 5" + kShape +
                          " > " + dir_ + "/mpirun.log 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Wait for a checkpoint, then kill one rank (the newest modlm train of this run).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(run + "/latest") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(fs::exists(run + "/latest"));
  const std::vector<pid_t> ranks = rank_pids(run);
  ASSERT_EQ(ranks.size(), 2u);
  kill(ranks.back(), SIGKILL);
  int st = 0;
  bool ended = false;
  while (std::chrono::steady_clock::now() < deadline + std::chrono::seconds(60)) {
    if (waitpid(pid, &st, WNOHANG) == pid) {
      ended = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!ended) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  ASSERT_TRUE(ended) << "mpirun hung after a rank died";
  EXPECT_FALSE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(dir_ + "/mpirun.log");
  for (pid_t p : rank_pids(run)) kill(p, SIGKILL);
  std::string name = slurp(run + "/latest");
  name.pop_back();
  EXPECT_EQ(run_modlm("eval " + run + "/" + name + " --data " + dir_ + "/train.txt --seq-len 32 --max-windows 1").code, 0);
}

TEST(DistributedCli, OneProcessNeedsNoMpi) {
  // Not under mpirun: no MPI is started (rank 0 of 1).
  EXPECT_FALSE(modlm::dist::enabled());
  EXPECT_EQ(modlm::dist::size(), 1);
  EXPECT_TRUE(modlm::dist::is_root());
}
