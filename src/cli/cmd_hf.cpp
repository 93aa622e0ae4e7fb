// `modlm import hf HF_DIR OUT_DIR` and `modlm export hf MODEL_DIR OUT_DIR`: Hugging Face Llama
// folders in and out (io/hf_llama.h has the mapping and what is refused).
#include <cstdio>

#include "cli/commands.h"
#include "io/hf_llama.h"
#include "model/config.h"
#include "util/error.h"

namespace modlm::cli {

Command add_import(CLI::App& app) {
  struct Opts {
    std::string in, out;
    bool force = false, json_out = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* top = app.add_subcommand("import", "Bring a model from another tool's format into a modlm folder");
  top->require_subcommand(1);
  CLI::App* sub = top->add_subcommand("hf", "Import a Hugging Face LlamaForCausalLM folder (safetensors, f32/f16/bf16, sharded or not)");
  sub->add_option("HF_DIR", o->in, "folder with config.json, model.safetensors[.index.json] and tokenizer.model")->required();
  sub->add_option("OUT_DIR", o->out, "modlm model folder to write (all or nothing)")->required();
  sub->add_flag("--force", o->force, "replace OUT_DIR if it holds something");
  sub->add_flag("--json", o->json_out, "print a JSON summary");
  sub->footer(
      "Grouped-query attention, tied or untied embeddings; weights are widened to float32 (SPEC §6).\n"
      "Refused with a message naming the field: other architectures, rope_scaling, biases, other activations.\n"
      "Example: modlm import hf ~/llama-hf llama && modlm eval llama --data text.txt");
  return {top, [o]() -> int {
            io::HfImport r;
            io::import_hf_llama(o->in, o->out, o->force, &r);
            const ModelConfig& c = r.config;
            if (o->json_out) {
              json j{{"out", o->out},           {"dtype", r.dtype},       {"shards", r.shards},
                     {"tensors", r.tensors},    {"tokenizer", r.tokenizer}, {"config", c.to_json()}};
              std::printf("%s\n", j.dump().c_str());
            } else {
              std::printf("imported %s -> %s: D=%d L=%d H=%d (kv %d) F=%d V=%d, %zu tensors (%s) from %zu file(s), %s\n",
                          o->in.c_str(), o->out.c_str(), c.d_model, c.n_layers, c.n_heads, c.kv_heads(), c.d_ff,
                          c.vocab_size, r.tensors, r.dtype.c_str(), r.shards.size(), r.tokenizer.c_str());
            }
            return 0;
          }};
}

Command add_export(CLI::App& app) {
  struct Opts {
    std::string in, out, dtype;
    bool force = false, json_out = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* top = app.add_subcommand("export", "Write a modlm model in another tool's format");
  top->require_subcommand(1);
  CLI::App* sub = top->add_subcommand("hf", "Export the dense part as a Hugging Face LlamaForCausalLM folder");
  sub->add_option("MODEL_DIR", o->in, "modlm model folder")->required();
  sub->add_option("OUT_DIR", o->out, "folder to write (all or nothing)")->required();
  sub->add_option("--dtype", o->dtype, "f32, bf16 or f16 (default: the dtype it was imported from, else f32)");
  sub->add_flag("--force", o->force, "replace OUT_DIR if it holds something");
  sub->add_flag("--json", o->json_out, "print a JSON summary");
  sub->footer(
      "Routers and causal predictors of an MoD model are dropped (HF Llama has no place for them): the\n"
      "export is the dense backbone. Loads in transformers with AutoModelForCausalLM.from_pretrained(OUT_DIR).");
  return {top, [o]() -> int {
            io::HfExport r = io::export_hf_llama(o->in, o->out, o->dtype, o->force);
            if (o->json_out) {
              std::printf("%s\n", json{{"out", o->out}, {"dtype", r.dtype}, {"tensors", r.tensors}, {"dropped", r.dropped}}.dump().c_str());
            } else {
              std::printf("exported %s -> %s: %zu tensors in %s", o->in.c_str(), o->out.c_str(), r.tensors, r.dtype.c_str());
              if (r.dropped) std::printf(", %d MoD tensors (routers, predictors) left out", r.dropped);
              std::printf("\n");
            }
            return 0;
          }};
}

}  // namespace modlm::cli
