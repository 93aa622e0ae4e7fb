#include "serve/scheduler.h"

#include <algorithm>
#include <cstdio>

#include "infer/text_stream.h"
#include "util/error.h"

namespace modlm::serve {

namespace {
// The longest k < stop.size() such that the text ends with stop's first k bytes: text a stream
// must hold back, since the next token may complete the stop string.
size_t held_back(const std::string& text, size_t from, const std::vector<std::string>& stops) {
  size_t keep = 0;
  for (const auto& s : stops)
    for (size_t k = std::min(s.size() - 1, text.size() - from); k > keep; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  return keep;
}
}  // namespace

Scheduler::Scheduler(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const SchedulerOptions& opt)
    : weights_(std::move(weights)), cfg_(weights_->config()), tok_(tok), opt_(opt) {
  const ModelConfig& c = cfg_;
  max_context_ = opt.max_context > 0 ? std::min(opt.max_context, c.max_seq_len) : c.max_seq_len;
  if (opt.max_batch < 1) throw usage_error("--max-batch must be >= 1");
  if (opt.max_queue < 0) throw usage_error("--max-queue must be >= 0");
  if (opt.prefill_chunk < 1) throw usage_error("--prefill-chunk must be >= 1");
  dec_ = std::make_unique<infer::Decoder>(weights_, opt.max_batch, max_context_, opt.kv);
  for (int s = opt.max_batch - 1; s >= 0; --s) free_slots_.push_back(s);
  stats_.max_batch = opt.max_batch;
  stats_.routed_layers = dec_->routed_layers();
  stats_.routed_processed.assign(stats_.routed_layers.size(), 0);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  if (thread_.joinable()) shutdown(std::chrono::milliseconds(0));
}

bool Scheduler::submit(const std::shared_ptr<Request>& r) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_ || queue_.size() + r->seqs.size() > (size_t)opt_.max_queue + free_slots_.size()) {
    ++stats_.rejected;
    return false;
  }
  for (int i = 0; i < (int)r->seqs.size(); ++i) queue_.emplace_back(r, i);
  ++stats_.requests;
  stats_.sequences += (int64_t)r->seqs.size();
  stats_.queued = (int)queue_.size();
  cv_.notify_all();
  return true;
}

void Scheduler::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!stopping_) cancel_at_ = Clock::now() + grace;
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  SchedulerStats s = stats_;
  const auto now = Clock::now();
  for (const auto& [t, gen] : rate_window_) {
    const double dt = std::chrono::duration<double>(now - t).count();
    if (dt <= 10.0 && dt > 0.05) {
      s.tokens_per_second = (double)(stats_.generated_tokens - gen) / dt;
      break;
    }
  }
  return s;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (active_.empty() && queue_.empty()) {
        if (stopping_) break;
        cv_.wait_for(lk, std::chrono::milliseconds(100));
        continue;
      }
      const auto now = Clock::now();
      if (rate_window_.empty() || now - rate_window_.back().first > std::chrono::milliseconds(250))
        rate_window_.emplace_back(now, stats_.generated_tokens);
      while (rate_window_.size() > 64) rate_window_.pop_front();
      if (stopping_ && now >= cancel_at_) {
        // Grace is over: everything still queued or running is cancelled.
        for (auto& [req, i] : queue_) {
          std::lock_guard<std::mutex> rl(req->mu);
          req->seqs[i].done = true;
          req->seqs[i].finish_reason = "cancelled";
          ++stats_.cancelled;
          req->cv.notify_all();
        }
        queue_.clear();
        stats_.queued = 0;
        lk.unlock();
        for (auto& a : active_) finish(a, "cancelled");
        active_.clear();
        continue;
      }
    }
    try {
      for (auto& a : active_)
        if (a.req->cancelled && a.slot >= 0) finish(a, "cancelled");
      admit();
      const auto t0 = Clock::now();
      const bool prefilled = prefill_one();
      const auto t1 = Clock::now();
      decode_step();
      const auto t2 = Clock::now();
      std::lock_guard<std::mutex> lk(mu_);
      if (prefilled) stats_.prefill_seconds += std::chrono::duration<double>(t1 - t0).count();
      stats_.step_seconds += std::chrono::duration<double>(t2 - t1).count();
    } catch (const std::exception& e) {
      // A fault in the decoder must not take the server down: the sequences in flight end.
      std::fprintf(stderr, "modlm serve: decode error: %s\n", e.what());
      for (auto& a : active_)
        if (a.slot >= 0) finish(a, "cancelled");
    }
    active_.erase(std::remove_if(active_.begin(), active_.end(), [](const Active& a) { return a.slot < 0; }), active_.end());
    std::lock_guard<std::mutex> lk(mu_);
    stats_.active = (int)active_.size();
    size_t kv = 0;
    for (int l = 0; l < cfg_.n_layers; ++l) kv += dec_->cache().bytes_used(l);
    stats_.kv_bytes = kv;
  }
}

void Scheduler::admit() {
  std::lock_guard<std::mutex> lk(mu_);
  while (!free_slots_.empty() && !queue_.empty()) {
    auto [req, i] = queue_.front();
    queue_.pop_front();
    if (req->cancelled) {
      std::lock_guard<std::mutex> rl(req->mu);
      req->seqs[i].done = true;
      req->seqs[i].finish_reason = "cancelled";
      ++stats_.cancelled;
      req->cv.notify_all();
      continue;
    }
    Active a;
    a.req = req;
    a.seq = i;
    a.slot = free_slots_.back();
    free_slots_.pop_back();
    const SeqJob& j = req->seqs[i];
    a.sampler = std::make_unique<infer::Sampler>(j.params, j.seed);
    a.stream = std::make_unique<infer::TextStream>(tok_);
    active_.push_back(std::move(a));
  }
  stats_.queued = (int)queue_.size();
}

bool Scheduler::prefill_one() {
  // Whole prompts that fit in one chunk's budget start together, in one packed prefill (as
  // `modlm generate` prefills a batch); a longer prompt, or the rest of one, goes alone.
  std::vector<int> group;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> slots;
  size_t budget = (size_t)opt_.prefill_chunk;
  for (int i = 0; i < (int)active_.size(); ++i) {
    Active& a = active_[i];
    if (a.slot < 0) continue;
    const std::vector<int32_t>& p = a.req->seqs[a.seq].prompt;
    if (a.fed >= p.size()) continue;
    if (!a.started && p.size() <= budget) {
      group.push_back(i);
      prompts.push_back(p);
      slots.push_back(a.slot);
      budget -= p.size();
      continue;
    }
    if (!group.empty()) break;
    // Alone: the first chunk of a long prompt, or the next chunk of one begun earlier.
    const size_t n = std::min(p.size() - a.fed, (size_t)opt_.prefill_chunk);
    std::vector<int32_t> chunk(p.begin() + (long)a.fed, p.begin() + (long)(a.fed + n));
    if (!a.started) {
      dec_->prefill({a.slot}, {chunk});
      a.started = true;
    } else {
      dec_->extend(a.slot, chunk);
    }
    a.fed += n;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prompt_tokens += (int64_t)n;
    }
    if (a.fed == p.size()) take_token(a, a.sampler->sample(dec_->logits(0), cfg_.vocab_size));
    return true;
  }
  if (group.empty()) return false;
  dec_->prefill(slots, prompts);
  const int V = cfg_.vocab_size;
  int64_t tokens = 0;
  for (size_t g = 0; g < group.size(); ++g) {
    Active& a = active_[group[g]];
    a.started = true;
    a.fed = prompts[g].size();
    tokens += (int64_t)a.fed;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.prompt_tokens += tokens;
  }
  // Sampling reads row g of the prefill's logits; take_token may finish (and release) a
  // sequence, which does not touch the logits of the others.
  for (size_t g = 0; g < group.size(); ++g) {
    Active& a = active_[group[g]];
    take_token(a, a.sampler->sample(dec_->logits((int)g), V));
  }
  return true;
}

void Scheduler::decode_step() {
  std::vector<int> slots, rows;
  std::vector<int32_t> toks;
  for (int i = 0; i < (int)active_.size(); ++i) {
    Active& a = active_[i];
    if (a.slot < 0 || a.pending < 0) continue;
    slots.push_back(a.slot);
    toks.push_back(a.pending);
    rows.push_back(i);
    a.pending = -1;
  }
  if (slots.empty()) return;
  dec_->step(slots, toks);
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.decode_steps;
    stats_.step_rows += (int64_t)slots.size();
    stats_.step_weight_bytes += dec_->weight_bytes_read();
    for (size_t j = 0; j < stats_.routed_layers.size(); ++j)
      for (int r = 0; r < (int)slots.size(); ++r) stats_.routed_processed[j] += dec_->route(r, (int)j).processed;
  }
  const int V = cfg_.vocab_size;
  for (int r = 0; r < (int)rows.size(); ++r) {
    Active& a = active_[rows[r]];
    if (a.req->cancelled) {
      finish(a, "cancelled");
      continue;
    }
    take_token(a, a.sampler->sample(dec_->logits(r), V));
  }
}

bool Scheduler::take_token(Active& a, int32_t t) {
  SeqJob& j = a.req->seqs[a.seq];
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.generated_tokens;
  }
  std::unique_lock<std::mutex> rl(a.req->mu);
  if (j.completion_tokens == 0) j.first_token_at = Clock::now();
  ++j.completion_tokens;
  a.raw += a.stream->push(t);
  std::string reason;
  if (j.completion_tokens >= j.max_tokens || dec_->length(a.slot) + 1 >= max_context_) {
    a.raw += a.stream->finish();
    reason = "length";
  }
  // A stop string ends the text where it begins (the earliest, over all stop strings).
  size_t maxlen = 0;
  for (const auto& s : j.stop) maxlen = std::max(maxlen, s.size());
  const size_t from = a.emitted > maxlen ? a.emitted - maxlen : 0;
  size_t cut = std::string::npos;
  for (const auto& s : j.stop) cut = std::min(cut, a.raw.find(s, from));
  if (cut != std::string::npos) {
    a.raw.resize(cut);
    reason = "stop";
  }
  if (!reason.empty()) {
    rl.unlock();
    finish(a, reason);
    return true;
  }
  a.pending = t;
  publish(a, false);
  a.req->cv.notify_all();
  return false;
}

// Moves the raw text that can no longer change into SeqJob::text (caller holds req->mu).
void Scheduler::publish(Active& a, bool final) {
  SeqJob& j = a.req->seqs[a.seq];
  size_t safe = a.raw.size();
  if (!final) {
    safe -= held_back(a.raw, a.emitted, j.stop);
    safe = a.emitted + infer::utf8_complete_prefix(a.raw.substr(a.emitted, safe - a.emitted));
  }
  if (safe > a.emitted) {
    j.text.append(a.raw, a.emitted, safe - a.emitted);
    a.emitted = safe;
  }
}

void Scheduler::finish(Active& a, const std::string& reason) {
  // The slot is free before the client can learn that its sequence ended: a client that sends
  // its next request as soon as this one is answered must find the slot, not a spurious 429
  // (one slot, no queue: the test suite's SIGTERM check met exactly that under load).
  dec_->release(a.slot);
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_slots_.push_back(a.slot);
    if (reason == "cancelled") ++stats_.cancelled;
  }
  a.slot = -1;
  std::lock_guard<std::mutex> rl(a.req->mu);
  SeqJob& j = a.req->seqs[a.seq];
  if (reason != "cancelled") publish(a, true);
  j.done = true;
  j.finish_reason = reason;
  a.req->cv.notify_all();
}

}  // namespace modlm::serve
