// A one-line progress bar on stderr with rate and ETA. Redraws at most ~10 times a second, only
// when stderr is a terminal (logs stay clean); finish() leaves a final line either way.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

namespace modlm {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "it", bool enabled = true)
      : label_(std::move(label)), unit_(std::move(unit)), total_(total),
        tty_(enabled && isatty(fileno(stderr))), start_(clock::now()), last_(start_) {}

  // `done` units finished; `extra` is appended (e.g. "loss 3.21").
  void update(int64_t done, const std::string& extra = "") {
    done_ = done;
    auto now = clock::now();
    if (!tty_ || (now - last_ < std::chrono::milliseconds(100) && done < total_)) return;
    last_ = now;
    draw(extra, false);
  }
  void finish(const std::string& extra = "") {
    if (tty_) draw(extra, true);
  }
  double elapsed() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

 private:
  using clock = std::chrono::steady_clock;
  static std::string hms(double s) {
    if (!(s >= 0) || s > 1e7) return "--:--";
    int t = (int)(s + 0.5);
    char b[32];
    if (t >= 3600) std::snprintf(b, sizeof b, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else std::snprintf(b, sizeof b, "%02d:%02d", t / 60, t % 60);
    return b;
  }
  void draw(const std::string& extra, bool final) {
    double el = elapsed(), rate = el > 0 ? done_ / el : 0;
    double frac = total_ > 0 ? (double)done_ / total_ : 0;
    const int width = 24;
    int fill = (int)(frac * width);
    std::string bar(fill, '#');
    bar += std::string(width - fill, '.');
    double eta = rate > 0 ? (total_ - done_) / rate : -1;
    std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s  %.1f %s/s  %s<%s  %s%s", label_.c_str(), bar.c_str(),
                 (long long)done_, (long long)total_, unit_.c_str(), rate, unit_.c_str(), hms(el).c_str(),
                 final ? "00:00" : hms(eta).c_str(), extra.c_str(), final ? "\n" : "");
    std::fflush(stderr);
  }
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  bool tty_;
  clock::time_point start_, last_;
};

}  // namespace modlm
