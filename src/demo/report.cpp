#include "demo/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <tuple>
#include <set>

#include "demo/svg.h"
#include "model/families.h"

namespace modlm::demo {

namespace {

const char* kDense = "#3569b2";  // blue
const char* kMod = "#e4761b";    // orange
const char* kPalette[] = {"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2", "#edc948", "#9c755f"};

std::string esc(const std::string& s) { return xml_escape(s); }

double num(const json& j, const char* k, double dflt = std::nan("")) {
  return j.is_object() && j.contains(k) && j[k].is_number() ? j[k].get<double>() : dflt;
}

std::vector<double> vec(const json& a) {
  std::vector<double> v;
  if (a.is_array())
    for (const auto& x : a) v.push_back(x.is_number() ? x.get<double>() : std::nan(""));
  return v;
}

std::string css() {
  return R"CSS(
:root { --ink: #1f2430; --muted: #5d6472; --line: #e3e5ea; --dense: #3569b2; --mod: #e4761b; --violet: #5b2bb5; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: var(--ink);
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans", "DejaVu Sans", Arial, sans-serif;
  font-size: 15px; line-height: 1.5; }
main { max-width: 1260px; margin: 0 auto; padding: 34px 28px 64px; }
header h1 { font-size: 30px; line-height: 1.2; margin: 0 0 6px; letter-spacing: -0.01em; }
header p { margin: 0; color: var(--muted); }
.tag { display: inline-block; font-size: 12px; font-weight: 600; letter-spacing: .04em; text-transform: uppercase;
  color: var(--violet); background: #efe9fb; border-radius: 999px; padding: 2px 10px; margin-bottom: 10px; }
.verdict { font-size: 17px; margin: 18px 0 0; max-width: 70em; }
.verdict b.dense, .verdict b.mod { font-weight: 650; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 14px; margin-top: 20px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 12px; padding: 14px 16px; }
.card .k { font-size: 12.5px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 27px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums; }
.card .s { font-size: 13px; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 14px; padding: 20px 24px; margin-top: 18px; }
section h2 { font-size: 19px; margin: 0 0 4px; }
section p.lead { margin: 0 0 12px; color: var(--muted); font-size: 14px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.grid2 > section { margin-top: 0; }
.row { margin-top: 18px; }
figure { margin: 0; }
svg.chart { max-width: 100%; height: auto; display: block; }
svg text { font-family: inherit; }
table.cmp { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 14.5px; }
table.cmp th, table.cmp td { padding: 7px 12px; border-bottom: 1px solid #eef0f3; text-align: right; }
table.cmp th:first-child, table.cmp td:first-child { text-align: left; color: #363c48; white-space: nowrap; }
table.cmp thead th { font-size: 12.5px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); border-bottom: 2px solid var(--line); }
table.cmp tbody tr:hover { background: #fafbfc; }
.dense { color: var(--dense); } .mod { color: var(--mod); }
.good { color: #1b7f3b; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.legend-row { display: flex; gap: 18px; flex-wrap: wrap; font-size: 13px; color: var(--muted); margin: 6px 0 10px; }
.sw { display: inline-block; width: 14px; height: 12px; border-radius: 3px; vertical-align: -1px; margin-right: 6px; }
.passage { font-family: Georgia, "Times New Roman", serif; font-size: 15.5px; line-height: 1.9; margin-top: 14px; }
.passage span { border-radius: 3px; padding: 1px 0; }
.hists { display: flex; flex-wrap: wrap; gap: 6px 10px; }
.samples { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.sample { border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; background: #fcfcfd; }
.sample h3 { margin: 0 0 6px; font-size: 15px; }
.sample .text { white-space: pre-wrap; font-family: Georgia, "Times New Roman", serif; font-size: 15px; line-height: 1.55; }
.sample .prompt { color: #8a909c; }
.sample .meta { font-size: 12.5px; color: var(--muted); margin-top: 8px; }
footer { color: var(--muted); font-size: 13px; margin-top: 22px; }
footer code, p code { font-size: 12.5px; background: #eef0f3; border-radius: 4px; padding: 1px 5px; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 0; }
dl.settings dt { color: var(--muted); } dl.settings dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 900px) { .grid2, .samples { grid-template-columns: 1fr; } .cards { grid-template-columns: 1fr 1fr; } }
)CSS";
}

std::string page_head(const std::string& title) {
  return "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n<title>" +
         esc(title) + "</title>\n<style>" + css() + "</style>\n</head>\n<body>\n<main>\n";
}

std::string pad(const std::string& s, size_t w, bool right = false) {
  size_t n = 0;  // width in UTF-8 code points
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  if (n >= w) return s;
  return right ? std::string(w - n, ' ') + s : s + std::string(w - n, ' ');
}

// Colour between two hex colours, t in [0, 1].
std::string mix(const char* a, const char* b, double t) {
  auto hex = [](const char* s, int i) { return std::stoi(std::string(s + 1 + 2 * i, 2), nullptr, 16); };
  t = std::max(0.0, std::min(1.0, t));
  char o[8];
  std::snprintf(o, sizeof o, "#%02x%02x%02x", (int)std::lround(hex(a, 0) + t * (hex(b, 0) - hex(a, 0))),
                (int)std::lround(hex(a, 1) + t * (hex(b, 1) - hex(a, 1))), (int)std::lround(hex(a, 2) + t * (hex(b, 2) - hex(a, 2))));
  return o;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The routing picture: tokens along x (wrapped in rows of up to 64), routed layers along y.
std::string routing_svg(const json& routing, const json& summary) {
  const json& layers = routing["layers"];
  const json& tokens = routing["tokens"];
  const int T = (int)tokens.size(), R = (int)layers.size();
  if (T == 0 || R == 0) return "";
  const int per = std::min(T, 64);
  const int chunks = (T + per - 1) / per;
  const double cw = 17.5, ch = 15, gapc = 1.5, label = 66, chunk_gap = 26, top = 8;
  const double W = label + per * cw + 10, H = top + chunks * (R * ch + chunk_gap) + 4;
  // Shades by the rank of the router logit, separately among the processed and the skipped cells
  // of the passage: every violet cell reads as processed, and a few outlying logits do not wash
  // the others out.
  std::vector<double> rp, rs;
  for (const auto& l : layers)
    for (int t = 0; t < T; ++t) (l["processed"][t].get<int>() ? rp : rs).push_back(l["router_logit"][t].get<double>());
  std::sort(rp.begin(), rp.end());
  std::sort(rs.begin(), rs.end());
  auto rank = [](const std::vector<double>& v, double x) {
    if (v.size() < 2) return 1.0;
    return (double)(std::lower_bound(v.begin(), v.end(), x) - v.begin()) / (double)(v.size() - 1);
  };
  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"routing\" viewBox=\"0 0 " + fmt_fixed(W, 1) + " " +
                  fmt_fixed(H, 1) + "\" width=\"" + fmt_fixed(W, 1) + "\" height=\"" + fmt_fixed(H, 1) + "\" role=\"img\">\n";
  for (int c = 0; c < chunks; ++c) {
    const double y0 = top + c * (R * ch + chunk_gap);
    const int t0 = c * per, t1 = std::min(T, t0 + per);
    o += "<text x=\"" + fmt_fixed(label + 0, 1) + "\" y=\"" + fmt_fixed(y0 + R * ch + 13, 1) +
         "\" font-size=\"10.5\" fill=\"#8a909c\">token " + std::to_string(t0) + "</text>";
    o += "<text x=\"" + fmt_fixed(label + (t1 - t0) * cw, 1) + "\" y=\"" + fmt_fixed(y0 + R * ch + 13, 1) +
         "\" font-size=\"10.5\" fill=\"#8a909c\" text-anchor=\"end\">" + std::to_string(t1 - 1) + "</text>\n";
    for (int j = 0; j < R; ++j) {
      const json& L = layers[j];
      const double y = y0 + j * ch;
      o += "<text x=\"" + fmt_fixed(label - 8, 1) + "\" y=\"" + fmt_fixed(y + ch - 4, 1) + "\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">layer " +
           std::to_string(L["layer"].get<int>()) + "</text>";
      for (int t = t0; t < t1; ++t) {
        const double r = L["router_logit"][t].get<double>(), w = sigmoid(r);
        const bool p = L["processed"][t].get<int>() != 0, pred = L["predicted"][t].get<int>() != 0;
        const std::string fill = p ? mix("#c4b0f2", "#3d1496", rank(rp, r)) : mix("#f5f6f8", "#d5d8de", rank(rs, r));
        const double x = label + (t - t0) * cw;
        o += "<rect x=\"" + fmt_fixed(x, 1) + "\" y=\"" + fmt_fixed(y, 1) + "\" width=\"" + fmt_fixed(cw - gapc, 1) + "\" height=\"" +
             fmt_fixed(ch - gapc, 1) + "\" rx=\"2\" fill=\"" + fill + "\"><title>" + esc("\u201c" + tokens[t].get<std::string>() + "\u201d") +
             " \u00b7 layer " + std::to_string(L["layer"].get<int>()) + " \u00b7 r = " + fmt_fixed(r, 3) + ", \u03c3(r) = " + fmt_fixed(w, 3) +
             " \u00b7 " + (p ? "processed" : "skipped") + " \u00b7 predictor: " + (pred ? "process" : "skip") + "</title></rect>";
        if (pred)
          o += "<circle cx=\"" + fmt_fixed(x + (cw - gapc) / 2, 1) + "\" cy=\"" + fmt_fixed(y + (ch - gapc) / 2, 1) + "\" r=\"2.1\" fill=\"" +
               (p ? "#ffffff" : "#3d1496") + "\"/>";
      }
      o += "\n";
    }
  }
  o += "</svg>\n";
  (void)summary;
  return o;
}

// The passage as text, each token shaded by how many routed layers processed it.
std::string passage_html(const json& routing) {
  const json& layers = routing["layers"];
  const json& tokens = routing["tokens"];
  const int R = (int)layers.size();
  std::string o = "<div class=\"passage\">";
  bool prev_paragraph = false;
  for (size_t t = 0; t < tokens.size(); ++t) {
    int n = 0;
    for (const auto& l : layers) n += l["processed"][t].get<int>() != 0;
    // Hard-wrapped lines flow together; a blank line starts a new paragraph.
    std::string rest = tokens[t].get<std::string>();
    int newlines = 0;
    while (!rest.empty() && rest.back() == '\n') rest.pop_back(), ++newlines;
    const bool next_nl = t + 1 < tokens.size() && tokens[t + 1].get<std::string>() == "\n";
    const bool paragraph = newlines >= 2 || (newlines == 1 && next_nl);
    if (rest.empty() && newlines > 0 && prev_paragraph) continue;  // the rest of a blank line
    prev_paragraph = paragraph;
    if (newlines == 1 && !next_nl) rest += " ";
    const std::string bg = n == 0 ? "transparent" : mix("#e6dcfa", "#6a3fd0", R > 1 ? (n - 1.0) / (R - 1.0) : 1.0);
    const std::string fg = n * 2 > R + 1 ? "#ffffff" : "inherit";
    o += "<span style=\"background:" + bg + ";color:" + fg + "\" title=\"processed in " + std::to_string(n) + " of " + std::to_string(R) +
         " routed layers\">" + esc(rest) + (paragraph ? "\u00b6" : "") + "</span>";
    if (paragraph) o += "<br/>";
  }
  o += "</div>\n";
  return o;
}

std::string card(const std::string& k, const std::string& v, const std::string& s, const std::string& cls = "") {
  return "<div class=\"card\"><div class=\"k\">" + esc(k) + "</div><div class=\"v" + (cls.empty() ? "" : " " + cls) + "\">" + esc(v) +
         "</div><div class=\"s\">" + esc(s) + "</div></div>\n";
}

}  // namespace

std::string embed_json(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace), o;
  o.reserve(s.size());
  for (char c : s) {
    if (c == '<') o += "\\u003c";
    else if (c == '>') o += "\\u003e";
    else if (c == '&') o += "\\u0026";
    else o += c;
  }
  return o;
}

namespace {

// The models of a summary in report order (older summaries: dense, then MoD).
std::vector<std::string> model_order(const json& S) {
  std::vector<std::string> v;
  if (S.contains("families") && S["families"].is_array())
    for (const auto& f : S["families"]) v.push_back(f.get<std::string>());
  if (v.empty())
    for (const char* f : {"dense", "mod"})
      if (S.at("models").contains(f)) v.push_back(f);
  return v;
}

std::string baseline_of(const json& S, const std::vector<std::string>& order) {
  if (S.contains("baseline") && S["baseline"].is_string()) return S["baseline"].get<std::string>();
  return order.empty() ? std::string() : order.front();
}

std::string label_of(const json& S, const std::string& f) {
  const json& m = S.at("models").at(f);
  return m.contains("label") && m["label"].is_string() ? m["label"].get<std::string>() : (f == "mod" ? "MoD" : f);
}

// A colour per family (the two-model demo keeps its blue and orange).
const char* family_color(const std::string& f) {
  if (f == "dense") return kDense;
  if (f == "mod") return kMod;
  if (f == "moe") return "#2e9a4e";
  if (f == "mode_staged") return "#8e44ad";
  if (f == "mode_integrated") return "#c0392b";
  return "#555555";
}

// A line style per family for charts where colour means something else (the sweep's budgets).
std::string family_dash(const std::string& f) {
  if (f == "mod") return "6 4";
  if (f == "moe") return "2 3";
  if (f == "mode_staged") return "8 3 2 3";
  if (f == "mode_integrated") return "12 4";
  return "";
}

// The comparison of family f with the baseline (summary "comparisons", or the two-model
// demo's "comparison").
const json& comparison_of(const json& S, const std::string& f) {
  static const json none = json::object();
  if (S.contains("comparisons") && S["comparisons"].contains(f)) return S["comparisons"][f];
  if (S.contains("comparison") && f == "mod") return S["comparison"];
  return none;
}

}  // namespace

DemoTable demo_table(const json& summary) {
  const std::vector<std::string> order = model_order(summary);
  const std::string base = baseline_of(summary, order);
  const json& models = summary.at("models");
  const json& d = models.at(base);
  DemoTable t;
  t.header.push_back("");
  for (const auto& f : order) t.header.push_back(label_of(summary, f));
  for (const auto& f : order)
    if (f != base) t.header.push_back(label_of(summary, f) + " vs " + label_of(summary, base)), t.n_ratio++;
  t.n_models = order.size();
  auto or_na = [&](const json& j, const char* k, auto f) { return std::isfinite(num(j, k)) ? f(num(j, k)) : std::string("n/a"); };
  auto si = [](double v) { return fmt_si(v, 3); };
  auto secs = [](double v) { return fmt_seconds(v); };
  auto f4 = [](double v) { return fmt_fixed(v, 4); };
  auto f3 = [](double v) { return fmt_fixed(v, 3); };
  auto pct = [](double v) { return fmt_fixed(100 * v, 1) + " %"; };
  auto tps = [](double v) { return fmt_fixed(v, v < 100 ? 1 : 0); };
  auto bytes = [](double v) { return fmt_bytes(v); };
  auto integer = [](double v) { return fmt_fixed(v, 0); };
  // kind: 0 no comparison, 1 ratio with `dec` decimals, 2 difference.
  auto row = [&](const std::string& label, const char* key, auto fmt, int kind, int dec = 2) {
    std::vector<std::string> r{label};
    for (const auto& f : order) r.push_back(or_na(models.at(f), key, fmt));
    for (const auto& f : order) {
      if (f == base) continue;
      const double a = num(d, key), b = num(models.at(f), key);
      std::string c;
      if (kind == 1 && std::isfinite(a) && std::isfinite(b) && a != 0) c = fmt_fixed(b / a, dec) + "\u00d7";
      if (kind == 2 && std::isfinite(a) && std::isfinite(b)) c = std::string(b - a >= 0 ? "+" : "\u2212") + fmt_fixed(std::fabs(b - a), 3);
      r.push_back(c);
    }
    t.rows.push_back(r);
  };
  bool any_moe = false, any_noop = false;
  for (const auto& f : order) {
    any_moe = any_moe || models.at(f).contains("moe_dropped_fraction");
    any_noop = any_noop || num(models.at(f), "moe_noop_fraction", 0) > 0;
  }
  row("parameters", "params", si, 1, 3);
  row("FLOPs per forward (one sequence)", "flops_per_forward", si, 1);
  row("training FLOPs", "train_flops", si, 1, 3);
  row("steps", "steps", integer, 1);
  row("training tokens", "tokens", si, 1);
  row("training wall-clock", "train_seconds", secs, 1);
  row("training tokens/s", "train_tokens_per_second", integer, 1);
  row("validation loss, top-k routing", "val_loss_topk", f4, 2);
  row("validation loss, causal routing", "val_loss_causal", f4, 2);
  row("predictor accuracy", "predictor_accuracy", pct, 0);
  row("processed fraction (causal)", "processed_fraction", f3, 0);
  if (any_moe) {
    row("MoE: dropped by capacity", "moe_dropped_fraction", pct, 0);
    if (any_noop) row("MoE: sent to no-op experts", "moe_noop_fraction", pct, 0);
    row("MoE: balance (1 = even)", "moe_balance", f3, 0);
  }
  row("decode tokens/s (one stream)", "decode_tokens_per_second", tps, 1);
  row("KV-cache bytes (sample)", "kv_cache_bytes", bytes, 1);
  return t;
}

std::string demo_table_text(const json& summary) {
  const DemoTable t = demo_table(summary);
  auto width = [](const std::string& x) {
    size_t n = 0;  // UTF-8 code points
    for (unsigned char c : x) n += (c & 0xC0) != 0x80;
    return n;
  };
  // Columns from..to-1, each as wide as its widest cell + 2 (at least `min_w`); rows with nothing
  // in these columns are left out.
  auto block = [&](size_t from, size_t to, size_t min_w) {
    std::vector<size_t> w(to, min_w);
    for (size_t c = from; c < to; ++c) {
      w[c] = std::max(w[c], width(t.header[c]) + 2);
      for (const auto& r : t.rows) w[c] = std::max(w[c], width(r[c]) + 2);
    }
    std::string s = pad("", 34);
    for (size_t c = from; c < to; ++c) s += pad(t.header[c], w[c], true);
    s += "\n";
    for (const auto& r : t.rows) {
      bool any = false;
      for (size_t c = from; c < to; ++c) any = any || !r[c].empty();
      if (!any) continue;
      s += pad(r[0], 34);
      for (size_t c = from; c < to; ++c) s += pad(r[c], w[c], true);
      s += "\n";
    }
    return s;
  };
  // Two models: one block with the comparison column (as it always was); more: the values,
  // then the comparisons with the baseline.
  if (t.n_models <= 2) return block(1, t.header.size(), 12);
  std::string s = block(1, 1 + t.n_models, 12);
  if (t.n_ratio > 0) s += "\n" + block(1 + t.n_models, t.header.size(), 12);
  return s;
}

std::string render_demo_report(const json& S) {
  const std::vector<std::string> order = model_order(S);
  const std::string base = baseline_of(S, order);
  const std::string base_label = label_of(S, base);
  const json& models = S.at("models");
  const json& D = models.at(base);
  const json& set = S.at("settings");
  const double budget = num(S, "budget_flops");
  const double cap = num(set, "capacity", 0.125);
  std::vector<std::string> others;
  for (const auto& f : order)
    if (f != base) others.push_back(f);
  const bool two = order.size() == 2;
  std::string names;
  for (size_t i = 0; i < order.size(); ++i)
    names += (i == 0 ? "" : i + 1 == order.size() ? " and " : ", ") + label_of(S, order[i]);
  const bool classic = two && base == "dense" && others[0] == "mod";
  std::string o = page_head(classic ? "modlm demo: Mixture-of-Depths vs dense" : "modlm demo: " + names);

  // Header and verdict.
  o += "<header>\n<div class=\"tag\">modlm demo</div>\n<h1>" +
       esc(classic ? std::string("Mixture-of-Depths vs its dense twin, at equal training FLOPs") : names + ", at equal training FLOPs") + "</h1>\n";
  {
    std::string p = (order.size() == 2 ? "Both models: " : "All models: ") + esc(std::to_string(D["config"]["n_layers"].get<int>())) +
                    " layers, d<sub>model</sub> " + esc(std::to_string(D["config"]["d_model"].get<int>())) + ", vocabulary " +
                    esc(std::to_string(D["config"]["vocab_size"].get<int>())) + ", sequences of " + esc(std::to_string(set["seq_len"].get<int>())) + " tokens.";
    for (const auto& f : order) {
      const json& c = models.at(f)["config"];
      const bool routed = c.contains("routing") && c["routing"].is_object();
      const bool moe = c.contains("moe") && c["moe"].is_object();
      if (f == "mod" || (routed && !moe))
        p += " " + esc(label_of(S, f)) + " routes every other layer, processing " + esc(fmt_fixed(100 * cap, 1)) +
             " % of the tokens there (top-k by a learned router); a small predictor learns the same decision causally.";
      if (moe) {
        const json& m = c["moe"];
        std::string e = std::to_string(m.value("n_experts", 0)) + " experts of width " + std::to_string(m.value("d_expert", 0)) + ", top-" +
                        std::to_string(m.value("top_k", 1)) + ", capacity factor " + fmt_fixed(m.value("capacity_factor", 0.0), 2);
        if (m.value("n_noop", 0) > 0) e += ", " + std::to_string(m.value("n_noop", 0)) + " no-op experts (a token sent there skips the MLP)";
        p += " " + esc(label_of(S, f)) + (routed ? ": MoD routing as above, each routed layer\u2019s MLP an MoE (" : ": every MLP an MoE (") + esc(e) + ").";
      }
    }
    p += " Each model trained on the same text for " + esc(fmt_si(budget)) + "FLOPs.";
    o += "<p>" + p + "</p>\n";
  }
  {
    std::string v = "At the same training compute, validation loss (top-k routing): ";
    for (size_t i = 0; i < order.size(); ++i) {
      const std::string& f = order[i];
      const double l = num(models.at(f), "val_loss_topk");
      v += std::string(i == 0 ? "" : ", ") + "<b style=\"color:" + family_color(f) + "\">" + esc(label_of(S, f)) + " " + esc(fmt_fixed(l, 3)) + "</b>";
      if (f != base) {
        const double dl = l - num(D, "val_loss_topk");
        v += std::string(" (") + (dl <= 0 ? "<span class=\"good\">" : "<span class=\"bad\">") + esc((dl >= 0 ? "+" : "\u2212") + fmt_fixed(std::fabs(dl), 3)) + "</span>)";
      }
    }
    v += ". ";
    for (const auto& f : others) {
      const json& cmp = comparison_of(S, f);
      const json& reach = cmp.contains("reach_dense_loss") ? cmp["reach_dense_loss"] : cmp;
      const std::string L = esc(label_of(S, f));
      const json& m = models.at(f);
      if (m.contains("eval") && m["eval"].contains("causal"))
        v += L + " scores " + esc(fmt_fixed(num(m, "val_loss_causal"), 3)) + " when it decides causally, as in generation. ";
      v += L + " took " + esc(fmt_fixed(num(cmp, "steps_ratio"), 2)) + "\u00d7 the steps in " + esc(fmt_fixed(num(cmp, "wall_clock_ratio"), 2)) +
           "\u00d7 the wall-clock";
      if (reach.value("reached", false))
        v += " and matched " + esc(base_label) + "\u2019s final loss after <b>" + esc(fmt_seconds(num(reach, "time"))) + "</b> of training, where " +
             esc(base_label) + " needed " + esc(fmt_seconds(num(reach, "dense_time"))) + " (" + esc(fmt_fixed(num(reach, "speedup"), 2)) + "\u00d7 faster). ";
      else if (reach.contains("dense_final_loss"))
        v += "; it did not reach " + esc(base_label) + "\u2019s final loss (" + esc(fmt_fixed(num(reach, "dense_final_loss"), 3)) + ") within its budget. ";
      else
        v += ". ";
    }
    o += "<p class=\"verdict\">" + v + "</p>\n</header>\n";
  }
  // Cards: the two-model demo's four; otherwise one per family compared with the baseline.
  o += "<div class=\"cards\">\n";
  if (two) {
    const std::string f = others[0], L = label_of(S, f);
    const json& M = models.at(f);
    const json& cmp = comparison_of(S, f);
    const json& reach = cmp.contains("reach_dense_loss") ? cmp["reach_dense_loss"] : cmp;
    const double ld = num(D, "val_loss_topk"), lm = num(M, "val_loss_topk");
    o += card("validation loss, equal FLOPs", fmt_fixed(lm, 3) + " vs " + fmt_fixed(ld, 3), L + " vs " + base_label + " (top-k routing)", lm <= ld ? "good" : "bad");
    o += card("compute per forward", fmt_fixed(100 * num(cmp, "flops_per_forward_ratio"), 0) + " %",
              "of " + base_label + ": " + fmt_si(num(M, "flops_per_forward")) + " vs " + fmt_si(num(D, "flops_per_forward")) + "FLOPs");
    if (reach.value("reached", false))
      o += card("time to " + base_label + "\u2019s final loss", fmt_seconds(num(reach, "time")),
                base_label + ": " + fmt_seconds(num(reach, "dense_time")) + " (" + fmt_fixed(num(reach, "speedup"), 2) + "\u00d7)", "good");
    else
      o += card("time to " + base_label + "\u2019s final loss", "not reached", L + " best " + fmt_fixed(num(reach, "mod_best_loss"), 3) + " vs " +
                fmt_fixed(num(reach, "dense_final_loss"), 3), "bad");
    if (std::isfinite(num(M, "decode_tokens_per_second")))
      o += card("decode speed, one stream", fmt_fixed(num(M, "decode_tokens_per_second") / std::max(1e-9, num(D, "decode_tokens_per_second")), 2) + "\u00d7",
                fmt_fixed(num(M, "decode_tokens_per_second"), 0) + " vs " + fmt_fixed(num(D, "decode_tokens_per_second"), 0) + " tokens/s; KV cache " +
                    fmt_fixed(100 * num(M, "kv_cache_bytes") / std::max(1.0, num(D, "kv_cache_bytes")), 0) + " %");
    else
      o += card("decode speed, one stream", "n/a", "this build has no KV-cache decoder");
  } else {
    for (const auto& f : others) {
      const json& M = models.at(f);
      const json& cmp = comparison_of(S, f);
      const json& reach = cmp.contains("reach_dense_loss") ? cmp["reach_dense_loss"] : cmp;
      const double dl = num(M, "val_loss_topk") - num(D, "val_loss_topk");
      std::string sub = fmt_fixed(num(cmp, "flops_per_forward_ratio"), 2) + "\u00d7 FLOPs per forward; ";
      sub += reach.value("reached", false) ? "reached " + base_label + "\u2019s loss " + fmt_fixed(num(reach, "speedup"), 2) + "\u00d7 sooner"
                                           : "did not reach " + base_label + "\u2019s loss";
      if (std::isfinite(num(M, "decode_tokens_per_second")))
        sub += "; decode " + fmt_fixed(num(M, "decode_tokens_per_second") / std::max(1e-9, num(D, "decode_tokens_per_second")), 2) + "\u00d7";
      o += card(label_of(S, f) + " vs " + base_label, (dl >= 0 ? "+" : "\u2212") + fmt_fixed(std::fabs(dl), 3) + " nats", sub, dl <= 0 ? "good" : "bad");
    }
  }
  o += "</div>\n";

  // Table.
  o += "<section id=\"table\">\n<h2>Side by side</h2>\n<p class=\"lead\">Validation losses are mean next-token cross-entropy (nats) over " +
       esc(std::to_string(num(set, "final_windows", 0) > 0 ? (int)num(set, "final_windows") : 0)) +
       " held-out windows (causal: the decisions generation makes \u2014 the predictor for routed layers, no expert capacity). Training wall-clock is "
       "the time spent in training steps on this machine (validation passes and checkpoints excluded). Decode: the KV-cache decoder, one sequence, "
       "sampling; KV-cache bytes after the sample.</p>\n";
  {
    const DemoTable t = demo_table(S);
    o += "<table class=\"cmp\">\n<thead><tr>";
    for (size_t c = 0; c < t.header.size(); ++c) {
      std::string style;
      if (c >= 1 && c <= t.n_models) style = " style=\"color:" + std::string(family_color(order[c - 1])) + "\"";
      o += "<th" + style + ">" + esc(t.header[c]) + "</th>";
    }
    o += "</tr></thead>\n<tbody>\n";
    for (const auto& r : t.rows) {
      o += "<tr>";
      for (const auto& cell : r) o += "<td>" + esc(cell) + "</td>";
      o += "</tr>\n";
    }
    o += "</tbody>\n</table>\n";
  }
  o += "</section>\n";

  // Loss curves.
  auto loss_chart = [&](const std::string& id, const char* xkey, const Axis& xa) {
    LineChart c;
    c.id = id;
    c.x = xa;
    c.y.label = "validation loss (nats)";
    c.width = 590, c.height = 350;
    for (const auto& f : order) {
      const json& m = models.at(f);
      Series tr;
      tr.key = std::string("train-") + xkey + "-" + f;
      tr.label = "";
      tr.color = family_color(f);
      tr.x = vec(m["curves"]["train"][xkey]);
      tr.y = vec(m["curves"]["train"]["loss"]);
      tr.markers = false;
      tr.width = 1.2;
      tr.opacity = 0.28;
      c.series.push_back(tr);
    }
    const size_t n_train = c.series.size();
    for (const auto& f : order) {
      const json& m = models.at(f);
      Series s;
      s.key = std::string("val-") + xkey + "-" + f;
      s.label = label_of(S, f) + " (validation)";
      s.color = family_color(f);
      s.x = vec(m["curves"]["val"][xkey]);
      s.y = vec(m["curves"]["val"]["loss"]);
      c.series.push_back(s);
    }
    // y range from the validation curves (the first training losses would squash the plot).
    double lo = 1e300, hi = -1e300;
    for (size_t i = n_train; i < c.series.size(); ++i)
      for (double v : c.series[i].y)
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (hi > lo) {
      double d = (hi - lo) * 0.08;
      c.y.lo = lo - d, c.y.hi = hi + d;
    }
    if (!others.empty()) {
      const json& cmp = comparison_of(S, others[0]);
      const json& reach = cmp.contains("reach_dense_loss") ? cmp["reach_dense_loss"] : cmp;
      if (reach.contains("dense_final_loss"))
        c.refs.push_back({false, num(reach, "dense_final_loss"), base_label + " final " + fmt_fixed(num(reach, "dense_final_loss"), 3), "#7a8190"});
      if (two && std::string(xkey) == "time" && reach.value("reached", false))
        c.refs.push_back({true, num(reach, "time"), label_of(S, others[0]) + " matches " + base_label + " at " + fmt_seconds(num(reach, "time")),
                          family_color(others[0])});
    }
    // Clip the faint training curves to the plotted y range.
    for (size_t i = 0; i < n_train; ++i)
      for (auto& v : c.series[i].y)
        if (c.y.hi > c.y.lo) v = std::max(c.y.lo, std::min(c.y.hi, v));
    return render_line_chart(c);
  };
  Axis ax_f{"training FLOPs", false, AxisFormat::SI, 0, 0};
  Axis ax_t{"training wall-clock", false, AxisFormat::Seconds, 0, 0};
  o += "<div class=\"grid2 row\">\n<section>\n<h2>Loss against training FLOPs</h2>\n<p class=\"lead\">Same budget: a model with a cheaper forward "
       "spends it on more steps. Faint lines: training loss of each batch.</p>\n<figure>" +
       loss_chart("loss-flops", "flops", ax_f) + "</figure>\n</section>\n";
  o += "<section>\n<h2>Loss against wall-clock</h2>\n<p class=\"lead\">What the saved FLOPs buy on this machine (" +
       esc(std::to_string((int)num(set, "threads", 0))) + " threads).</p>\n<figure>" + loss_chart("loss-time", "time", ax_t) +
       "</figure>\n</section>\n</div>\n";

  // Routing picture (from the MoD model, else the staged MoDE one).
  const std::string rfam = S.contains("routing_family") && S["routing_family"].is_string() ? S["routing_family"].get<std::string>() : "mod";
  const std::string rlabel = models.contains(rfam) ? label_of(S, rfam) : "MoD";
  if (S.contains("routing") && S["routing"].is_object()) {
    o += "<section id=\"routing-picture\">\n<h2>Which tokens each routed layer processed (" + esc(rlabel) +
         ")</h2>\n<p class=\"lead\">A passage of the validation text. Each column is a token, "
         "each row a routed layer; a violet cell was processed by that layer\u2019s block (top-k routing, as in training; darker = larger router logit r, "
         "whose \u03c3(r) scales the block\u2019s output), a grey cell skipped it and went round on the residual stream. A dot marks the tokens the causal predictor would process. "
         "Hover a cell for the token and its router logit.</p>\n";
    o += "<div class=\"legend-row\"><span><span class=\"sw\" style=\"background:#c4b0f2\"></span><span class=\"sw\" style=\"background:#3d1496\"></span>"
         "processed (low \u2192 high router logit)</span><span><span class=\"sw\" style=\"background:#eceef1\"></span>skipped</span>"
         "<span>\u25cf predictor says process</span></div>\n";
    o += "<figure>" + routing_svg(S["routing"], S) + "</figure>\n";
    o += "<p class=\"lead\" style=\"margin-top:14px\">The same passage as text: the darker a token, the more routed layers processed it.</p>\n";
    o += passage_html(S["routing"]);
    o += "</section>\n";
  }

  // Histograms and predictor accuracy.
  o += "<div class=\"grid2 row\">\n";
  if (S.contains("router_histogram") && S["router_histogram"].is_object()) {
    const json& H = S["router_histogram"];
    o += "<section>\n<h2>Router logits per routed layer (" + esc(rlabel) + ")</h2>\n<p class=\"lead\">The router logit r of each of " +
         esc(std::to_string((int)num(H, "tokens_per_layer", 0))) + " validation tokens (the block\u2019s output is scaled by \u03c3(r)); "
         "violet: the " + esc(fmt_fixed(100 * cap, 1)) + " % top-k tokens the block processed, grey: skipped.</p>\n<div class=\"hists\">\n";
    bool first = true;
    for (const auto& l : H["layers"]) {
      Histogram h;
      h.id = "hist-layer-" + std::to_string(l["layer"].get<int>());
      h.title = "layer " + std::to_string(l["layer"].get<int>());
      h.edges = vec(H["edges"]);
      h.stacks.push_back({"processed", "processed", "#5b2bb5", vec(l["processed"])});
      h.stacks.push_back({"skipped", "skipped", "#c5c9d1", vec(l["skipped"])});
      h.x_label = "router logit r";
      h.width = 262, h.height = 180;
      h.legend = first;
      first = false;
      o += render_histogram(h);
    }
    o += "</div>\n</section>\n";
  }
  if (models.contains(rfam) && models[rfam].contains("predictor_accuracy_curve")) {
    const json& M = models[rfam];
    const json& A = M["predictor_accuracy_curve"];
    LineChart c;
    c.id = "predictor-accuracy";
    c.x = {"training step (" + rlabel + ")", false, AxisFormat::Number, 0, 0};
    c.y = {"predictor accuracy", false, AxisFormat::Number, 0, 0};
    c.width = 590, c.height = 330;
    int i = 0;
    double lo = 1;
    for (const auto& l : A["layers"]) {
      Series s;
      s.key = "accuracy-layer-" + std::to_string(l["layer"].get<int>());
      s.label = "layer " + std::to_string(l["layer"].get<int>());
      s.color = kPalette[i++ % 8];
      s.x = vec(A["step"]);
      s.y = vec(l["accuracy"]);
      s.markers = false;
      s.width = 1.8;
      for (double v : s.y) lo = std::min(lo, v);
      c.series.push_back(s);
    }
    c.y.lo = std::max(0.0, std::min(lo, 1 - cap) - 0.02), c.y.hi = 1.0;
    c.refs.push_back({false, 1 - cap, "always \u201cskip\u201d: " + fmt_fixed(100 * (1 - cap), 1) + " %", "#7a8190"});
    o += "<section>\n<h2>Causal predictor accuracy during training (" + esc(rlabel) +
         ")</h2>\n<p class=\"lead\">How often the predictor, which sees only the past, "
         "makes the same decision as top-k routing (training batches). Final, on validation: " +
         esc(fmt_fixed(100 * num(M, "predictor_accuracy"), 1)) + " %.</p>\n<figure>" + render_line_chart(c) + "</figure>\n</section>\n";
  }
  o += "</div>\n";

  // Expert load of every MoE family: layers x experts, the share of the choices each expert got.
  {
    std::string moe;
    for (const auto& f : order) {
      const json& m = models.at(f);
      if (!m.contains("eval") || !m["eval"]["topk"].contains("moe")) continue;
      const json& layers = m["eval"]["topk"]["moe"];
      if (!layers.is_array() || layers.empty()) continue;
      const int G = (int)layers[0]["load"].size();
      const int n_noop = m["config"].contains("moe") ? m["config"]["moe"].value("n_noop", 0) : 0;
      moe += "<h3 style=\"color:" + std::string(family_color(f)) + ";margin:14px 0 6px;font-size:15px\">" + esc(label_of(S, f)) + "</h3>\n";
      moe += "<table class=\"cmp load\" id=\"moe-load-" + esc(f) + "\">\n<thead><tr><th>layer</th>";
      for (int e = 0; e < G; ++e) moe += "<th>" + (e < G - n_noop ? "expert " + std::to_string(e) : "no-op " + std::to_string(e - (G - n_noop))) + "</th>";
      moe += "<th>dropped</th><th>balance</th></tr></thead>\n<tbody>\n";
      for (const auto& l : layers) {
        moe += "<tr><td>layer " + std::to_string(l.value("layer", 0)) + "</td>";
        int e = 0;
        for (const auto& x : l["load"]) {
          const double v = x.get<double>();
          // Shade by load relative to an even share (1 / G): white at 0, full at twice the even
          // share; green for real experts, grey for no-op ones.
          const std::string bg = mix("#ffffff", e++ < G - n_noop ? "#2e9a4e" : "#8a909c", std::min(1.0, v * G / 2.0));
          moe += "<td style=\"background:" + bg + "\">" + esc(fmt_fixed(100 * v, 1)) + " %</td>";
        }
        moe += "<td>" + esc(fmt_fixed(100 * l.value("dropped_fraction", 0.0), 1)) + " %</td><td>" + esc(fmt_fixed(l.value("balance", 0.0), 3)) +
               "</td></tr>\n";
      }
      moe += "</tbody>\n</table>\n";
    }
    if (!moe.empty())
      o += "<section class=\"row\" id=\"expert-load\">\n<h2>Expert load</h2>\n<p class=\"lead\">Share of the router\u2019s choices each expert received "
           "on the validation windows (top-k evaluation, before capacity; darker = busier; an even split is " +
           esc("1 / (experts + no-op experts)") + "), the share of choices dropped by the expert capacity, and the Switch balance term "
           "(E \u2211 f<sub>i</sub> P<sub>i</sub>, 1 when even).</p>\n" + moe + "</section>\n";
  }

  // Samples.
  const json& first_sample = models.at(order.back())["sample"];
  o += "<section class=\"row\" id=\"samples\">\n<h2>Samples</h2>\n<p class=\"lead\">The same prompt (grey, from the validation text), continued by each model "
       "with the KV-cache decoder (temperature " +
       esc(fmt_fixed(num(first_sample, "temperature", 0.8), 2)) + ", top-k " + esc(std::to_string((int)num(first_sample, "top_k", 40))) +
       ", same seed). Routed models decide causally, token by token.</p>\n<div class=\"samples\">\n";
  for (const auto& f : order) {
    const json& m = models.at(f);
    o += "<div class=\"sample\"><h3 style=\"color:" + std::string(family_color(f)) + "\">" + esc(label_of(S, f)) + "</h3>";
    if (m["sample"].is_object()) {
      o += "<div class=\"text\"><span class=\"prompt\">" + esc(m["sample"]["prompt"].get<std::string>()) + "</span>" +
           esc(m["sample"]["continuation"].get<std::string>()) + "</div>";
      const int th = (int)num(m, "decode_threads", 0);
      o += "<div class=\"meta\">" + esc(fmt_fixed(num(m, "decode_tokens_per_second"), 1)) + " tokens/s" +
           (th > 0 ? " on " + std::to_string(th) + (th == 1 ? " thread" : " threads") : std::string()) + " \u00b7 KV cache " +
           esc(fmt_bytes(num(m, "kv_cache_bytes"))) + " for " + esc(std::to_string((int)num(m, "kv_cache_context_tokens", 0))) + " tokens</div>";
    } else {
      o += "<div class=\"text\">(no KV-cache decoder in this build)</div>";
    }
    o += "</div>\n";
  }
  o += "</div>\n</section>\n";

  // Settings.
  o += "<footer>\n<dl class=\"settings\">";
  auto dd = [&](const std::string& k, const std::string& v) { o += "<dt>" + esc(k) + "</dt><dd>" + esc(v) + "</dd>"; };
  dd("training text", set.value("data", ""));
  dd("validation text", set.value("val", ""));
  dd("tokenizer", set.value("tokenizer", ""));
  dd("budget", fmt_si(budget) + "FLOPs per model (" + json(budget).dump() + ")");
  dd("batch", std::to_string((int)num(set, "batch_size", 0)) + " \u00d7 " + std::to_string((int)num(set, "seq_len", 0)) + " tokens, lr " +
                  json(num(set, "lr")).dump() + " (cosine to " + json(num(set, "min_lr")).dump() + ")");
  if (S.contains("phases") && S["phases"].is_object()) {
    std::string ph;
    for (auto it = S["phases"].begin(); it != S["phases"].end(); ++it)
      if (it.key() != "total" && it.value().is_number() && it.value().get<double>() >= 0.5)
        ph += (ph.empty() ? "" : ", ") + it.key() + " " + fmt_seconds(it.value().get<double>());
    dd("made in", fmt_seconds(num(S["phases"], "total", 0)) + (ph.empty() ? "" : " (" + ph + ")"));
  }
  dd("created", S.value("created", ""));
  o += "</dl>\n<p>Made by <code>modlm demo</code>; the numbers are in <code>summary.json</code> beside this page and in the block below.</p>\n</footer>\n";
  o += "</main>\n<script type=\"application/json\" id=\"modlm-data\">" + embed_json(S) + "</script>\n</body>\n</html>\n";
  return o;
}

std::string render_sweep_report(const std::vector<json>& records, const json& meta) {
  std::string o = page_head("modlm sweep: iso-FLOP curves");
  o += "<header>\n<div class=\"tag\">modlm sweep</div>\n<h1>Iso-FLOP analysis: dense vs Mixture-of-Depths</h1>\n"
       "<p>For each training-FLOP budget, models of several sizes trained with exactly that budget; the final validation loss against "
       "the parameter count. The bottom of each curve is the best model size for that budget. Colour: the budget; line: the family "
       "(dense solid, MoD dashed, MoE dotted, staged MoDE dash-dot, integrated MoDE long dashes).</p>\n</header>\n";
  // Group: (budget, family) -> points sorted by params.
  std::map<std::pair<double, std::string>, std::vector<const json*>> groups;
  std::set<double> budgets;
  for (const auto& r : records) {
    groups[{r.value("budget", 0.0), r.value("family", std::string("?"))}].push_back(&r);
    budgets.insert(r.value("budget", 0.0));
  }
  std::map<double, int> bidx;
  for (double b : budgets) bidx[b] = (int)bidx.size();
  LineChart c;
  c.id = "isoflop";
  c.x = {"parameters", true, AxisFormat::SI, 0, 0};
  c.y = {"final validation loss (nats, top-k)", false, AxisFormat::Number, 0, 0};
  c.width = 1150, c.height = 520;
  for (auto& [k, v] : groups) {
    std::sort(v.begin(), v.end(), [](const json* a, const json* b) { return a->value("params", 0.0) < b->value("params", 0.0); });
    Series s;
    s.key = "b" + json(k.first).dump() + "-" + k.second;
    s.label = fmt_si(k.first) + "FLOPs, " + family_label(k.second);
    s.color = kPalette[bidx[k.first] % 8];
    s.dash = family_dash(k.second);
    for (const json* r : v) {
      s.x.push_back(r->value("params", 0.0));
      s.y.push_back(r->value("val_loss", 0.0));
    }
    s.ring_min = s.x.size() > 1;
    c.series.push_back(s);
  }
  o += "<section>\n<h2>Final loss against parameters, one curve per budget and family</h2>\n<p class=\"lead\">A ring marks the "
       "best size of each curve.</p>\n<figure>" + render_line_chart(c) + "</figure>\n</section>\n";
  // The frontier: the best loss of each family at each budget.
  {
    LineChart f;
    f.id = "frontier";
    f.x = {"training FLOPs", true, AxisFormat::SI, 0, 0};
    f.y = {"best final validation loss (nats)", false, AxisFormat::Number, 0, 0};
    f.width = 1150, f.height = 380;
    for (const std::string& fam : model_families()) {
      Series s;
      s.key = "frontier-" + fam;
      s.label = family_label(fam) + ": best size per budget";
      s.color = family_color(fam);
      s.dash = family_dash(fam);
      for (double b : budgets) {
        auto it = groups.find({b, fam});
        if (it == groups.end()) continue;
        double best = std::numeric_limits<double>::infinity();
        for (const json* r : it->second) best = std::min(best, r->value("val_loss", best));
        s.x.push_back(b);
        s.y.push_back(best);
      }
      if (!s.x.empty()) f.series.push_back(s);
    }
    o += "<section>\n<h2>Best loss against compute</h2>\n<p class=\"lead\">For each budget, the lowest final loss over the sizes tried: "
         "the compute frontier of each family.</p>\n<figure>" + render_line_chart(f) + "</figure>\n</section>\n";
  }
  // Table.
  o += "<section>\n<h2>Runs</h2>\n<table class=\"cmp\">\n<thead><tr><th>run</th><th>budget</th><th>family</th><th>d_model \u00d7 layers</th>"
       "<th>parameters</th><th>steps</th><th>training FLOPs</th><th>wall-clock</th><th>val loss (top-k)</th><th>val loss (causal)</th></tr></thead>\n<tbody>\n";
  std::vector<const json*> sorted;
  for (const auto& r : records) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(), [](const json* a, const json* b) {
    auto ka = std::make_tuple(a->value("budget", 0.0), a->value("family", std::string()), a->value("params", 0.0));
    auto kb = std::make_tuple(b->value("budget", 0.0), b->value("family", std::string()), b->value("params", 0.0));
    return ka < kb;
  });
  for (const json* r : sorted) {
    const std::string fam = r->value("family", std::string());
    o += "<tr><td>" + esc(r->value("name", std::string())) + "</td><td>" + esc(fmt_si(r->value("budget", 0.0))) + "</td><td style=\"color:" +
         family_color(fam) + "\">" + esc(family_label(fam)) + "</td><td>" + std::to_string(r->value("d_model", 0)) + " \u00d7 " +
         std::to_string(r->value("n_layers", 0)) + "</td><td>" + esc(fmt_si(r->value("params", 0.0))) + "</td><td>" +
         std::to_string(r->value("steps", (int64_t)0)) + "</td><td>" + esc(fmt_si(r->value("train_flops", 0.0))) + "</td><td>" +
         esc(fmt_seconds(r->value("train_seconds", 0.0))) + "</td><td>" + esc(fmt_fixed(r->value("val_loss", 0.0), 4)) + "</td><td>" +
         (r->contains("val_loss_causal") && (*r)["val_loss_causal"].is_number() ? esc(fmt_fixed((*r)["val_loss_causal"].get<double>(), 4))
                                                                                 : std::string("\u2013")) +
         "</td></tr>\n";
  }
  o += "</tbody>\n</table>\n</section>\n";
  o += "<footer>\n<dl class=\"settings\">";
  for (auto it = meta.begin(); it != meta.end(); ++it)
    o += "<dt>" + esc(it.key()) + "</dt><dd>" + esc(it.value().is_string() ? it.value().get<std::string>() : it.value().dump()) + "</dd>";
  o += "</dl>\n<p>Made by <code>modlm sweep</code>; every run is a line of <code>sweep.jsonl</code> beside this page (and in the block below).</p>\n</footer>\n";
  json data = json::array();
  for (const auto& r : records) data.push_back(r);
  o += "</main>\n<script type=\"application/json\" id=\"modlm-data\">" + embed_json(json{{"meta", meta}, {"records", data}}) +
       "</script>\n</body>\n</html>\n";
  return o;
}

}  // namespace modlm::demo
