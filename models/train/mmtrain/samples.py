"""Writes samples/: WAV, PNG and JPEG inputs, short frame clips, and manifest.json.

Speech comes from held-out voices, digits from held-out writers and fonts. Each sample
is checked against the exported bundle under every fill policy: its expected answer is
the correct one and the one the model gives greedily. A rendering the model gets wrong
is redrawn (at most a few times); the evaluation table, not the samples, measures
accuracy.
"""

import json
import os
import random
import shutil
import wave

import numpy as np
from PIL import Image
from scipy.signal import resample_poly

from . import corpus, digits, runtime, speech

# (id, spoken request or None, typed text or None, image: digit / "none" / None,
#  image kind: "png" / "jpg" / "clip", audio sample rate)
SPECS = [
    ("all-plus", "what is it plus three", "what is it plus three", 7, "png", 16000),
    ("all-larger", "is it larger than five", "is it larger than 5?", 2, "jpg", 16000),
    ("audio-text-times", "what is four times two", "what is four times two", None, None, 16000),
    ("audio-text-larger-24k", "which is larger, three or eight", "Which is larger, 3 or 8?",
     None, None, 24000),
    ("image-text-see", None, "What number do you see?", 5, "jpg", None),
    ("image-text-times", None, "what is it times 9", 9, "png", None),
    ("text-minus", None, "what is 6 minus 9", None, None, None),
    ("text-no-image", None, "what is it plus two", None, None, None),
    ("audio-image-minus", "what is it minus four", None, 8, "png", 16000),
    ("audio-image-empty", "what number do you see", None, "none", "jpg", 16000),
    ("audio-multiply", "multiply seven by six", None, None, None, 16000),
    ("audio-no-image-24k", "what is it times two", None, None, None, 24000),
    ("image-three", None, None, 3, "png", None),
    ("image-empty", None, None, "none", "jpg", None),
    ("clip-text-plus", None, "what is it plus five", 4, "clip", None),
    ("clip-eight", None, None, 8, "clip", None),
    ("clip-audio-smaller", "is it smaller than seven", None, 6, "clip", 16000),
    ("nothing", None, None, None, None, None),
]
CLIP_FRAMES = 8
CLIP_FPS = 10


def write_wav(path, pcm16: np.ndarray, rate: int):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16.astype("<i2").tobytes())


def read_wav(path) -> np.ndarray:
    """Mono PCM16 WAV -> float32 at 16 kHz (resampled when needed)."""
    with wave.open(path) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    if rate != 16000:
        g = np.gcd(rate, 16000)
        x = resample_poly(x, 16000 // g, rate // g)
    return x.astype(np.float32)


def read_image(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def speak(text, rng, rate):
    voice, speed, pitch = speech.random_voice(rng, held_out=True)
    pcm = speech.synthesize(text, voice, speed, pitch).astype(np.float64)
    if rate != 16000:
        pcm = resample_poly(pcm, rate // 1000, 16)
    # A little room noise and a gain change, as a microphone would give.
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    pcm = pcm * 10 ** (rng.uniform(-8, 0) / 20)
    pcm = pcm + nrng.standard_normal(pcm.size) * rng.uniform(20, 80)
    return np.clip(np.round(pcm), -32768, 32767).astype(np.int16), voice


def clip_frames(rng, digit, size=(128, 96)):
    """A digit drifting a few pixels over CLIP_FRAMES frames."""
    frame, _ = digits.render_frame(rng, digit, held_out=True, size=(size[0] + 24, size[1] + 24))
    dx, dy = rng.choice([-1, 1]) * rng.randint(1, 3), rng.choice([-1, 1]) * rng.randint(1, 2)
    out = []
    for k in range(CLIP_FRAMES):
        x0 = 12 + dx * (k - CLIP_FRAMES // 2)
        y0 = 12 + dy * (k - CLIP_FRAMES // 2)
        out.append(frame[y0:y0 + size[1], x0:x0 + size[0]])
    return out


def expected_answer(spoken, typed, image):
    req_text = spoken if spoken is not None else typed
    req = None
    if req_text is not None:
        canon = req_text.lower().rstrip("?")
        for d, w in corpus.NUMERAL.items():
            canon = canon.replace(f" {w}", f" {d}")
        canon = canon.replace("larger 3 or", "larger, 3 or")
        matches = [r for r in corpus.all_requests()
                   if r.text == canon or r.text == canon.replace(", ", " ")]
        assert len(matches) == 1, (req_text, canon)
        req = matches[0]
    digit = image if isinstance(image, int) else None
    return corpus.answer_for_inputs(req, image is not None, digit)


def write_samples(bundle_dir: str, out_dir: str, seed: int = 4242, log=print):
    b = runtime.Bundle(bundle_dir)
    rng = random.Random(seed)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    manifest = []
    for sid, spoken, typed, image, kind, rate in SPECS:
        expected = expected_answer(spoken, typed, image)
        for attempt in range(12):
            entry = {"id": sid, "audio": None, "images": [], "frames": None, "text": typed}
            audio = None
            if spoken is not None:
                pcm16, voice = speak(spoken, rng, rate)
                audio_path = f"{sid}.wav"
                write_wav(f"{out_dir}/{audio_path}", pcm16, rate)
                entry["audio"] = audio_path
                audio = read_wav(f"{out_dir}/{audio_path}")
            frames = []
            if image is not None:
                digit = None if image == "none" else image
                if kind == "clip":
                    folder = f"{sid}_frames"
                    os.makedirs(f"{out_dir}/{folder}", exist_ok=True)
                    for k, fr in enumerate(clip_frames(rng, digit)):
                        path = f"{folder}/{k:03d}.jpg"
                        Image.fromarray(fr).save(f"{out_dir}/{path}", quality=88)
                        frames.append(read_image(f"{out_dir}/{path}"))
                    entry["frames"] = {"dir": folder, "fps": CLIP_FPS}
                else:
                    w = rng.choice([96, 128, 160, 200])
                    h = rng.choice([w, w * 3 // 4])
                    frame, _ = digits.render_frame(rng, digit, held_out=True, size=(w, h))
                    path = f"{sid}.{kind}"
                    Image.fromarray(frame).save(f"{out_dir}/{path}", **({"quality": 90} if kind == "jpg" else {}))
                    entry["images"] = [path]
                    frames.append(read_image(f"{out_dir}/{path}"))
            # Every frame, every policy: the model must give the expected answer.
            ok = True
            for fr in frames or [None]:
                for policy in runtime.POLICIES:
                    got = b.answer(typed, fr, audio, policy)
                    ok &= got == expected
            if ok:
                break
            log(f"sample {sid}: attempt {attempt} answered differently, redrawing")
        else:
            raise RuntimeError(f"sample {sid}: the model does not answer {expected!r}")
        entry["expected"] = expected
        manifest.append(entry)
        log(f"sample {sid}: {expected!r}")
    with open(f"{out_dir}/manifest.json", "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def load_inputs(samples_dir: str, entry: dict):
    """(text, list of RGB frames, PCM at 16 kHz or None) for a manifest entry."""
    audio = read_wav(f"{samples_dir}/{entry['audio']}") if entry["audio"] else None
    frames = [read_image(f"{samples_dir}/{p}") for p in entry["images"]]
    if entry["frames"]:
        d = f"{samples_dir}/{entry['frames']['dir']}"
        frames += [read_image(f"{d}/{n}") for n in sorted(os.listdir(d))]
    return entry["text"], frames, audio
