"""Generates the training and evaluation data into work/data.npz (fixed seeds).

- Speech: every canonical request spoken by SPEECH_TRAIN_VOICES random training voices,
  and once by a held-out voice for evaluation. PCM16 at 16 kHz.
- Images: camera-like frames already stretched to the model's input size, half with
  the runtime's exact bilinear stretch and half with PIL's (antialiased) bilinear, so
  the encoder does not depend on one resampler. Label 10 means no digit.
"""

import random
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image

from . import corpus, digits, features, model as M, speech
from .runtime import bilinear_stretch

SPEECH_TRAIN_VOICES = 6
IMAGES_TRAIN = 45000
IMAGES_EVAL = 3000
NO_DIGIT_SHARE = 0.12


def _image_job(args):
    seed, held_out = args
    rng = random.Random(seed)
    digit = None if rng.random() < NO_DIGIT_SHARE else rng.randint(0, 9)
    frame, source = digits.render_frame(rng, digit, held_out)
    s = M.IMAGE_SIZE
    if rng.random() < 0.5:
        small = np.clip(np.round(bilinear_stretch(frame, s, s)), 0, 255).astype(np.uint8)
    else:
        small = np.asarray(Image.fromarray(frame).resize((s, s), Image.BILINEAR))
    return small, 10 if digit is None else digit, source


def _pack(clips):
    lengths = np.array([len(c) for c in clips], np.int64)
    return np.concatenate(clips), lengths


def generate(path: str, seed: int = 1234):
    t0 = time.time()
    rng = random.Random(seed)
    requests = corpus.all_requests()
    train_jobs, train_req = [], []
    for i, req in enumerate(requests):
        for _ in range(SPEECH_TRAIN_VOICES):
            train_jobs.append((req.text, *speech.random_voice(rng, held_out=False)))
            train_req.append(i)
    eval_jobs = [(req.text, *speech.random_voice(rng, held_out=True)) for req in requests]
    train_pcm, train_len = _pack(speech.synthesize_many(train_jobs))
    eval_pcm, eval_len = _pack(speech.synthesize_many(eval_jobs))
    print(f"speech: {len(train_jobs)} training and {len(eval_jobs)} held-out clips "
          f"in {time.time() - t0:.0f}s", flush=True)

    t1 = time.time()
    with Pool(2) as pool:
        train_img = pool.map(_image_job, [(seed * 1000003 + i, False) for i in range(IMAGES_TRAIN)],
                             chunksize=256)
        eval_img = pool.map(_image_job, [(seed * 7919 + 17 + i, True) for i in range(IMAGES_EVAL)],
                            chunksize=256)
    print(f"images: {IMAGES_TRAIN} training and {IMAGES_EVAL} held-out frames "
          f"in {time.time() - t1:.0f}s", flush=True)

    np.savez(
        path,
        train_pcm=train_pcm, train_len=train_len, train_req=np.array(train_req),
        train_voice=np.array([j[1] for j in train_jobs]),
        eval_pcm=eval_pcm, eval_len=eval_len, eval_req=np.arange(len(requests)),
        eval_voice=np.array([j[1] for j in eval_jobs]),
        train_img=np.stack([x[0] for x in train_img]),
        train_img_label=np.array([x[1] for x in train_img]),
        eval_img=np.stack([x[0] for x in eval_img]),
        eval_img_label=np.array([x[1] for x in eval_img]),
        eval_img_source=np.array([x[2] for x in eval_img]),
    )


NOISE_SECONDS = 60


def noise_bank(seed: int) -> np.ndarray:
    """Mel power of unit-RMS noises (white, brown-ish, hum), [frames, n_mels] each."""
    rng = np.random.default_rng(seed)
    n = NOISE_SECONDS * features.SAMPLE_RATE
    white = rng.standard_normal(n)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(64) / 64, mode="same")
    t = np.arange(n) / features.SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k
              for k, f in enumerate([50, 100, 150, 250, 1000], 1)) + 0.3 * white
    banks = []
    for x in (white, brown, hum):
        x = x / np.sqrt(np.mean(x ** 2))
        banks.append(features.mel_power(x))
    return np.stack(banks)


class Data:
    """The generated arrays, with clips addressable by index."""

    def __init__(self, path: str):
        z = np.load(path)
        self.z = {k: z[k] for k in z.files}
        for split in ("train", "eval"):
            lens = self.z[f"{split}_len"]
            offsets = np.concatenate([[0], np.cumsum(lens)])
            setattr(self, f"{split}_offsets", offsets)
        self.noise = noise_bank(7)
        # Clean mel power of each training clip, for augmentation in the feature domain.
        self.train_power = [features.mel_power(self.clip("train", i).astype(np.float64) / 32768.0)
                            for i in range(len(self.z["train_len"]))]
        self.train_rms = np.array([np.sqrt(np.mean((self.clip("train", i) / 32768.0) ** 2))
                                   for i in range(len(self.z["train_len"]))])

    def clip(self, split: str, i: int) -> np.ndarray:
        off = getattr(self, f"{split}_offsets")
        return self.z[f"{split}_pcm"][off[i]:off[i + 1]]


if __name__ == "__main__":
    import os
    os.makedirs("work", exist_ok=True)
    generate("work/data.npz")
