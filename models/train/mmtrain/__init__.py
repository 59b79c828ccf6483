"""Trainer and exporter for mmrt's built-in `tiny` bundle.

Layout:
- `corpus`: the requests, their spoken and typed forms, and the answers.
- `tokenizer`: the byte-level BPE tokenizer trained on that corpus.
- `features`: the log-mel front end of docs/bundle-format.md (numpy and torch).
- `speech`, `digits`: synthetic audio (espeak-ng) and images (sklearn digits, fonts).
- `model`: encoders, completion model and the routed decoder.
- `train`, `export`, `runtime`, `evaluate`, `samples`: the pipeline steps.
- `pipeline`: the one command that runs them all.
"""
