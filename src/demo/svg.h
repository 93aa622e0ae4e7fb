// Small, dependency-free SVG charts for the demo and sweep reports: line charts with nice ticks
// (linear or log axes), legends and reference lines, stacked histograms, and number formatting.
// Everything is XHTML-compatible markup (well-formed XML): the reports can be parsed as XML.
//
// Every plotted line is one <polyline data-series="KEY" data-x="..." data-y="..." points="...">
// whose data-x / data-y hold the plotted values exactly as JSON numbers, so a test can compare
// them with summary.json / sweep.jsonl.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace modlm::demo {

// &, <, >, " and ' escaped for text and attribute values.
std::string xml_escape(std::string_view s);
// A double as JSON writes it (shortest round trip); "null" when not finite.
std::string json_number(double v);

// Human formats: "1.23 T" (FLOPs), "4.5 M" (parameters), "2:05" / "45 s" (seconds), bytes.
std::string fmt_si(double v, int digits = 3);
std::string fmt_seconds(double s);
std::string fmt_bytes(double b);
std::string fmt_fixed(double v, int decimals);

enum class AxisFormat { Number, SI, Seconds };

struct Axis {
  std::string label;
  bool log = false;
  AxisFormat format = AxisFormat::Number;
  // Optional fixed range (used when lo < hi).
  double lo = 0, hi = 0;
};

struct Series {
  std::string key;    // data-series
  std::string label;  // legend text ("" = not in the legend)
  std::string color = "#333";
  std::vector<double> x, y;
  bool dashed = false;        // "6 4" dashes, unless dash says otherwise
  std::string dash;           // an SVG stroke-dasharray (e.g. "2 3"); wins over dashed
  bool markers = true;
  double width = 2.2;
  double opacity = 1.0;
  bool ring_min = false;  // a ring around the lowest point (e.g. the best size of an iso-FLOP curve)
};

struct RefLine {
  bool vertical = false;
  double value = 0;
  std::string label, color = "#888";
};

struct LineChart {
  std::string id;
  Axis x, y;
  std::vector<Series> series;
  std::vector<RefLine> refs;
  int width = 620, height = 360;
};

std::string render_line_chart(const LineChart& c);

// Stacked histogram: per bin, counts of several stacks (e.g. processed / skipped).
struct HistStack {
  std::string key, label, color;
  std::vector<double> counts;
};
struct Histogram {
  std::string id, title;
  std::vector<double> edges;  // bins + 1 edges
  std::vector<HistStack> stacks;
  std::string x_label;
  int width = 300, height = 190;
  bool legend = false;
};
std::string render_histogram(const Histogram& h);

// "Nice" tick values covering [lo, hi] (about n of them); for log axes, powers of ten (and 2, 5
// when the range is narrow).
std::vector<double> nice_ticks(double lo, double hi, int n);
std::vector<double> log_ticks(double lo, double hi);
// Ticks for a seconds axis: whole 30 s, minutes, 2, 5, 10 ... minutes once the range passes 90 s.
std::vector<double> time_ticks(double lo, double hi, int n);

}  // namespace modlm::demo
