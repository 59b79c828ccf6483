"""Spoken requests from espeak-ng: many accents and voice variants, speeds and pitches.

Voices are (accent, variant) pairs. The variants in HELD_OUT_VARIANTS never speak a
training clip; evaluation and the samples use only them.
"""

import io
import random
import subprocess
import wave
from multiprocessing import Pool

import numpy as np
from scipy.signal import resample_poly

from . import features

ACCENTS = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
TRAIN_VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m7", "m8", "f1", "f2", "f3", "f5", "klatt", "klatt2",
    "klatt4", "klatt5", "klatt6", "Alex", "Alicia", "Andrea", "Annie", "Denis", "Diogo",
    "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Nguyen", "Storm", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty",
    "benjamin", "boris", "caleb", "croak", "ed", "edward", "gustave", "iven", "iven2",
    "john", "kaukovalta", "marcelo", "max", "michel", "miguel", "norbert", "pablo",
    "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "travis", "victor",
    "whisper", "none",
]
HELD_OUT_VARIANTS = ["f4", "m6", "klatt3", "Andy", "belinda", "david", "grandpa",
                     "linda", "paul", "zac", "steph2", "iven3"]
ESPEAK_RATE = 22050


def voice_name(accent: str, variant: str) -> str:
    return accent if variant == "none" else f"{accent}+{variant}"


def synthesize(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """PCM16 at 16 kHz, leading and trailing silence trimmed to 60 ms."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == ESPEAK_RATE and w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    x = resample_poly(x, 320, 441)
    loud = np.flatnonzero(np.abs(x) > 300)
    if loud.size:
        margin = int(0.06 * features.SAMPLE_RATE)
        x = x[max(0, loud[0] - margin):loud[-1] + margin]
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _job(args):
    text, voice, speed, pitch = args
    return synthesize(text, voice, speed, pitch)


def random_voice(rng: random.Random, held_out: bool):
    variants = HELD_OUT_VARIANTS if held_out else TRAIN_VARIANTS
    voice = voice_name(rng.choice(ACCENTS), rng.choice(variants))
    return voice, rng.randint(125, 210), rng.randint(25, 75)


def synthesize_many(jobs, processes: int = 2):
    """jobs: (text, voice, speed, pitch) -> list of PCM16 arrays, in order."""
    with Pool(processes) as pool:
        return pool.map(_job, jobs, chunksize=16)
