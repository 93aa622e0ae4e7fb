// The pages: OUT/report.html for `modlm demo` and OUT/sweep.html for `modlm sweep`. Each is one
// self-contained file (inline CSS and SVG, no script, no network) that is also well-formed XML,
// and carries the numbers it plots in a <script type="application/json" id="modlm-data"> block
// equal to summary.json / sweep.jsonl.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "model/config.h"  // json

namespace modlm::demo {

// The side-by-side table of a demo summary: header = "", one label per model (report order),
// then "<model> vs <baseline>" for every other model; each row = its label, one value per model,
// one comparison per other model ("" where none).
struct DemoTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  size_t n_models = 0, n_ratio = 0;
};
DemoTable demo_table(const json& summary);
std::string demo_table_text(const json& summary);

std::string render_demo_report(const json& summary);

// records: the lines of sweep.jsonl; meta: settings shown in the page.
std::string render_sweep_report(const std::vector<json>& records, const json& meta);

// JSON for embedding in a page: <, > and & escaped as \u003c, \u003e, \u0026 (valid JSON, and
// safe inside <script> and XML); invalid UTF-8 replaced.
std::string embed_json(const json& j);

}  // namespace modlm::demo
