// `modlm tokenizer train --input FILE --vocab-size N --out DIR`: a SentencePiece BPE tokenizer.
#include <cstdio>

#include "cli/commands.h"
#include "io/tokenizer.h"
#include "util/error.h"

namespace modlm::cli {

Command add_tokenizer(CLI::App& app) {
  struct Opts {
    std::string input, out;
    int vocab = 8192;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("tokenizer", "Tokenizer tools (SentencePiece BPE)");
  sub->require_subcommand(1);
  CLI::App* tr = sub->add_subcommand("train", "Train a SentencePiece BPE tokenizer: writes DIR/tokenizer.model");
  tr->add_option("--input", o->input, "training text (plain or .gz)")->required();
  tr->add_option("--vocab-size", o->vocab, "vocabulary size")->required();
  tr->add_option("--out", o->out, "output folder (a model folder, or any)")->required();
  return {sub, [o]() -> int {
            io::train_sentencepiece(o->input, o->vocab, o->out);
            std::printf("wrote %s/tokenizer.model (vocab %d)\n", o->out.c_str(), o->vocab);
            return 0;
          }};
}

}  // namespace modlm::cli
