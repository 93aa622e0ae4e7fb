// A GoogleTest fixture that gives each test a fresh directory of its own, removed afterwards.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

namespace modlm::testing {

// Removes `dir` (and what is in it) when the test process exits normally: ctest runs each test
// as its own process, so the folders a test makes outside a TempDirTest do not pile up in /tmp
// run after run (they were ~60 MB a suite run). A crash leaves them for a look.
inline void remove_at_exit(const std::filesystem::path& dir) {
  struct Folders {
    std::vector<std::filesystem::path> list;
    ~Folders() {
      for (const auto& d : list) {
        std::error_code ec;
        std::filesystem::permissions(d, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
        std::filesystem::remove_all(d, ec);
      }
    }
  };
  static Folders folders;
  folders.list.push_back(dir);
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("modlm_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    // A test may have taken permissions away (unreadable or unwritable files): give them back first.
    std::error_code ec;
    std::filesystem::permissions(dir_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

}  // namespace modlm::testing
