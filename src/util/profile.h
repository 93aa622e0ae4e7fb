// Wall-clock per named region, on when MODLM_PROFILE is set (or enable() is called): the
// cheapest way to see where a step's time goes. Off, a region costs one branch.
#pragma once
#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace modlm::profile {

bool enabled();
void enable(bool on);
void add(const char* region, double seconds);
// (region, seconds) sorted by time, and a reset.
std::vector<std::pair<std::string, double>> totals();
void reset();

class Scope {
 public:
  explicit Scope(const char* region) : region_(enabled() ? region : nullptr) {
    if (region_) t0_ = std::chrono::steady_clock::now();
  }
  ~Scope() {
    if (region_) add(region_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
  }

 private:
  const char* region_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace modlm::profile
