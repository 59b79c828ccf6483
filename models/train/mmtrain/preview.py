"""Exports an untrained bundle (random weights) so the runtime can be built against
real graphs before training has run: `python -m mmtrain.preview OUT_DIR`."""

import sys

import torch

from . import check, corpus, export, model as M, tokenizer


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "../bundles/tiny"
    torch.manual_seed(0)
    tok = tokenizer.build()
    m = M.TinyModel(tok.get_vocab_size(), len(corpus.word_vocab()))
    export.write_bundle(m, tok, out, "untrained preview of the tiny bundle")
    check.check_bundle(out, m)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
