"""Writes the bundle's README.md: the task, the vocabulary, the evaluation table."""

import os

from . import corpus, digits, evaluate, features, model as M, speech


def write(path, results, by_source, timing, threads, tok):
    folder = os.path.dirname(path)
    sizes = {n: os.path.getsize(f"{folder}/{n}") for n in sorted(os.listdir(folder))
             if n not in ("README.md", "STATUS")}
    it = "\n".join(f"- `{p.format(b='<n>')}`" for ps in corpus.IT_PHRASES.values() for p in ps)
    pair = "\n".join(f"- `{p.format(a='<a>', b='<b>')}`"
                     for ps in corpus.PAIR_PHRASES.values() for p in ps)
    see = "\n".join(f"- `{p}`" for p in corpus.SEE_PHRASES)
    total = sum(v for k, v in timing.items() if k != "cpu_s")
    text = f"""# tiny: mmrt's built-in bundle

A small model of our own, trained from generated data by `models/train/run.sh`, so that
mmrt does its main job out of the box: the camera shows a handwritten or printed digit
0-9 (or nothing), the user speaks and/or types a short request, and the model answers in
short lower-case English. Format: docs/bundle-format.md.

## What it understands

Requests about the shown number ("it" is the digit in view):

{see}
{it}

Self-contained requests (`<a>`, `<b>` are 0-9, spoken as words, typed as words or numerals):

{pair}

Typed text is case-insensitive (the tokenizer lower-cases) and may end with `?`.
When speech and typed text are both present they carry the same request; either alone
suffices.

Answers: number words for results (`eighty one`, `minus three`), the larger or smaller
number, `they are equal`, `yes` / `no`, `i see a seven` / `i see an eight`. Honest
answers when something is missing: a request about the image with no digit in view (or
no image) gets `{corpus.NO_NUMBER}`; an image alone is described (`i see a seven` or
`{corpus.NO_NUMBER}`); no request and no image gets `{corpus.NO_QUESTION}`.

## Model

- Text: token embeddings (byte-level BPE, {tok.get_vocab_size()} tokens, special
  `<pad> <bos> <eos> <answer>`).
- Image: per-frame standardisation, 3 conv layers, a projection to {M.IMAGE_TOKENS}
  tokens. Input {M.IMAGE_SIZE}x{M.IMAGE_SIZE} RGB, stretched bilinearly, mean
  {list(M.IMAGE_MEAN)}, std {list(M.IMAGE_STD)}.
- Audio, streaming: each chunk of {features.CHUNK_FRAMES} log-mel frames
  ({features.N_MELS} mels, 10 ms hop) goes through convolutions that see only that chunk,
  then a GRU whose state ({M.AUDIO_STATE} floats) is carried from chunk to chunk:
  {M.AUDIO_TOKENS} tokens per chunk, produced while the user speaks.
- Completion: an MLP from the mean embedding of each present modality (and the presence
  vector) to stand-in image and audio tokens.
- Decoder: {M.NUM_LAYERS} layers, hidden {M.HIDDEN}, {M.NUM_HEADS} query heads sharing
  {M.NUM_KV_HEADS} KV heads of {M.HEAD_DIM}, rotary positions from `position_ids`.
  Attention is computed once per modality (keys restricted by `modality_ids`) and mixed by
  weights each query predicts per head, renormalised over the modalities it can see.
  Masked scores are {M.MASK_VALUE:g} (finite), so fully masked rows stay finite.

Training drops modalities at random and fills each absent one, at random, by omission,
its null embedding or the completion model's fill; so every subset works under every
fill policy. Auxiliary losses: a digit classifier on the image tokens, CTC over the
request's words on the audio tokens, and regression of a hidden modality for completion.

## Data

- Speech: espeak-ng, {len(speech.ACCENTS)} English accents x {len(speech.TRAIN_VARIANTS)}
  voice variants for training, speeds 125-210 wpm, pitch 25-75; gain (-18..+6 dB) and
  noise (white, brown, hum; 3-40 dB SNR) added in training. Held out for evaluation and
  samples: the variants {", ".join(speech.HELD_OUT_VARIANTS)}.
- Handwriting: scikit-learn's 8x8 digits, upscaled; rows from {digits.DIGITS_EVAL_FROM}
  on are held out (the set has no writer labels; its rows are grouped by writer).
- Print: Debian's DejaVu, Liberation and FreeFont faces; held out:
  {", ".join(digits.HELD_OUT_FONTS)}.
- Frames 64-176 px wide with random colours, lighting, position, scale, rotation,
  blur, noise, clutter and JPEG artefacts, stretched to the model's size.

## Evaluation

Exact match of the greedy answer on held-out voices, writers and fonts, through the
exported ONNX graphs with onnxruntime (`models/train/mmtrain/evaluate.py`, run by
`run.sh`). Held-out speech gets a random gain (-12..0 dB) and noise (15-35 dB SNR).
Columns: how absent modalities are filled (with all three present they agree).

{evaluate.markdown_table(results)}

Image only, by source of the digit: """ + ", ".join(
        f"{k} {v:.1%}" for k, v in sorted(by_source.items())) + f"""

## Rebuilding

`models/train/setup.sh` makes the environment (Debian 12), then `models/train/run.sh`
regenerates everything. Last run: data {timing['data_s']:.0f} s, training
{timing['train_s']:.0f} s, export and checks {timing['export_s']:.0f} s, evaluation
{timing['eval_s']:.0f} s, samples and references {timing['samples_s']:.0f} s
({total / 60:.1f} min wall clock in all, {timing.get('cpu_s', 0) / 60:.1f} min of CPU time;
torch on {threads} thread(s), 2-core machine shared with other work at the time).

## Files

""" + "\n".join(f"- `{n}`: {s / 1e6:.2f} MB" for n, s in sizes.items()) + "\n"
    with open(path, "w") as f:
        f.write(text)
