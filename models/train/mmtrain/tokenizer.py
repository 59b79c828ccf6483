"""The bundle's tokenizer: a small byte-level BPE trained on the request/answer corpus.

Byte-level means any typed text tokenizes, even characters the corpus never had.
Text is NFKC-normalised and lower-cased first, so "What is 4?" and "what is 4?" agree.
"""

import random

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from . import corpus

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<answer>"]
VOCAB_SIZE = 512


def training_lines(seed: int = 0) -> list:
    rng = random.Random(seed)
    lines = []
    for req in corpus.all_requests():
        lines.append(req.text)
        lines.append(corpus.typed_form(req.text, rng))
    lines.extend(corpus.all_answers() * 30)
    return lines


def build(seed: int = 0) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_lines(seed), trainer=trainer)
    return tok


def encode_answer(tok: Tokenizer, text: str) -> list:
    """Answer tokens as the decoder generates them after `<answer>`, ending in `<eos>`."""
    return tok.encode(text, add_special_tokens=False).ids + [tok.token_to_id("<eos>")]
