#include "demo/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

namespace modlm::demo {

std::string xml_escape(std::string_view s) {
  std::string o;
  o.reserve(s.size() + 8);
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default:
        // Control characters other than tab/newline are not allowed in XML 1.0.
        if ((unsigned char)c < 0x20 && c != '\t' && c != '\n' && c != '\r') o += "\xEF\xBF\xBD";
        else o += c;
    }
  }
  return o;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  return nlohmann::json(v).dump();
}

std::string fmt_fixed(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

std::string fmt_si(double v, int digits) {
  if (!std::isfinite(v)) return "–";
  static const char* pre[] = {"", "k", "M", "G", "T", "P", "E"};
  double a = std::fabs(v);
  int i = 0;
  while (a >= 1000 && i < 6) a /= 1000, v /= 1000, ++i;
  char b[64];
  int dec = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  dec = std::max(0, std::min(dec, digits - 1));
  std::snprintf(b, sizeof b, "%.*f", dec, v);
  std::string s = b;
  // "2.00" -> "2", "2.50" -> "2.5"
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (*pre[i]) s += std::string("\u2009") + pre[i];  // thin space
  return s;
}

std::string fmt_seconds(double s) {
  if (!std::isfinite(s)) return "–";
  char b[64];
  if (s < 10) std::snprintf(b, sizeof b, "%.1f s", s);
  else if (s < 60) std::snprintf(b, sizeof b, "%.0f s", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%d:%02d", (int)(s / 60), (int)std::fmod(s, 60));
  else std::snprintf(b, sizeof b, "%d:%02d:%02d", (int)(s / 3600), (int)std::fmod(s / 60, 60), (int)std::fmod(s, 60));
  return b;
}

std::string fmt_bytes(double v) {
  if (!std::isfinite(v)) return "–";
  static const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (v >= 1024 && i < 4) v /= 1024, ++i;
  char b[64];
  std::snprintf(b, sizeof b, i == 0 ? "%.0f %s" : v >= 100 ? "%.0f %s" : "%.1f %s", v, u[i]);
  return b;
}

std::vector<double> nice_ticks(double lo, double hi, int n) {
  std::vector<double> t;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  double raw = (hi - lo) / std::max(1, n);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  double start = std::ceil(lo / step - 1e-9) * step;
  for (double v = start; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::vector<double> time_ticks(double lo, double hi, int n) {
  if (!(hi > lo) || hi - lo < 90) return nice_ticks(lo, hi, n);
  const double raw = (hi - lo) / std::max(1, n);
  double step = 30;
  for (double s : {30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0})
    if (s >= raw) {
      step = s;
      break;
    }
  if (raw > 14400) step = std::ceil(raw / 3600) * 3600;
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) t.push_back(v);
  return t;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> t;
  if (!(lo > 0) || !(hi > lo)) return {lo};
  int a = (int)std::floor(std::log10(lo)), b = (int)std::ceil(std::log10(hi));
  std::vector<double> mult = {1};
  if (b - a <= 1) mult = {1, 2, 5};
  if (b - a <= 0) mult = {1, 1.5, 2, 3, 5, 7};
  for (int e = a; e <= b; ++e)
    for (double m : mult) {
      double v = m * std::pow(10.0, e);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
    }
  if (t.size() < 2) {
    // A range inside one decade with no tick: fall back to linear ticks.
    return nice_ticks(lo, hi, 4);
  }
  return t;
}

namespace {

std::string fmt_tick(double v, AxisFormat f) {
  switch (f) {
    case AxisFormat::SI: return fmt_si(v, 3);
    case AxisFormat::Seconds: {
      if (v < 60) return fmt_fixed(v, v < 10 && v != std::floor(v) ? 1 : 0) + " s";
      char b[32];
      std::snprintf(b, sizeof b, "%d:%02d", (int)(v / 60), (int)std::lround(std::fmod(v, 60)) % 60);
      return b;
    }
    default: {
      char b[32];
      double a = std::fabs(v);
      if (a != 0 && (a < 1e-3 || a >= 1e6)) std::snprintf(b, sizeof b, "%.3g", v);
      else std::snprintf(b, sizeof b, "%.6g", v);
      return b;
    }
  }
}

std::string px(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

struct Scale {
  double lo, hi, p0, p1;
  bool log;
  double operator()(double v) const {
    double t = log ? (std::log(v) - std::log(lo)) / (std::log(hi) - std::log(lo)) : (v - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
};

void data_range(const LineChart& c, bool xaxis, double& lo, double& hi) {
  lo = std::numeric_limits<double>::infinity(), hi = -lo;
  const Axis& ax = xaxis ? c.x : c.y;
  for (const auto& s : c.series)
    for (double v : xaxis ? s.x : s.y)
      if (std::isfinite(v) && (!ax.log || v > 0)) lo = std::min(lo, v), hi = std::max(hi, v);
  for (const auto& r : c.refs)
    if (r.vertical == xaxis && std::isfinite(r.value)) lo = std::min(lo, r.value), hi = std::max(hi, r.value);
  if (ax.lo < ax.hi) lo = ax.lo, hi = ax.hi;
  if (!std::isfinite(lo)) lo = ax.log ? 1 : 0, hi = ax.log ? 10 : 1;
  if (hi <= lo) {
    double d = ax.log ? lo * 0.5 : (std::fabs(lo) > 0 ? std::fabs(lo) * 0.1 : 1);
    lo = ax.log ? lo - d : lo - d, hi = hi + d;
    if (ax.log && lo <= 0) lo = hi / 10;
  }
}

}  // namespace

static std::string dash_attr(const Series& s) {
  const std::string d = !s.dash.empty() ? s.dash : s.dashed ? "6 4" : "";
  return d.empty() ? "" : " stroke-dasharray=\"" + xml_escape(d) + "\"";
}

std::string render_line_chart(const LineChart& c) {
  int nleg = 0;
  for (const auto& s : c.series) nleg += !s.label.empty();
  // Legend entries flow in rows above the plot, wrapping at the chart's width.
  const double legend_x0 = 62, legend_right = c.width - 18;
  auto legend_width = [](const Series& s) { return 30 + 6.9 * (double)s.label.size() + 22; };
  int legend_rows = nleg ? 1 : 0;
  {
    double x = legend_x0;
    for (const auto& s : c.series) {
      if (s.label.empty()) continue;
      if (x > legend_x0 && x + legend_width(s) - 22 > legend_right) ++legend_rows, x = legend_x0;
      x += legend_width(s);
    }
  }
  const double W = c.width, H = c.height, ml = 62, mr = 18, mt = nleg ? 20 + 16 * legend_rows : 14, mb = 46;
  double xlo, xhi, ylo, yhi;
  data_range(c, true, xlo, xhi);
  data_range(c, false, ylo, yhi);
  // Pad the y range by 6 % (log: in log space) unless fixed.
  if (!(c.y.lo < c.y.hi)) {
    if (c.y.log) {
      double a = std::log(ylo), b = std::log(yhi), d = (b - a) * 0.06;
      ylo = std::exp(a - d), yhi = std::exp(b + d);
    } else {
      double d = (yhi - ylo) * 0.06;
      ylo -= d, yhi += d;
    }
  }
  if (!(c.x.lo < c.x.hi) && c.x.log) {
    double a = std::log(xlo), b = std::log(xhi), d = (b - a) * 0.05;
    xlo = std::exp(a - d), xhi = std::exp(b + d);
  }
  Scale sx{xlo, xhi, ml, W - mr, c.x.log}, sy{ylo, yhi, H - mb, mt, c.y.log};
  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"" + xml_escape(c.id) + "\" viewBox=\"0 0 " +
       px(W) + " " + px(H) + "\" width=\"" + px(W) + "\" height=\"" + px(H) + "\" role=\"img\">\n";
  // Plot background and grid.
  o += "<rect x=\"" + px(ml) + "\" y=\"" + px(mt) + "\" width=\"" + px(W - ml - mr) + "\" height=\"" +
       px(H - mt - mb) + "\" fill=\"#fbfbfd\" stroke=\"none\"/>\n";
  std::vector<double> xt = c.x.log ? log_ticks(xlo, xhi) : c.x.format == AxisFormat::Seconds ? time_ticks(xlo, xhi, 6) : nice_ticks(xlo, xhi, 6);
  std::vector<double> yt = c.y.log ? log_ticks(ylo, yhi) : nice_ticks(ylo, yhi, 5);
  o += "<g class=\"grid\" stroke=\"#e3e5ea\" stroke-width=\"1\">\n";
  for (double v : xt)
    if (v >= xlo && v <= xhi) o += "<line x1=\"" + px(sx(v)) + "\" x2=\"" + px(sx(v)) + "\" y1=\"" + px(mt) + "\" y2=\"" + px(H - mb) + "\"/>\n";
  for (double v : yt)
    if (v >= ylo && v <= yhi) o += "<line x1=\"" + px(ml) + "\" x2=\"" + px(W - mr) + "\" y1=\"" + px(sy(v)) + "\" y2=\"" + px(sy(v)) + "\"/>\n";
  o += "</g>\n";
  // Axes, ticks, labels.
  o += "<g class=\"axis\" font-size=\"11\" fill=\"#555\">\n";
  o += "<line x1=\"" + px(ml) + "\" x2=\"" + px(W - mr) + "\" y1=\"" + px(H - mb) + "\" y2=\"" + px(H - mb) + "\" stroke=\"#9aa0aa\"/>\n";
  o += "<line x1=\"" + px(ml) + "\" x2=\"" + px(ml) + "\" y1=\"" + px(mt) + "\" y2=\"" + px(H - mb) + "\" stroke=\"#9aa0aa\"/>\n";
  for (double v : xt)
    if (v >= xlo && v <= xhi)
      o += "<text x=\"" + px(sx(v)) + "\" y=\"" + px(H - mb + 16) + "\" text-anchor=\"middle\">" + xml_escape(fmt_tick(v, c.x.format)) + "</text>\n";
  for (double v : yt)
    if (v >= ylo && v <= yhi)
      o += "<text x=\"" + px(ml - 7) + "\" y=\"" + px(sy(v) + 4) + "\" text-anchor=\"end\">" + xml_escape(fmt_tick(v, c.y.format)) + "</text>\n";
  o += "<text x=\"" + px((ml + W - mr) / 2) + "\" y=\"" + px(H - 8) + "\" text-anchor=\"middle\" font-size=\"12\" fill=\"#333\">" +
       xml_escape(c.x.label) + "</text>\n";
  o += "<text transform=\"translate(15," + px((mt + H - mb) / 2) + ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\" fill=\"#333\">" +
       xml_escape(c.y.label) + "</text>\n";
  o += "</g>\n";
  // Reference lines.
  for (const auto& r : c.refs) {
    if (!std::isfinite(r.value)) continue;
    if (r.vertical) {
      if (r.value < xlo || r.value > xhi) continue;
      double X = sx(r.value);
      o += "<line class=\"ref\" x1=\"" + px(X) + "\" x2=\"" + px(X) + "\" y1=\"" + px(mt) + "\" y2=\"" + px(H - mb) + "\" stroke=\"" +
           r.color + "\" stroke-width=\"1.3\" stroke-dasharray=\"4 3\"/>\n";
      o += "<text x=\"" + px(X + 4) + "\" y=\"" + px(mt + 12) + "\" font-size=\"11\" fill=\"" + r.color + "\">" + xml_escape(r.label) + "</text>\n";
    } else {
      if (r.value < ylo || r.value > yhi) continue;
      double Y = sy(r.value);
      o += "<line class=\"ref\" x1=\"" + px(ml) + "\" x2=\"" + px(W - mr) + "\" y1=\"" + px(Y) + "\" y2=\"" + px(Y) + "\" stroke=\"" +
           r.color + "\" stroke-width=\"1.3\" stroke-dasharray=\"4 3\"/>\n";
      o += "<text x=\"" + px(ml + 6) + "\" y=\"" + px(Y - 5) + "\" font-size=\"11\" fill=\"" + r.color + "\">" + xml_escape(r.label) + "</text>\n";
    }
  }
  // Series.
  for (const auto& s : c.series) {
    std::string pts, dx, dy;
    std::vector<std::pair<double, double>> pp;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      if ((c.x.log && s.x[i] <= 0) || (c.y.log && s.y[i] <= 0)) continue;
      double X = sx(s.x[i]), Y = sy(s.y[i]);
      if (!pts.empty()) pts += ' ', dx += ' ', dy += ' ';
      pts += px(X) + "," + px(Y);
      dx += json_number(s.x[i]);
      dy += json_number(s.y[i]);
      pp.push_back({X, Y});
    }
    o += "<polyline data-series=\"" + xml_escape(s.key) + "\" data-x=\"" + dx + "\" data-y=\"" + dy + "\" points=\"" + pts +
         "\" fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"" + px(s.width) + "\" stroke-linejoin=\"round\" stroke-linecap=\"round\"" +
         dash_attr(s) + (s.opacity < 1 ? " stroke-opacity=\"" + px(s.opacity) + "\"" : "") + "/>\n";
    if (s.ring_min && !pp.empty()) {
      size_t best = 0;
      for (size_t i = 1; i < pp.size(); ++i)
        if (pp[i].second > pp[best].second) best = i;  // pixel y grows downwards
      o += "<circle class=\"best\" cx=\"" + px(pp[best].first) + "\" cy=\"" + px(pp[best].second) + "\" r=\"7\" fill=\"none\" stroke=\"" +
           s.color + "\" stroke-width=\"2\"/>\n";
    }
    if (s.markers) {
      o += "<g fill=\"" + s.color + "\" stroke=\"#fff\" stroke-width=\"1\">";
      for (size_t i = 0; i < pp.size(); ++i) o += "<circle cx=\"" + px(pp[i].first) + "\" cy=\"" + px(pp[i].second) + "\" r=\"3.2\"/>";
      o += "</g>\n";
    }
  }
  // Legend: rows above the plot, so it never hides a curve.
  if (nleg) {
    double x = legend_x0, y = 16;
    o += "<g class=\"legend\" font-size=\"12\" fill=\"#333\">\n";
    for (const auto& s : c.series) {
      if (s.label.empty()) continue;
      if (x > legend_x0 && x + legend_width(s) - 22 > legend_right) x = legend_x0, y += 16;
      o += "<line x1=\"" + px(x) + "\" x2=\"" + px(x + 24) + "\" y1=\"" + px(y - 4) + "\" y2=\"" + px(y - 4) + "\" stroke=\"" + s.color +
           "\" stroke-width=\"" + px(std::max(2.2, s.width)) + "\"" + dash_attr(s) + "/>";
      if (s.markers) o += "<circle cx=\"" + px(x + 12) + "\" cy=\"" + px(y - 4) + "\" r=\"3.2\" fill=\"" + s.color + "\" stroke=\"#fff\"/>";
      o += "<text x=\"" + px(x + 30) + "\" y=\"" + px(y) + "\">" + xml_escape(s.label) + "</text>\n";
      x += legend_width(s);
    }
    o += "</g>\n";
  }
  o += "</svg>\n";
  return o;
}

std::string render_histogram(const Histogram& h) {
  const double W = h.width, H = h.height, ml = 40, mr = 10, mt = 24, mb = 34;
  const size_t nb = h.edges.size() > 1 ? h.edges.size() - 1 : 0;
  double top = 0;
  for (size_t b = 0; b < nb; ++b) {
    double s = 0;
    for (const auto& st : h.stacks) s += b < st.counts.size() ? st.counts[b] : 0;
    top = std::max(top, s);
  }
  if (top <= 0) top = 1;
  std::vector<double> yt = nice_ticks(0, top, 3);
  if (!yt.empty() && yt.back() < top) yt.push_back(yt.size() > 1 ? yt.back() + (yt[1] - yt[0]) : top);
  const double ymax = yt.empty() ? top : std::max(top, yt.back());
  const double x0 = h.edges.empty() ? 0 : h.edges.front(), x1 = h.edges.empty() ? 1 : h.edges.back();
  Scale sx{x0, x1, ml, W - mr, false}, sy{0, ymax, H - mb, mt, false};
  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart hist\" id=\"" + xml_escape(h.id) + "\" viewBox=\"0 0 " + px(W) + " " +
       px(H) + "\" width=\"" + px(W) + "\" height=\"" + px(H) + "\" role=\"img\">\n";
  o += "<text x=\"" + px(ml) + "\" y=\"15\" font-size=\"12\" font-weight=\"600\" fill=\"#333\">" + xml_escape(h.title) + "</text>\n";
  o += "<g stroke=\"#e3e5ea\">";
  for (double v : yt) o += "<line x1=\"" + px(ml) + "\" x2=\"" + px(W - mr) + "\" y1=\"" + px(sy(v)) + "\" y2=\"" + px(sy(v)) + "\"/>";
  o += "</g>\n<g font-size=\"10\" fill=\"#666\">";
  for (double v : yt)
    o += "<text x=\"" + px(ml - 5) + "\" y=\"" + px(sy(v) + 3.5) + "\" text-anchor=\"end\">" + xml_escape(fmt_si(v, 2)) + "</text>";
  for (double v : nice_ticks(x0, x1, 4))
    o += "<text x=\"" + px(sx(v)) + "\" y=\"" + px(H - mb + 13) + "\" text-anchor=\"middle\">" + xml_escape(fmt_tick(v, AxisFormat::Number)) + "</text>";
  o += "<text x=\"" + px((ml + W - mr) / 2) + "\" y=\"" + px(H - 5) + "\" text-anchor=\"middle\" font-size=\"11\" fill=\"#444\">" +
       xml_escape(h.x_label) + "</text>";
  o += "</g>\n";
  for (size_t b = 0; b < nb; ++b) {
    double base = 0;
    const double X0 = sx(h.edges[b]) + 0.5, X1 = sx(h.edges[b + 1]) - 0.5;
    for (const auto& st : h.stacks) {
      double v = b < st.counts.size() ? st.counts[b] : 0;
      if (v > 0) {
        double Y0 = sy(base), Y1 = sy(base + v);
        o += "<rect data-stack=\"" + xml_escape(st.key) + "\" x=\"" + px(X0) + "\" y=\"" + px(Y1) + "\" width=\"" + px(std::max(0.5, X1 - X0)) +
             "\" height=\"" + px(std::max(0.0, Y0 - Y1)) + "\" fill=\"" + st.color + "\"><title>" + xml_escape(st.label) + " " +
             fmt_fixed(h.edges[b], 2) + "–" + fmt_fixed(h.edges[b + 1], 2) + ": " + json_number(v) + "</title></rect>";
      }
      base += v;
    }
  }
  o += "\n<line x1=\"" + px(ml) + "\" x2=\"" + px(W - mr) + "\" y1=\"" + px(H - mb) + "\" y2=\"" + px(H - mb) + "\" stroke=\"#9aa0aa\"/>\n";
  if (h.legend) {
    double x = W - mr - 4;
    std::string items;
    for (auto it = h.stacks.rbegin(); it != h.stacks.rend(); ++it) {
      double w = 6.0 * it->label.size() + 18;
      x -= w;
      items += "<rect x=\"" + px(x) + "\" y=\"7\" width=\"10\" height=\"10\" rx=\"2\" fill=\"" + it->color + "\"/><text x=\"" + px(x + 14) +
               "\" y=\"16\" font-size=\"10.5\" fill=\"#444\">" + xml_escape(it->label) + "</text>";
    }
    o += "<g>" + items + "</g>\n";
  }
  o += "</svg>\n";
  return o;
}

}  // namespace modlm::demo
