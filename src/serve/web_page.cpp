// The page `modlm serve` answers GET / with: one file, no external scripts or fonts (works
// offline). It streams /v1/completions (server-sent events) into the page as tokens arrive.
// URL parameters ?prompt=...&max_tokens=...&temperature=...&key=...&auto=1 fill the form (and, with auto=1,
// submit it at once), so a browser test can load one URL and read the streamed text.
#include "serve/server.h"

namespace modlm::serve {

const char* const kWebPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modlm serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
textarea{width:100%;height:7rem;font:inherit;box-sizing:border-box}
#out{white-space:pre-wrap;border:1px solid #ccc;border-radius:4px;padding:.8rem;min-height:6rem;background:#fafafa}
#out .prompt{color:#777}
label{margin-right:1rem} input[type=number]{width:5rem}
#stats{color:#555;font-size:.9rem;margin-top:.4rem}
</style></head><body>
<h1>modlm serve</h1>
<p>Model: <b id="model">…</b></p>
<form id="f">
<textarea id="prompt" placeholder="Type a prompt">Once upon a time</textarea><br>
<label>max tokens <input id="max_tokens" type="number" value="64" min="1"></label>
<label>temperature <input id="temperature" type="number" value="0.8" min="0" max="2" step="0.1"></label>
<label>API key <input id="key" type="password" size="12"></label>
<button id="go" type="submit">Generate</button> <button id="stop" type="button" disabled>Stop</button>
</form>
<h2>Output</h2>
<div id="out"></div>
<div id="stats"></div>
<script>
const $ = id => document.getElementById(id);
const q = new URLSearchParams(location.search);
for (const k of ["prompt", "max_tokens", "temperature", "key"]) if (q.has(k)) $(k).value = q.get(k);
let ctl = null;
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
fetch("/v1/models", {headers: headers()}).then(r => r.json()).then(j => { $("model").textContent = j.data ? j.data[0].id : "?"; }).catch(() => {});
async function run(ev) {
  if (ev) ev.preventDefault();
  const out = $("out"); out.textContent = "";
  const p = document.createElement("span"); p.className = "prompt"; p.textContent = $("prompt").value; out.appendChild(p);
  const gen = document.createElement("span"); gen.id = "generated"; out.appendChild(gen);
  $("stats").textContent = ""; $("go").disabled = true; $("stop").disabled = false;
  ctl = new AbortController();
  const t0 = performance.now(); let first = 0, pieces = 0, finish = "";
  try {
    const r = await fetch("/v1/completions", {method: "POST", headers: headers(), signal: ctl.signal,
      body: JSON.stringify({prompt: $("prompt").value, max_tokens: +$("max_tokens").value,
                            temperature: +$("temperature").value, stream: true, stream_options: {include_usage: true}})});
    if (!r.ok) { const j = await r.json(); throw new Error(j.error ? j.error.message : r.statusText); }
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "", usage = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!ev.startsWith("data: ")) continue;
        const data = ev.slice(6);
        if (data === "[DONE]") { document.body.dataset.done = "1"; continue; }
        const j = JSON.parse(data);
        if (j.usage) usage = j.usage;
        for (const c of j.choices || []) {
          if (c.text) { if (!first) first = performance.now(); gen.textContent += c.text; pieces++; }
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
      const s = (performance.now() - t0) / 1000;
      $("stats").textContent = (usage ? usage.completion_tokens : pieces) + " tokens, " + s.toFixed(2) + " s" +
        (first ? ", first token after " + ((first - t0) / 1000).toFixed(2) + " s" : "") + (finish ? ", finish: " + finish : "");
    }
  } catch (e) {
    if (e.name !== "AbortError") { const err = document.createElement("div"); err.id = "error"; err.textContent = "Error: " + e.message; out.appendChild(err); }
  } finally { $("go").disabled = false; $("stop").disabled = true; ctl = null; }
}
$("f").addEventListener("submit", run);
$("stop").addEventListener("click", () => ctl && ctl.abort());
if (q.get("auto") === "1") run();
</script>
</body></html>
)HTML";

}  // namespace modlm::serve
