// `modlm demo` and `modlm sweep` end to end on tiny models, and their pages: well-formed XML/SVG
// whose plotted series equal summary.json / sweep.jsonl; iso-FLOP budgets; reuse and resume.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <regex>
#include <thread>

#include "cli_helpers.h"
#include "model/families.h"
#include "demo/report.h"
#include "demo/svg.h"
#include "demo/sweep.h"
#include "model/config.h"
#include "util/error.h"

using namespace modlm;
using namespace modlm::testing;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Small train / validation texts (plain) cut from the shipped corpus.
void tiny_texts(const std::string& dir) {
  ASSERT_TRUE(write_train_head(dir + "/train.txt", 200000));
  ASSERT_TRUE(write_valid_head(dir + "/val.txt", 40000));
}

std::string tiny_model_flags() {
  return " --d-model 32 --n-layers 4 --n-heads 2 --d-ff 96 --vocab-size 300 --seq-len 32 --batch-size 4"
         " --final-windows 12 --eval-windows 4 --evals 4 --prompt-tokens 8 --new-tokens 12 --no-progress";
}

// A strict, small well-formedness check (the XML subset the pages use): every tag closed in
// order, attributes quoted, entities known, no '<' or '&' loose in text.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  size_t i = 0;
  auto entity_ok = [&](size_t p) {
    size_t e = s.find(';', p);
    if (e == std::string::npos || e - p > 10) return false;
    std::string name = s.substr(p + 1, e - p - 1);
    return name == "amp" || name == "lt" || name == "gt" || name == "quot" || name == "apos" ||
           std::regex_match(name, std::regex("#[0-9]+|#x[0-9a-fA-F]+"));
  };
  while (i < s.size()) {
    if (s[i] == '&') {
      if (!entity_ok(i)) return "bad entity at " + std::to_string(i);
      ++i;
      continue;
    }
    if (s[i] != '<') {
      ++i;
      continue;
    }
    if (s.compare(i, 4, "<!--") == 0) {
      i = s.find("-->", i);
      if (i == std::string::npos) return "unterminated comment";
      i += 3;
      continue;
    }
    if (s.compare(i, 2, "<!") == 0 || s.compare(i, 2, "<?") == 0) {
      i = s.find('>', i) + 1;
      continue;
    }
    size_t e = i + 1;
    char quote = 0;
    while (e < s.size() && (quote || s[e] != '>')) {
      if (quote) {
        if (s[e] == quote) quote = 0;
        else if (s[e] == '<') return "'<' inside an attribute at " + std::to_string(e);
      } else if (s[e] == '"' || s[e] == '\'') {
        quote = s[e];
      } else if (s[e] == '<') {
        return "'<' inside a tag at " + std::to_string(e);
      }
      ++e;
    }
    if (e >= s.size()) return "unterminated tag at " + std::to_string(i);
    std::string tag = s.substr(i + 1, e - i - 1);
    if (tag.empty()) return "empty tag at " + std::to_string(i);
    if (tag[0] == '/') {
      std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name)
        return "</" + name + "> at " + std::to_string(i) + " closes <" + (stack.empty() ? "" : stack.back()) + ">";
      stack.pop_back();
    } else if (tag.back() != '/') {
      std::string name = tag.substr(0, tag.find_first_of(" \t\n"));
      // Unquoted attribute values are not XML.
      if (std::regex_search(tag, std::regex("=[^\"']"))) return "unquoted attribute in <" + name + ">";
      stack.push_back(name);
      if (name == "script" || name == "style") {
        size_t close = s.find("</" + name + ">", e);
        if (close == std::string::npos) return "unterminated <" + name + ">";
        std::string body = s.substr(e + 1, close - e - 1);
        if (body.find('<') != std::string::npos || body.find('&') != std::string::npos) return "'<' or '&' inside <" + name + ">";
        e = close - 1;
      }
    }
    i = e + 1;
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  return "";
}

// Parses a page with python3's XML parser (strict) and returns its plotted series, the routing
// cells and the embedded data block.
json parse_page(const std::string& html_path) {
  const std::string script = fs::path(html_path).parent_path().string() + "/check_page.py";
  std::ofstream(script) << R"PY(
import json, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
S = '{http://www.w3.org/2000/svg}'
out = {"polylines": {}, "routing_cells": 0, "hist_rects": 0, "svgs": 0, "data": None, "tables": {}}
H = '{http://www.w3.org/1999/xhtml}'
for e in root.iter():
    if e.tag == H + 'table' and e.get('id'):
        out["tables"][e.get('id')] = [[''.join(td.itertext()) for td in tr.iter(H + 'td')] for tr in e.iter(H + 'tr') if list(tr.iter(H + 'td'))]
    if e.tag == S + 'svg':
        out["svgs"] += 1
        if e.get('id') == 'routing':
            out["routing_cells"] = sum(1 for r in e.iter(S + 'rect'))
        if (e.get('id') or '').startswith('hist-'):
            out["hist_rects"] += sum(1 for r in e.iter(S + 'rect') if r.get('data-stack'))
    if e.tag == S + 'polyline':
        xs = [float(v) for v in e.get('data-x').split()]
        ys = [float(v) for v in e.get('data-y').split()]
        out["polylines"][e.get('data-series')] = {"points": len(e.get('points').split()), "x": xs, "y": ys}
    if e.get('id') == 'modlm-data':
        out["data"] = json.loads(e.text)
print(json.dumps(out))
)PY";
  CmdResult r;
  FILE* p = popen(("python3 " + script + " " + html_path + " 2>&1").c_str(), "r");
  std::string o;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) o.append(buf, n);
  int st = pclose(p);
  EXPECT_EQ(WEXITSTATUS(st), 0) << "python3 could not parse " << html_path << " as XML:\n" << o;
  try {
    return json::parse(o);
  } catch (const json::exception&) {
    ADD_FAILURE() << o;
    return json::object();
  }
}

bool python_available() { return std::system("python3 -c 'import xml.etree.ElementTree' > /dev/null 2>&1") == 0; }

void expect_series(const json& page, const std::string& key, const json& xs, const json& ys) {
  ASSERT_TRUE(page["polylines"].contains(key)) << key;
  const json& pl = page["polylines"][key];
  ASSERT_EQ(pl["points"].get<size_t>(), ys.size()) << key;
  ASSERT_EQ(pl["x"].size(), xs.size()) << key;
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_DOUBLE_EQ(pl["x"][i].get<double>(), xs[i].get<double>()) << key << " x[" << i << "]";
    EXPECT_DOUBLE_EQ(pl["y"][i].get<double>(), ys[i].get<double>()) << key << " y[" << i << "]";
  }
}

int64_t mtime_ns(const std::string& p) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(fs::last_write_time(p).time_since_epoch()).count();
}

}  // namespace

TEST(Report, NumberFormatsAndTicks) {
  using namespace modlm::demo;
  EXPECT_EQ(xml_escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
  EXPECT_EQ(json_number(0.5), "0.5");
  EXPECT_EQ(json_number(std::nan("")), "null");
  EXPECT_EQ(fmt_si(1.5e12), "1.5\u2009T");
  EXPECT_EQ(fmt_si(74000), "74\u2009k");
  EXPECT_EQ(fmt_seconds(5.25), "5.2 s");
  EXPECT_EQ(fmt_seconds(125), "2:05");
  EXPECT_EQ(fmt_bytes(2048), "2.0 KiB");
  auto t = nice_ticks(0, 1, 5);
  ASSERT_GE(t.size(), 4u);
  EXPECT_DOUBLE_EQ(t.front(), 0.0);
  EXPECT_NEAR(t.back(), 1.0, 1e-12);
  auto tt = time_ticks(0, 320, 6);  // whole minutes
  ASSERT_EQ(tt.size(), 6u);
  EXPECT_EQ(tt[1], 60.0);
  EXPECT_EQ(tt.back(), 300.0);
  auto lt = log_ticks(1e5, 1e7);
  EXPECT_EQ(lt.front(), 1e5);
  EXPECT_EQ(lt.back(), 1e7);
}

TEST(Report, EmbeddedJsonIsSafeAndRoundTrips) {
  json j{{"text", "</script><b>&amp;"}, {"v", 1.25}};
  std::string e = demo::embed_json(j);
  EXPECT_EQ(e.find('<'), std::string::npos);
  EXPECT_EQ(e.find('&'), std::string::npos);
  EXPECT_EQ(json::parse(e), j);
}

TEST(Report, ChartIsWellFormedAndCarriesItsData) {
  demo::LineChart c;
  c.id = "c";
  c.x.label = "x <axis>";
  c.y.label = "y & axis";
  auto series = [](std::string key, std::string label, std::string color, std::vector<double> x, std::vector<double> y) {
    demo::Series s;
    s.key = std::move(key), s.label = std::move(label), s.color = std::move(color), s.x = std::move(x), s.y = std::move(y);
    return s;
  };
  c.series.push_back(series("s1", "one", "#123456", {1, 2, 3}, {3, 2, 1}));
  c.series.push_back(series("s2", "", "#654321", {1, 2}, {0.5, std::nan("")}));
  c.refs.push_back({true, 2.5, "ref <2.5>", "#888"});
  std::string svg = demo::render_line_chart(c);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_NE(svg.find("data-series=\"s1\" data-x=\"1.0 2.0 3.0\" data-y=\"3.0 2.0 1.0\""), std::string::npos) << svg;
  // The NaN point is not drawn.
  EXPECT_NE(svg.find("data-series=\"s2\" data-x=\"1.0\" data-y=\"0.5\""), std::string::npos) << svg;
  demo::Histogram h;
  h.id = "h";
  h.edges = {0, 0.5, 1};
  h.stacks.push_back({"a", "a", "#111", {1, 2}});
  EXPECT_EQ(xml_problem(demo::render_histogram(h)), "");
}

// The sweep takes every family: each run at its budget, MoE families with their causal (no
// capacity) loss too, one frontier per family in the page.
TEST(Sweep, MoeFamiliesAtEqualFlops) {
  auto dir = temp_dir("sweep_moe");
  tiny_texts(dir);
  const std::string out = dir + "/out";
  auto r = run_modlm("sweep --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budgets 1e9 --sizes 32x2"
                     " --families dense,moe,mode_staged,mode_integrated --vocab-size 300 --seq-len 32 --batch-size 4 --eval-windows 4 --no-progress");
  ASSERT_EQ(r.code, 0) << r.out;
  std::vector<json> recs;
  std::ifstream in(out + "/sweep.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) recs.push_back(json::parse(line));
  ASSERT_EQ(recs.size(), 4u);
  for (const auto& rec : recs) {
    const std::string f = rec["family"];
    const double step = 3.0 * 4 * rec["flops_per_forward"].get<double>();
    EXPECT_LE(rec["train_flops"].get<double>(), 1e9) << f;
    EXPECT_GT(rec["train_flops"].get<double>(), 1e9 - step) << f;
    EXPECT_EQ(rec["val_loss_causal"].is_number(), f != "dense") << f;  // routing or expert capacity
    // at()/contains(), not a const operator[] on a key that may be absent (undefined behaviour,
    // which the sanitizer build reported here).
    const json& model = rec.at("run").at("model");
    const json moe = model.contains("moe") ? model.at("moe") : json();
    EXPECT_EQ(moe.is_object(), f != "dense") << f;
    if (f == "mode_integrated") {
      EXPECT_EQ(moe.at("n_noop"), 4);
    }
    EXPECT_EQ(model.contains("routing") && model.at("routing").is_object(), f == "mode_staged") << f;
  }
  const std::string html = slurp(out + "/sweep.html");
  EXPECT_EQ(xml_problem(html), "");
  if (python_available()) {
    json page = parse_page(out + "/sweep.html");
    for (const char* f : {"dense", "moe", "mode_staged", "mode_integrated"})
      EXPECT_TRUE(page["polylines"].contains(std::string("frontier-") + f)) << f;
  }
  EXPECT_EQ(run_modlm("sweep --out " + out + "2 --budgets 1e9 --sizes 32x2 --families dense,foo").code, 2);
  EXPECT_EQ(run_modlm("sweep --out " + out + "2 --budgets 1e9 --sizes 32x1 --families mod").code, 2);  // no routed layer
}

TEST(Sweep, ParsesSizes) {
  auto z = demo::parse_sweep_size("256x8");
  EXPECT_EQ(z.d_model, 256);
  EXPECT_EQ(z.n_layers, 8);
  EXPECT_EQ(z.n_heads, 4);
  EXPECT_EQ(z.d_ff, 704);
  z = demo::parse_sweep_size("96x3x2x256");
  EXPECT_EQ(z.n_heads, 2);
  EXPECT_EQ(z.d_ff, 256);
  for (const char* bad : {"", "256", "256x", "x8", "256x8x4", "abcx2", "-1x2", "100x2x3x64"})
    EXPECT_THROW(demo::parse_sweep_size(bad), modlm::Error) << bad;
}

TEST(Demo, UsageErrors) {
  EXPECT_EQ(run_modlm("demo --help").code, 0);
  EXPECT_EQ(run_modlm("sweep --help").code, 0);
  auto dir = temp_dir("demo_usage");
  EXPECT_EQ(run_modlm("demo --out " + dir + "/o --minutes 1 --budget-flops 1e9").code, 2);
  EXPECT_EQ(run_modlm("demo --out " + dir + "/o --data " + dir + "/x.txt").code, 2);  // --data without --val
  EXPECT_EQ(run_modlm("demo --out " + dir + "/o --data " + dir + "/x.txt --val " + dir + "/y.txt").code, 4);
  EXPECT_EQ(run_modlm("sweep --out " + dir + "/s --budgets 1e9 --sizes 32").code, 2);
  EXPECT_EQ(run_modlm("sweep --out " + dir + "/s --budgets -1 --sizes 32x2").code, 2);
}

// A tiny demo end to end: same FLOP budget (within one step) with MoD taking more steps, the
// report is well-formed and plots exactly the numbers of summary.json, a rerun reuses it all.
TEST(Demo, TinyDemoEndToEnd) {
  auto dir = temp_dir("demo_tiny");
  tiny_texts(dir);
  const std::string out = dir + "/out";
  const std::string args = "demo --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budget-flops 2e9" + tiny_model_flags();
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_modlm(args);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
  EXPECT_NE(r.out.find("validation loss, top-k routing"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("report.html"), std::string::npos);

  json s = json::parse(slurp(out + "/summary.json"));
  const json& d = s["models"]["dense"];
  const json& m = s["models"]["mod"];
  const double budget = s["budget_flops"];
  EXPECT_EQ(budget, 2e9);
  // Iso-FLOP: each model within one of its own steps of the budget, never above it.
  for (const json* x : {&d, &m}) {
    const double f = (*x)["train_flops"], step = (*x)["flops_per_step"];
    EXPECT_LE(f, budget);
    EXPECT_GT(f, budget - step);
    EXPECT_EQ((*x)["steps"].get<double>() * step, f);
    EXPECT_EQ(step, 3.0 * 4 * (*x)["flops_per_forward"].get<double>());
  }
  EXPECT_GT(m["steps"].get<int64_t>(), d["steps"].get<int64_t>());
  EXPECT_LT(m["flops_per_forward"].get<double>(), d["flops_per_forward"].get<double>());
  EXPECT_TRUE(s["comparison"]["same_budget"].get<bool>());
  // Every measured field is there (decode too, when the build has the KV-cache decoder).
  for (const char* k : {"params", "train_seconds", "val_loss_topk", "val_loss_causal", "processed_fraction"}) {
    EXPECT_TRUE(d[k].is_number()) << k;
    EXPECT_TRUE(m[k].is_number()) << k;
  }
  EXPECT_TRUE(m["predictor_accuracy"].is_number());
  EXPECT_TRUE(d["predictor_accuracy"].is_null());
  EXPECT_TRUE(std::isfinite(m["val_loss_topk"].get<double>()));
  if (m["decode_tokens_per_second"].is_number()) {
    EXPECT_GT(m["decode_tokens_per_second"].get<double>(), 0);
    // Measured side by side: one thread count for both models, 3 rounds.
    EXPECT_EQ(s["decode_race"]["rounds"], 3);
    EXPECT_GE(s["decode_race"]["threads"].get<int>(), 1);
    EXPECT_EQ(m["decode_threads"], s["decode_race"]["threads"]);
    EXPECT_EQ(d["decode_threads"], s["decode_race"]["threads"]);
    EXPECT_GT(d["decode_tokens_per_second"].get<double>(), 0);
    EXPECT_LE(m["kv_cache_bytes"].get<double>(), d["kv_cache_bytes"].get<double>());  // routed layers cache only what they process
    EXPECT_TRUE(m["sample"]["continuation"].is_string());
  }
  // The routing picture: T tokens x routed layers.
  const int T = 32;
  ASSERT_EQ(s["routing"]["tokens"].size(), (size_t)T);
  ASSERT_EQ(s["routing"]["layers"].size(), 2u);  // layers 1 and 3 of 4
  for (const auto& l : s["routing"]["layers"]) {
    int processed = 0;
    for (const auto& p : l["processed"]) processed += p.get<int>();
    EXPECT_EQ(processed, 4);  // ceil(0.125 * 32)
  }

  // The page: well-formed, and its plotted series are summary.json's numbers.
  const std::string html = slurp(out + "/report.html");
  EXPECT_EQ(xml_problem(html), "");
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/"));  // no external resources
  EXPECT_EQ(html.find("https://"), std::string::npos);
  if (python_available()) {
    json page = parse_page(out + "/report.html");
    EXPECT_EQ(page["data"], s);
    for (const char* name : {"dense", "mod"}) {
      const json& c = s["models"][name]["curves"];
      ASSERT_GE(c["val"]["loss"].size(), 2u) << name;
      expect_series(page, std::string("val-flops-") + name, c["val"]["flops"], c["val"]["loss"]);
      expect_series(page, std::string("val-time-") + name, c["val"]["time"], c["val"]["loss"]);
      EXPECT_EQ(page["polylines"][std::string("train-flops-") + name]["points"].get<size_t>(), c["train"]["loss"].size());
    }
    const json& acc = m["predictor_accuracy_curve"];
    for (const auto& l : acc["layers"])
      expect_series(page, "accuracy-layer-" + std::to_string(l["layer"].get<int>()), acc["step"], l["accuracy"]);
    EXPECT_EQ(page["routing_cells"].get<int>(), T * 2);
    EXPECT_GT(page["hist_rects"].get<int>(), 0);
  }

  // A rerun reuses the finished runs and the cached evaluation: nothing is trained again.
  const int64_t log_d = mtime_ns(out + "/dense/log.jsonl"), log_m = mtime_ns(out + "/mod/log.jsonl");
  auto r2 = run_modlm(args);
  ASSERT_EQ(r2.code, 0) << r2.out;
  EXPECT_NE(r2.out.find("reusing the finished run"), std::string::npos) << r2.out;
  EXPECT_EQ(r2.out.find("evaluating"), std::string::npos) << r2.out;
  EXPECT_EQ(mtime_ns(out + "/dense/log.jsonl"), log_d);
  EXPECT_EQ(mtime_ns(out + "/mod/log.jsonl"), log_m);
  json s2 = json::parse(slurp(out + "/summary.json"));
  EXPECT_EQ(s2["models"]["mod"]["val_loss_topk"], m["val_loss_topk"]);
  // Other settings in the same folder are refused rather than mixed in.
  EXPECT_EQ(run_modlm("demo --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budget-flops 3e9" + tiny_model_flags()).code, 2);
}

// Every family of SPEC §3 in one demo: each within one step of the same budget, compared with
// dense, with its MoE statistics; the page plots each and shows each MoE family's expert load.
TEST(Demo, AllFamiliesAtEqualFlops) {
  auto dir = temp_dir("demo_families");
  tiny_texts(dir);
  const std::string out = dir + "/out";
  const std::string args = "demo --out " + out + " --data " + dir + "/train.txt --val " + dir +
                           "/val.txt --budget-flops 2e9 --family dense,mod,moe,mode_staged,mode_integrated" + tiny_model_flags();
  auto r = run_modlm(args);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* label : {"integrated MoDE vs dense", "MoE: dropped by capacity", "MoE: sent to no-op experts"})
    EXPECT_NE(r.out.find(label), std::string::npos) << label << "\n" << r.out;
  json s = json::parse(slurp(out + "/summary.json"));
  const std::vector<std::string> fams = {"dense", "mod", "moe", "mode_staged", "mode_integrated"};
  EXPECT_EQ(s["families"], json(fams));
  EXPECT_EQ(s["baseline"], "dense");
  const double budget = s["budget_flops"];
  for (const auto& f : fams) {
    const json& m = s["models"][f];
    const double fl = m["train_flops"], step = m["flops_per_step"];
    EXPECT_LE(fl, budget) << f;
    EXPECT_GT(fl, budget - step) << f;
    EXPECT_EQ(m["family"], f);
    EXPECT_TRUE(std::isfinite(m["val_loss_topk"].get<double>())) << f;
    EXPECT_TRUE(m["val_loss_causal"].is_number()) << f;
    const json& c = m["config"];
    const bool routed = f == "mod" || f == "mode_staged", moe = f != "dense" && f != "mod";
    EXPECT_EQ(c.contains("routing") && c["routing"].is_object(), routed) << f;
    EXPECT_EQ(c.contains("moe") && c["moe"].is_object(), moe) << f;
    EXPECT_EQ(m.contains("moe_dropped_fraction"), moe) << f;
    if (moe) {
      EXPECT_EQ(c["moe"]["n_experts"], 4);
      EXPECT_EQ(c["moe"]["d_expert"], 96);  // = d_ff: top-1 costs what the dense MLP costs
      EXPECT_EQ(c["moe"]["n_noop"], f == "mode_integrated" ? 4 : 0);
      EXPECT_EQ(m["eval"]["topk"]["moe"].size(), 4u);  // every layer
      EXPECT_TRUE(m["eval"].contains("causal"));       // capacity off, as in generation
    }
    if (f != "dense") {
      const json& cmp = s["comparisons"][f];
      EXPECT_TRUE(cmp["same_budget"].get<bool>()) << f;
      EXPECT_DOUBLE_EQ(cmp["val_loss_diff_topk"].get<double>(), m["val_loss_topk"].get<double>() - s["models"]["dense"]["val_loss_topk"].get<double>());
    }
  }
  EXPECT_FALSE(s["comparisons"].contains("dense"));
  EXPECT_EQ(s["comparison"]["family"], "mod");
  EXPECT_GT(s["models"]["mode_integrated"]["moe_noop_fraction"].get<double>(), 0.0);
  EXPECT_EQ(s["models"]["moe"]["moe_noop_fraction"].get<double>(), 0.0);
  // Cheaper forwards take more steps: MoD and staged MoDE (routed) and integrated MoDE (no-ops).
  for (const char* f : {"mod", "mode_staged", "mode_integrated"})
    EXPECT_GT(s["models"][f]["steps"].get<int64_t>(), s["models"]["dense"]["steps"].get<int64_t>()) << f;
  EXPECT_EQ(s["routing_family"], "mod");
  const std::string html = slurp(out + "/report.html");
  EXPECT_EQ(xml_problem(html), "");
  if (python_available()) {
    json page = parse_page(out + "/report.html");
    EXPECT_EQ(page["data"], s);
    for (const auto& f : fams) {
      const json& c = s["models"][f]["curves"];
      expect_series(page, "val-flops-" + f, c["val"]["flops"], c["val"]["loss"]);
      expect_series(page, "val-time-" + f, c["val"]["time"], c["val"]["loss"]);
    }
    for (const char* f : {"moe", "mode_staged", "mode_integrated"}) {
      const std::string id = std::string("moe-load-") + f;
      ASSERT_TRUE(page["tables"].contains(id)) << id;
      const json& rows = page["tables"][id];
      const json& layers = s["models"][f]["eval"]["topk"]["moe"];
      ASSERT_EQ(rows.size(), layers.size()) << id;
      const size_t G = f == std::string("mode_integrated") ? 8 : 4;
      for (size_t i = 0; i < rows.size(); ++i) {
        ASSERT_EQ(rows[i].size(), 1 + G + 2) << id;  // layer, loads, dropped, balance
        EXPECT_EQ(rows[i][1].get<std::string>(), demo::fmt_fixed(100 * layers[i]["load"][0].get<double>(), 1) + " %");
      }
    }
  }
  // A rerun reuses all five runs.
  auto r2 = run_modlm(args);
  ASSERT_EQ(r2.code, 0) << r2.out;
  EXPECT_EQ(r2.out.find(": training "), std::string::npos) << r2.out;
  EXPECT_NE(r2.out.find("integrated MoDE: reusing the finished run"), std::string::npos) << r2.out;
  EXPECT_EQ(r2.out.find("evaluating"), std::string::npos) << r2.out;
  // Another family list in the same folder is another demo: refused.
  EXPECT_EQ(run_modlm("demo --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budget-flops 2e9 --family dense,moe" +
                      tiny_model_flags()).code, 2);
}

TEST(Demo, FamilyListErrors) {
  EXPECT_EQ(parse_families("dense,mode_integrated", "--family"), (std::vector<std::string>{"dense", "mode_integrated"}));
  EXPECT_EQ(parse_families("moe", "--family"), (std::vector<std::string>{"moe"}));
  for (const char* bad : {"", "dense,", "dense,dense", "dense,mixture", "MoD", "dense;mod"})
    EXPECT_THROW(parse_families(bad, "--family"), Error) << bad;
  auto dir = temp_dir("demo_family_usage");
  EXPECT_EQ(run_modlm("demo --out " + dir + "/o --family dense,foo").code, 2);
  EXPECT_EQ(run_modlm("demo --out " + dir + "/o --family dense,mod --n-layers 1").code, 2);  // no routed layer
  EXPECT_EQ(run_modlm("demo --out " + dir + "/o --family moe --n-experts 0").code, 2);
  EXPECT_FALSE(fs::exists(dir + "/o"));  // nothing written on a usage error
}

// Ctrl-C stops the demo cleanly (exit 130, checkpointed), and the same command continues.
TEST(Demo, InterruptThenResume) {
  auto dir = temp_dir("demo_int");
  tiny_texts(dir);
  const std::string out = dir + "/out";
  const std::string args = "demo --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budget-flops 4e10" + tiny_model_flags();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string cmd = std::string("exec env OMP_WAIT_POLICY=passive ") + MODLM_BINARY + " " + args + " > " + dir + "/first.log 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Wait until the dense run has logged a step, then press Ctrl-C.
  const std::string log = out + "/dense/log.jsonl";
  for (int i = 0; i < 600; ++i) {
    if (fs::exists(log) && fs::file_size(log) > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGINT);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st)) << slurp(dir + "/first.log");
  const int code = WEXITSTATUS(st);
  if (code == 0) GTEST_SKIP() << "the demo finished before the interrupt arrived";
  ASSERT_EQ(code, 130) << slurp(dir + "/first.log");
  EXPECT_FALSE(fs::exists(out + "/summary.json"));
  ASSERT_TRUE(fs::exists(out + "/dense/latest")) << slurp(dir + "/first.log");
  auto r = run_modlm(args);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming"), std::string::npos) << r.out;
  json s = json::parse(slurp(out + "/summary.json"));
  json plan = json::parse(slurp(out + "/plan.json"));
  EXPECT_EQ(s["models"]["dense"]["steps"], plan["dense_steps"]);
  EXPECT_EQ(s["models"]["mod"]["steps"], plan["mod_steps"]);
}

// A sweep trains each (budget, size, family) once; a rerun skips what is finished, and the page
// plots sweep.jsonl.
TEST(Sweep, ResumedSweepSkipsFinishedRuns) {
  auto dir = temp_dir("sweep");
  tiny_texts(dir);
  const std::string out = dir + "/out";
  const std::string args = "sweep --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budgets 1e9,2e9 --sizes 32x2,48x2x2x128"
                           " --vocab-size 300 --seq-len 32 --batch-size 4 --eval-windows 8 --no-progress";
  auto r = run_modlm(args);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("sweep: 8 trained, 0 skipped"), std::string::npos) << r.out;
  std::vector<json> recs;
  {
    std::ifstream in(out + "/sweep.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) recs.push_back(json::parse(line));
  }
  ASSERT_EQ(recs.size(), 8u);
  for (const auto& rec : recs) {
    const double step = 3.0 * 4 * rec["flops_per_forward"].get<double>();
    EXPECT_LE(rec["train_flops"].get<double>(), rec["budget"].get<double>());
    EXPECT_GT(rec["train_flops"].get<double>(), rec["budget"].get<double>() - step);
    EXPECT_EQ(rec["val_loss_causal"].is_number(), rec["family"] == "mod");
  }
  std::map<std::string, int64_t> mt;
  for (const auto& rec : recs) mt[rec["name"]] = mtime_ns(rec["run_dir"].get<std::string>() + "/log.jsonl");

  auto r2 = run_modlm(args);
  ASSERT_EQ(r2.code, 0) << r2.out;
  EXPECT_NE(r2.out.find("sweep: 0 trained, 8 skipped"), std::string::npos) << r2.out;
  for (const auto& rec : recs) EXPECT_EQ(mtime_ns(rec["run_dir"].get<std::string>() + "/log.jsonl"), mt[rec["name"]]);
  // Adding a budget trains only the new runs.
  auto r3 = run_modlm("sweep --out " + out + " --data " + dir + "/train.txt --val " + dir + "/val.txt --budgets 1e9,3e9 --sizes 32x2,48x2x2x128"
                      " --vocab-size 300 --seq-len 32 --batch-size 4 --eval-windows 8 --no-progress");
  ASSERT_EQ(r3.code, 0) << r3.out;
  EXPECT_NE(r3.out.find("sweep: 4 trained, 4 skipped"), std::string::npos) << r3.out;

  const std::string html = slurp(out + "/sweep.html");
  EXPECT_EQ(xml_problem(html), "");
  if (python_available()) {
    json page = parse_page(out + "/sweep.html");
    std::vector<json> all;
    std::ifstream in(out + "/sweep.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) all.push_back(json::parse(line));
    ASSERT_EQ(all.size(), 12u);
    EXPECT_EQ(page["data"]["records"], json(all));
    // One curve per (budget, family), points sorted by parameters, and the two frontiers.
    ASSERT_EQ(page["polylines"].size(), 8u);
    for (const char* fam : {"dense", "mod"}) {
      const json& fr = page["polylines"][std::string("frontier-") + fam];
      ASSERT_EQ(fr["points"].get<int>(), 3) << fam;  // budgets 1e9, 2e9, 3e9
      for (size_t i = 0; i < 3; ++i) {
        double best = 1e300;
        for (const auto& rec : all)
          if (rec["family"] == fam && rec["budget"].get<double>() == fr["x"][i].get<double>()) best = std::min(best, rec["val_loss"].get<double>());
        EXPECT_EQ(fr["y"][i].get<double>(), best) << fam << " " << i;
      }
    }
    for (const auto& rec : all) {
      const std::string key = "b" + json(rec["budget"].get<double>()).dump() + "-" + rec["family"].get<std::string>();
      ASSERT_TRUE(page["polylines"].contains(key)) << key;
      const json& pl = page["polylines"][key];
      EXPECT_EQ(pl["points"].get<int>(), 2) << key;
      bool found = false;
      for (size_t i = 0; i < pl["x"].size(); ++i)
        found |= pl["x"][i].get<double>() == rec["params"].get<double>() && pl["y"][i].get<double>() == rec["val_loss"].get<double>();
      EXPECT_TRUE(found) << rec["name"];
    }
  }
}
