// Continuous batching for the server (docs/serving.md): one thread owns the Decoder and, between
// decode steps, lets sequences join (a free slot, then their prompt in chunks) and leave
// (finished, stopped, cancelled, or their client gone).
//
// Each loop iteration does at most one prefill call of at most `prefill_chunk` prompt tokens
// (whole prompts that fit start together in one packed prefill; a longer prompt is fed alone,
// chunk by chunk) and then ONE decode step for every sequence that has a
// token to feed. A long prompt therefore delays the others by one chunk per step, not by its
// whole length. The decode step is Decoder::step: in each routed layer only the rows whose
// causal decision says "process" run the block, as one packed batch, and a block nobody needs is
// not read at all (MoD's saving survives batching).
//
// Sequence i of a request samples with Sampler(params, seed + i), exactly as `modlm generate`
// samples prompt i of a batch, and a prompt of at most prefill_chunk tokens is prefilled in one
// packed call, as generate prefills a batch: same prompt, seed and settings, same tokens.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "infer/decoder.h"
#include "infer/sampler.h"
#include "infer/text_stream.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace modlm::serve {

using Clock = std::chrono::steady_clock;

// One sequence to generate (a prompt x one of its n choices).
struct SeqJob {
  // Input (set before submit, then read-only).
  std::vector<int32_t> prompt;
  infer::SamplingParams params;
  uint64_t seed = 0;
  int max_tokens = 16;                 // generated tokens at most
  std::vector<std::string> stop;       // stop strings (not part of the output)

  // Output, guarded by the owning Request's mutex.
  std::string text;                    // final text so far (stop strings cut, held-back tail excluded)
  size_t taken = 0;                    // bytes of `text` a streaming handler already sent
  int completion_tokens = 0;
  bool done = false;
  std::string finish_reason;           // "stop", "length" or "cancelled"
  Clock::time_point first_token_at{};
};

// A request's sequences, finished together; the HTTP handler waits on `cv`.
struct Request {
  std::vector<SeqJob> seqs;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> cancelled{false};  // the client went away: free the slots at the next step
  Clock::time_point submitted = Clock::now();
  bool all_done() const {
    for (const auto& s : seqs)
      if (!s.done) return false;
    return true;
  }
};

struct SchedulerOptions {
  int max_batch = 8;          // sequences decoded together (decoder slots)
  int max_context = 0;        // tokens per sequence (prompt + generated); 0 = the model's max_seq_len
  int max_queue = 64;         // sequences waiting for a slot; beyond this, submit refuses
  int prefill_chunk = 256;    // prompt tokens per prefill call between decode steps
  infer::KvFormat kv = infer::KvFormat::F32;
};

// Counters for /metrics, a consistent copy.
struct SchedulerStats {
  int64_t requests = 0, sequences = 0, prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
  int64_t cancelled = 0, rejected = 0;
  int queued = 0, active = 0, max_batch = 0;
  double step_seconds = 0, prefill_seconds = 0;
  int64_t step_rows = 0;           // sum over steps of sequences stepped (occupancy = / (steps * max_batch))
  double step_weight_bytes = 0;    // weight bytes the decode steps read
  double tokens_per_second = 0;    // generated tokens/s over the last few seconds
  size_t kv_bytes = 0;
  std::vector<int> routed_layers;
  std::vector<int64_t> routed_processed;  // per routed layer: decode rows that ran the block
};

class Scheduler {
 public:
  // The tokenizer must outlive the scheduler; the weights (any format: infer/weights.h) are kept
  // alive by it. Starts the decode thread.
  Scheduler(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const SchedulerOptions& opt);
  ~Scheduler();  // cancels what is left and joins the thread

  int max_context() const { return max_context_; }
  const SchedulerOptions& options() const { return opt_; }

  // Queues the request's sequences; false (nothing queued) when the queue has no room for all
  // of them or the scheduler is shutting down.
  bool submit(const std::shared_ptr<Request>& r);

  // Stops admitting; sequences running or queued get `grace` to finish, then are cancelled
  // (finish_reason "cancelled"). Returns when the decode thread has ended.
  void shutdown(std::chrono::milliseconds grace);
  bool shutting_down() const { return stopping_; }

  SchedulerStats stats() const;

 private:
  struct Active {
    std::shared_ptr<Request> req;
    int seq = 0;
    int slot = -1;
    size_t fed = 0;                 // prompt tokens prefilled so far
    bool started = false;           // first chunk went through prefill()
    int32_t pending = -1;           // sampled token to feed at the next step
    std::unique_ptr<infer::Sampler> sampler;
    std::unique_ptr<infer::TextStream> stream;
    std::string raw;                // all generated text, before stop handling
    size_t emitted = 0;             // bytes of raw published to SeqJob::text
  };

  void loop();
  void admit();
  bool prefill_one();
  void decode_step();
  // Records token t sampled for `a` (from the logits in `row`); returns true if `a` finished.
  bool take_token(Active& a, int32_t t);
  void finish(Active& a, const std::string& reason);
  void publish(Active& a, bool final);

  std::shared_ptr<const infer::InferenceWeights> weights_;
  const ModelConfig& cfg_;
  const io::Tokenizer& tok_;
  SchedulerOptions opt_;
  int max_context_ = 0;
  std::unique_ptr<infer::Decoder> dec_;

  mutable std::mutex mu_;          // queue_, stats_, stopping_
  std::condition_variable cv_;
  std::deque<std::pair<std::shared_ptr<Request>, int>> queue_;  // (request, sequence index)
  std::atomic<bool> stopping_{false};
  Clock::time_point cancel_at_{};
  SchedulerStats stats_;
  std::deque<std::pair<Clock::time_point, int64_t>> rate_window_;  // (time, generated so far)

  std::vector<Active> active_;     // decode thread only
  std::vector<int> free_slots_;
  std::thread thread_;
};

}  // namespace modlm::serve
