#include "util/profile.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

namespace modlm::profile {

namespace {
std::mutex g_mu;
std::map<std::string, double>& table() {
  static std::map<std::string, double> t;
  return t;
}
bool& flag() {
  static bool on = std::getenv("MODLM_PROFILE") != nullptr;
  return on;
}
}  // namespace

bool enabled() { return flag(); }
void enable(bool on) { flag() = on; }

void add(const char* region, double s) {
  std::lock_guard<std::mutex> lock(g_mu);
  table()[region] += s;
}

std::vector<std::pair<std::string, double>> totals() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<std::pair<std::string, double>> v(table().begin(), table().end());
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second > b.second; });
  return v;
}

void reset() {
  std::lock_guard<std::mutex> lock(g_mu);
  table().clear();
}

}  // namespace modlm::profile
