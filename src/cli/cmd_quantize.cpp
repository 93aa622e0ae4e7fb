// `modlm quantize MODEL_DIR OUT_DIR --dtype bf16|f16|q8`: the matrices a decode step streams
// stored in 16 bits or as 8-bit blocks (infer/weights.h has the format; docs/quantize.md).
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "infer/weights.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "ops/bf16.h"
#include "ops/q8.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::cli {

namespace {

// Members of a fused product (q|k|v, w1|w3) share a key: their data, then their scales, are
// written back to back so a decoder maps the group as one matrix.
std::string group_of(const std::string& n) {
  for (const char* part : {"attn.wq.weight", "attn.wk.weight", "attn.wv.weight"})
    if (n.size() > std::strlen(part) && n.ends_with(part)) return n.substr(0, n.size() - std::strlen(part)) + "attn.qkv";
  for (const char* part : {"w1.weight", "w3.weight"})
    if (n.size() > std::strlen(part) && n.ends_with(part)) return n.substr(0, n.size() - std::strlen(part)) + "w13";
  return n;
}

}  // namespace

Command add_quantize(CLI::App& app) {
  struct Opts {
    std::string in, out, dtype;
    bool force = false, json_out = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("quantize", "Store a model's matrices in bf16, f16 or 8 bits (q8) for faster decoding");
  sub->add_option("MODEL_DIR", o->in, "model folder (float32)")->required();
  sub->add_option("OUT_DIR", o->out, "folder to write (all or nothing)")->required();
  sub->add_option("--dtype", o->dtype, "bf16, f16, or q8 (int8 with one float scale per 32 weights of a row)")->required();
  sub->add_flag("--force", o->force, "replace OUT_DIR if it holds something");
  sub->add_flag("--json", o->json_out, "print a JSON summary");
  sub->footer(
      "Attention, MLP and expert matrices, the embeddings and the LM head are stored in the format (same tensor\n"
      "names; q8 adds NAME.scales); norms, routers, predictors and MoE gates stay float32. generate, serve and\n"
      "bench read the folder as stored; eval measures the quantized model's loss (its weights dequantized).\n"
      "Example: modlm quantize llama llama-q8 --dtype q8 && modlm generate llama-q8 --prompt 'Hello'");
  return {sub, [o]() -> int {
            const infer::MatFormat fmt = infer::parse_format(o->dtype, "--dtype");
            if (fmt == infer::MatFormat::F32) throw usage_error("--dtype must be bf16, f16 or q8 (the folder is float32 already)");
            Model<float> m = io::load_model(o->in);
            const ModelConfig& c = m.config();
            std::vector<std::vector<uint8_t>> bufs;
            std::vector<io::TensorRef> refs, pending_scales;
            std::string group;
            double in_bytes = 0, out_bytes = 0, worst = 0;
            auto flush = [&]() {
              for (auto& r : pending_scales) refs.push_back(r);
              pending_scales.clear();
            };
            for (const ParamInfo& p : m.layout().params()) {
              const float* src = m.params().data() + p.offset;
              in_bytes += 4.0 * p.numel;
              if (group_of(p.name) != group) flush(), group = group_of(p.name);
              if (!infer::is_decode_matrix(p.name)) {
                refs.push_back({p.name, io::DType::F32, p.shape, src});
                out_bytes += 4.0 * p.numel;
                continue;
              }
              const int rows = (int)p.shape[0], cols = (int)p.shape[1];
              if (fmt == infer::MatFormat::Q8) {
                const int nb = q8_blocks(cols);
                bufs.emplace_back(p.numel);
                int8_t* q = reinterpret_cast<int8_t*>(bufs.back().data());
                bufs.emplace_back((size_t)rows * nb * sizeof(float));
                float* sc = reinterpret_cast<float*>(bufs.back().data());
                quantize_q8(src, rows, cols, q, sc);
                std::vector<float> back(p.numel);
                dequantize_q8(q, sc, rows, cols, back.data());
                for (size_t i = 0; i < p.numel; ++i)
                  worst = std::max(worst, std::abs((double)src[i] - back[i]) / std::max(1e-30, (double)sc[(i / cols) * nb + (i % cols) / kQ8Block]));
                refs.push_back({p.name, io::DType::I8, p.shape, q});
                pending_scales.push_back({p.name + ".scales", io::DType::F32, {rows, nb}, sc});
                out_bytes += p.numel + 4.0 * rows * nb;
              } else {
                bufs.emplace_back(p.numel * 2);
                uint16_t* h = reinterpret_cast<uint16_t*>(bufs.back().data());
                const size_t bad = to_16bit(src, p.numel, h, fmt == infer::MatFormat::F16);
                if (bad < p.numel)
                  throw bad_input(o->in + ": tensor '" + p.name + "' holds " + std::to_string(src[bad]) + ", beyond the f16 range (use --dtype bf16)");
                refs.push_back({p.name, fmt == infer::MatFormat::BF16 ? io::DType::BF16 : io::DType::F16, p.shape, h});
                out_bytes += 2.0 * p.numel;
              }
            }
            flush();
            json cj = c.to_json();
            cj["quantization"] = fmt == infer::MatFormat::Q8 ? json{{"format", "q8_0"}, {"block_size", kQ8Block}, {"scales", "F32"}}
                                                              : json{{"format", infer::format_name(fmt)}};
            const std::string text = cj.dump(2) + "\n";
            write_folder_atomically(o->out, o->force, [&](const std::string& tmp) {
              io::write_safetensors(tmp + "/model.safetensors", refs, {{"format", "pt"}, {"modlm_format", "modlm-1"}});
              atomic_write_file(tmp + "/config.json", [&](std::FILE* f) { fwrite_checked(f, text.data(), text.size(), tmp + "/config.json"); });
              io::copy_tokenizer_files(o->in, tmp);
              if (file_exists(o->in + "/hf")) std::filesystem::copy(o->in + "/hf", tmp + "/hf", std::filesystem::copy_options::recursive);
            });
            if (o->json_out) {
              json j{{"out", o->out}, {"dtype", infer::format_name(fmt)}, {"bytes_before", in_bytes}, {"bytes_after", out_bytes}};
              if (fmt == infer::MatFormat::Q8) j["max_rounding_error_in_scales"] = worst;
              std::printf("%s\n", j.dump().c_str());
            } else {
              std::printf("quantized %s -> %s (%s): %.1f MB -> %.1f MB\n", o->in.c_str(), o->out.c_str(), infer::format_name(fmt), in_bytes / 1e6,
                          out_bytes / 1e6);
            }
            return 0;
          }};
}

}  // namespace modlm::cli
