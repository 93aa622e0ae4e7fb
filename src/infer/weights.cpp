#include "infer/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "infer/decoder.h"
#include "io/model_dir.h"
#include "ops/bf16.h"
#include "util/error.h"

namespace modlm::infer {

const char* format_name(MatFormat f) {
  switch (f) {
    case MatFormat::F32: return "f32";
    case MatFormat::BF16: return "bf16";
    case MatFormat::F16: return "f16";
    case MatFormat::Q8: return "q8";
  }
  return "?";
}

MatFormat parse_format(const std::string& s, const char* flag) {
  if (s == "f32") return MatFormat::F32;
  if (s == "bf16") return MatFormat::BF16;
  if (s == "f16") return MatFormat::F16;
  if (s == "q8") return MatFormat::Q8;
  throw usage_error(std::string(flag) + " must be f32, bf16, f16 or q8, got \"" + s + "\"");
}

size_t element_bytes(MatFormat f) { return f == MatFormat::F32 ? 4 : f == MatFormat::Q8 ? 1 : 2; }

double bytes_per_weight(MatFormat f) {
  switch (f) {
    case MatFormat::F32: return 4.0;
    case MatFormat::BF16:
    case MatFormat::F16: return 2.0;
    case MatFormat::Q8: return 1.0 + 4.0 / kQ8Block;
  }
  return 4.0;
}

void Matrix::dequantize_rows(int r0, int n, float* dst) const {
  const size_t c = (size_t)cols;
  switch (fmt) {
    case MatFormat::F32:
      std::memcpy(dst, (const float*)data + (size_t)r0 * c, sizeof(float) * n * c);
      break;
    case MatFormat::BF16: {
      const uint16_t* s = (const uint16_t*)data + (size_t)r0 * c;
      for (size_t i = 0; i < n * c; ++i) dst[i] = bf16_to_float(s[i]);
      break;
    }
    case MatFormat::F16: {
      const uint16_t* s = (const uint16_t*)data + (size_t)r0 * c;
      for (size_t i = 0; i < n * c; ++i) dst[i] = f16_to_float(s[i]);
      break;
    }
    case MatFormat::Q8:
      dequantize_q8((const int8_t*)data + (size_t)r0 * c, scales + (size_t)r0 * q8_blocks(cols), n, cols, dst);
      break;
  }
}

void matvec(const Matrix& W, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate) {
  switch (W.fmt) {
    case MatFormat::F32: return matvec((const float*)W.data, W.rows, W.cols, X, ldx, B, Y, ldy, accumulate);
    case MatFormat::BF16: return matvec((const uint16_t*)W.data, W.rows, W.cols, X, ldx, B, Y, ldy, accumulate);
    case MatFormat::F16: return matvec((const Half*)W.data, W.rows, W.cols, X, ldx, B, Y, ldy, accumulate);
    case MatFormat::Q8: return matvec_q8((const int8_t*)W.data, W.scales, W.rows, W.cols, X, ldx, B, Y, ldy, accumulate);
  }
}

namespace {

// A float matrix converted into an owned buffer of the format.
Matrix convert(const float* src, int rows, int cols, MatFormat fmt, std::vector<AlignedVector<uint8_t>>& owned) {
  Matrix m;
  m.fmt = fmt, m.rows = rows, m.cols = cols, m.f32 = src;
  const size_t n = (size_t)rows * cols;
  if (fmt == MatFormat::F32) {
    m.data = src;
    return m;
  }
  if (fmt == MatFormat::Q8) {
    const size_t nb = (size_t)rows * q8_blocks(cols);
    owned.emplace_back((n + 63) / 64 * 64 + nb * sizeof(float));
    uint8_t* base = owned.back().data();
    float* sc = (float*)(base + (n + 63) / 64 * 64);
    quantize_q8(src, rows, cols, (int8_t*)base, sc);
    m.data = base, m.scales = sc;
    return m;
  }
  owned.emplace_back(n * 2);
  uint16_t* h = (uint16_t*)owned.back().data();
  to_16bit(src, n, h, fmt == MatFormat::F16);  // an f16 overflow streams as infinity, as f16 rounding gives
  m.data = h;
  return m;
}

}  // namespace

bool is_decode_matrix(const std::string& n) {
  auto ends = [&](const char* s) { return n.size() >= std::strlen(s) && n.compare(n.size() - std::strlen(s), std::string::npos, s) == 0; };
  if (n == "tok_embeddings.weight" || n == "output.weight") return true;
  if (n.find(".attn.w") != std::string::npos || n.find(".mlp.w") != std::string::npos) return true;
  return n.find(".moe.experts.") != std::string::npos && ends(".weight");
}

std::shared_ptr<const InferenceWeights> InferenceWeights::from_model(const Model<float>& m, MatFormat fmt) {
  auto w = std::make_shared<InferenceWeights>();
  w->cfg_ = m.config();
  w->fmt_ = fmt;
  const ModelConfig& c = w->cfg_;
  w->small_ = ModelWeights<float>::bind(m.layout(), c, const_cast<float*>(m.params().data()));
  const int D = c.d_model, F = c.d_ff, V = c.vocab_size, Q = c.qkv_dim();
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights<float>& W = w->small_.layers[l];
    LayerMatrices L;
    L.wqkv = convert(W.wqkv, Q, D, fmt, w->owned_);
    L.wo = convert(W.wo, D, D, fmt, w->owned_);
    if (W.moe_gate) {
      const int De = c.moe.d_expert;
      for (int e = 0; e < c.moe.n_experts; ++e) {
        L.expert_w13.push_back(convert(W.expert_w13[e], 2 * De, D, fmt, w->owned_));
        L.expert_w2.push_back(convert(W.expert_w2[e], D, De, fmt, w->owned_));
      }
    } else {
      L.w13 = convert(W.w13, 2 * F, D, fmt, w->owned_);
      L.w2 = convert(W.w2, D, F, fmt, w->owned_);
    }
    w->layers_.push_back(std::move(L));
  }
  // The embeddings in the format too, as a quantized folder stores them (lookups read the
  // model's float rows, `f32`); tied: the head is the embedding table, converted once.
  w->embed_ = convert(w->small_.tok_embeddings, V, D, fmt, w->owned_);
  w->head_ = c.tie_embeddings ? w->embed_ : convert(w->small_.output, V, D, fmt, w->owned_);
  return w;
}

std::shared_ptr<const InferenceWeights> InferenceWeights::load(const std::string& dir) {
  auto w = std::make_shared<InferenceWeights>();
  w->cfg_ = io::load_model_config(dir);
  const ModelConfig& c = w->cfg_;
  const ParamLayout layout(c);
  const std::string path = dir + "/model.safetensors";
  w->files_.push_back(io::SafetensorsFile::open(path));
  const io::SafetensorsFile& f = w->files_.back();

  std::set<std::string> known;
  std::map<std::string, Matrix> mats;
  std::map<std::string, float*> small;
  for (const ParamInfo& p : layout.params()) {
    known.insert(p.name);
    const io::TensorInfo* t = f.find(p.name);
    if (!t) throw bad_input(path + ": missing tensor '" + p.name + "' " + io::shape_str(p.shape) + " that config.json implies");
    if (t->shape != p.shape)
      throw bad_input(path + ": tensor '" + p.name + "' has shape " + io::shape_str(t->shape) + ", expected " + io::shape_str(p.shape));
    if (!is_decode_matrix(p.name) || t->dtype == io::DType::F64) {
      w->owned_small_.emplace_back(f.read_f32(p.name, p.shape));
      small[p.name] = w->owned_small_.back().data();
      if (!is_decode_matrix(p.name)) continue;
      // An F64 matrix: read as float (a format modlm never writes).
      Matrix m;
      m.fmt = MatFormat::F32, m.rows = (int)p.shape[0], m.cols = (int)p.shape[1];
      m.data = m.f32 = small[p.name];
      mats[p.name] = m;
      continue;
    }
    Matrix m;
    m.rows = (int)p.shape[0], m.cols = (int)p.shape[1];
    const uint8_t* data = f.data(*t);
    const size_t n = (size_t)m.rows * m.cols;
    auto non_finite = [&](auto test) {
      bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static) if (n > 65536)
      for (size_t i = 0; i < n; ++i) bad = bad || test(i);
      if (bad) throw bad_input(path + ": tensor '" + p.name + "' holds a value that is not finite");
    };
    if (t->dtype == io::DType::F32) {
      m.fmt = MatFormat::F32;
      if ((uintptr_t)data % alignof(float)) {  // another writer's odd offset: a copy of our own
        w->owned_.emplace_back(n * 4);
        std::memcpy(w->owned_.back().data(), data, n * 4);
        data = w->owned_.back().data();
      }
      const float* x = (const float*)data;
      non_finite([&](size_t i) { return !std::isfinite(x[i]); });
      m.data = m.f32 = x;
    } else if (t->dtype == io::DType::BF16 || t->dtype == io::DType::F16) {
      m.fmt = t->dtype == io::DType::BF16 ? MatFormat::BF16 : MatFormat::F16;
      if ((uintptr_t)data % 2) {
        w->owned_.emplace_back(n * 2);
        std::memcpy(w->owned_.back().data(), data, n * 2);
        data = w->owned_.back().data();
      }
      const uint16_t* h = (const uint16_t*)data;
      const uint16_t mask = m.fmt == MatFormat::BF16 ? 0x7f80 : 0x7c00;
      non_finite([&](size_t i) { return (h[i] & mask) == mask; });
      m.data = h;
    } else if (t->dtype == io::DType::I8) {
      m.fmt = MatFormat::Q8;
      m.data = data;
      const std::string sn = p.name + ".scales";
      known.insert(sn);
      const std::vector<int64_t> sshape = {m.rows, q8_blocks(m.cols)};
      const io::TensorInfo* st = f.find(sn);
      if (!st) throw bad_input(path + ": the I8 tensor '" + p.name + "' has no '" + sn + "' " + io::shape_str(sshape) + " beside it");
      if (st->dtype != io::DType::F32 || st->shape != sshape)
        throw bad_input(path + ": '" + sn + "' must be F32 " + io::shape_str(sshape) + ", got " + io::dtype_name(st->dtype) + " " +
                        io::shape_str(st->shape));
      const uint8_t* sd = f.data(*st);
      if ((uintptr_t)sd % alignof(float)) {
        w->owned_.emplace_back((size_t)sshape[0] * sshape[1] * 4);
        std::memcpy(w->owned_.back().data(), sd, w->owned_.back().size());
        sd = w->owned_.back().data();
      }
      const float* sc = (const float*)sd;
      const size_t ns = (size_t)sshape[0] * sshape[1];
      for (size_t i = 0; i < ns; ++i)
        if (!std::isfinite(sc[i]) || sc[i] < 0) throw bad_input(path + ": '" + sn + "' holds a scale that is negative or not finite");
      m.scales = sc;
    } else {
      throw bad_input(path + ": tensor '" + p.name + "' has dtype " + io::dtype_name(t->dtype) + "; expected F32, BF16, F16 or I8 (+ .scales)");
    }
    mats[p.name] = m;
  }
  for (const io::TensorInfo& t : f.tensors())
    if (!known.count(t.name)) throw bad_input(path + ": unexpected tensor '" + t.name + "' (not implied by config.json)");

  // Fused groups (q|k|v, w1|w3) must be one matrix: in place when the file holds the parts
  // back to back in one format, else regrouped into an owned copy.
  auto fuse = [&](const std::vector<std::string>& names) {
    std::vector<Matrix> parts;
    for (const auto& n : names) parts.push_back(mats.at(n));
    Matrix g = parts[0];
    int rows = 0;
    bool adjacent = true;
    for (size_t i = 0; i < parts.size(); ++i) {
      const Matrix& p = parts[i];
      if (p.fmt != g.fmt) throw bad_input(path + ": '" + names[i] + "' is " + format_name(p.fmt) + " but '" + names[0] + "' is " +
                                          format_name(g.fmt) + " (a fused group needs one format)");
      adjacent = adjacent && (const uint8_t*)p.data == (const uint8_t*)g.data + element_bytes(g.fmt) * rows * g.cols;
      if (g.fmt == MatFormat::Q8) adjacent = adjacent && p.scales == g.scales + (size_t)rows * q8_blocks(g.cols);
      rows += p.rows;
    }
    g.rows = rows;
    if (!adjacent) {
      const size_t bpw = element_bytes(g.fmt);
      const size_t bytes = (size_t)rows * g.cols * bpw, sbytes = g.fmt == MatFormat::Q8 ? (size_t)rows * q8_blocks(g.cols) * 4 : 0;
      w->owned_.emplace_back((bytes + 63) / 64 * 64 + sbytes);
      uint8_t* dst = w->owned_.back().data();
      float* sdst = (float*)(dst + (bytes + 63) / 64 * 64);
      size_t at = 0, sat = 0;
      for (const Matrix& p : parts) {
        std::memcpy(dst + at, p.data, (size_t)p.rows * p.cols * bpw);
        at += (size_t)p.rows * p.cols * bpw;
        if (g.fmt == MatFormat::Q8) {
          std::memcpy(sdst + sat, p.scales, (size_t)p.rows * q8_blocks(p.cols) * 4);
          sat += (size_t)p.rows * q8_blocks(p.cols);
        }
      }
      g.data = dst;
      g.scales = g.fmt == MatFormat::Q8 ? sdst : nullptr;
    }
    g.f32 = g.fmt == MatFormat::F32 ? (const float*)g.data : nullptr;
    return g;
  };

  // The small tensors, and float matrices, bound as a ModelWeights (matrix pointers null otherwise).
  w->small_.layers.resize(c.n_layers);
  auto sp = [&](const std::string& n) { return small.count(n) ? small.at(n) : nullptr; };
  auto f32_of = [](const Matrix& m) { return const_cast<float*>(m.f32); };
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerTensorNames n = LayerTensorNames::of(c, l);
    LayerWeights<float>& W = w->small_.layers[l];
    LayerMatrices L;
    W.attn_norm = sp(n.attn_norm);
    W.mlp_norm = sp(n.mlp_norm);
    L.wqkv = fuse({n.wq, n.wk, n.wv});
    L.wo = mats.at(n.wo);
    W.wqkv = f32_of(L.wqkv);
    W.wo = f32_of(L.wo);
    if (c.has_moe(l)) {
      W.moe_gate = sp(n.moe_gate);
      for (const auto& e : n.experts) {
        L.expert_w13.push_back(fuse({e.w1, e.w3}));
        L.expert_w2.push_back(mats.at(e.w2));
        W.expert_w13.push_back(f32_of(L.expert_w13.back()));
        W.expert_w2.push_back(f32_of(L.expert_w2.back()));
      }
    } else {
      L.w13 = fuse({n.w1, n.w3});
      L.w2 = mats.at(n.w2);
      W.w13 = f32_of(L.w13);
      W.w2 = f32_of(L.w2);
    }
    if (c.routed(l)) {
      W.router = sp(n.router);
      W.pred_fc1_w = sp(n.pred_fc1_w);
      W.pred_fc1_b = sp(n.pred_fc1_b);
      W.pred_fc2_w = sp(n.pred_fc2_w);
      W.pred_fc2_b = sp(n.pred_fc2_b);
    }
    w->layers_.push_back(std::move(L));
  }
  w->small_.norm = sp("norm.weight");
  w->embed_ = mats.at("tok_embeddings.weight");
  w->head_ = c.tie_embeddings ? w->embed_ : mats.at("output.weight");
  w->small_.tok_embeddings = f32_of(w->embed_);
  w->small_.output = f32_of(w->head_);
  w->fmt_ = w->head_.fmt;
  return w;
}

std::shared_ptr<const InferenceWeights> InferenceWeights::for_decoding(const std::string& dir, const std::string& want, const char* flag) {
  std::shared_ptr<const InferenceWeights> stored = load(dir);
  if (want.empty()) return stored;
  const MatFormat fmt = parse_format(want, flag);
  if (stored->format() == fmt && stored->layer(0).wqkv.fmt == fmt) return stored;
  if (!stored->has_float_matrices())
    throw usage_error(std::string(flag) + " " + want + ": " + dir + " holds " + format_name(stored->format()) +
                      " weights; quantize the float model to " + want + " instead (modlm quantize)");
  stored.reset();
  auto model = std::make_shared<Model<float>>(io::load_model(dir));
  round_weights_to(*model, fmt);
  auto w = std::const_pointer_cast<InferenceWeights>(from_model(*model, fmt));
  w->keep_alive_ = model;
  return w;
}

size_t InferenceWeights::layer_scratch_floats() const {
  size_t best = 0;
  for (const LayerMatrices& L : layers_) {
    size_t n = 0;
    auto add = [&](const Matrix& m) {
      if (!m.f32) n += (size_t)m.rows * m.cols;
    };
    add(L.wqkv), add(L.wo);
    if (L.expert_w13.empty()) add(L.w13), add(L.w2);
    for (const auto& m : L.expert_w13) add(m);
    for (const auto& m : L.expert_w2) add(m);
    best = std::max(best, n);
  }
  return best;
}

LayerWeights<float> InferenceWeights::float_layer(int l, float* scratch) const {
  LayerWeights<float> W = small_.layers[l];
  const LayerMatrices& L = layers_[l];
  auto bind = [&](const Matrix& m) -> float* {
    if (m.f32) return const_cast<float*>(m.f32);
    float* at = scratch;
    m.dequantize_rows(0, m.rows, at);
    scratch += (size_t)m.rows * m.cols;
    return at;
  };
  W.wqkv = bind(L.wqkv);
  W.wo = bind(L.wo);
  if (L.expert_w13.empty()) {
    W.w13 = bind(L.w13);
    W.w2 = bind(L.w2);
  } else {
    for (size_t e = 0; e < L.expert_w13.size(); ++e) W.expert_w13[e] = bind(L.expert_w13[e]), W.expert_w2[e] = bind(L.expert_w2[e]);
  }
  return W;
}

size_t InferenceWeights::matrix_bytes() const {
  double b = 0;
  for (const LayerMatrices& L : layers_) {
    b += L.wqkv.bytes() + L.wo.bytes() + (L.expert_w13.empty() ? L.w13.bytes() + L.w2.bytes() : 0);
    for (const auto& m : L.expert_w13) b += m.bytes();
    for (const auto& m : L.expert_w2) b += m.bytes();
  }
  b += embed_.bytes() + (cfg_.tie_embeddings ? 0 : head_.bytes());
  return (size_t)b;
}

}  // namespace modlm::infer
