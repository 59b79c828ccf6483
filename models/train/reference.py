"""Parity references for the Rust runtime's tests.

Runs the exported bundle (models/bundles/tiny) with onnxruntime's Python API exactly the
way mmrt-models does (see mmtrain/runtime.py for each step) and writes
models/tests/reference/:

- reference.safetensors: a few tensors (named in reference.json) to compare against
  with a tolerance: the log-mel and streamed audio embeddings of one sample WAV, the
  preprocessed pixels and embeddings of one sample image, the embeddings of a string,
  completion fills for given summaries, and the decoder logits of one sample's first
  prefill together with its inputs;
- reference.json: what produced each tensor, and for every sample in
  samples/manifest.json the greedy token ids and answer under each fill policy.

Usage (from anywhere): .venv/bin/python models/train/reference.py
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from mmtrain import features, runtime, samples  # noqa: E402

BUNDLE = f"{ROOT}/models/bundles/tiny"
SAMPLES = f"{ROOT}/samples"
OUT = f"{ROOT}/models/tests/reference"
TEXT = "What is 4 times 2?"
AUDIO_SAMPLE = "audio-text-times"
IMAGE_SAMPLE = "image-three"
DECODER_SAMPLE = "all-plus"
DECODER_POLICY = "null"


def main():
    b = runtime.Bundle(BUNDLE)
    with open(f"{SAMPLES}/manifest.json") as f:
        manifest = json.load(f)
    by_id = {e["id"]: e for e in manifest}
    tensors, described = {}, {}

    # Audio: log-mel of a 16 kHz sample and its streamed embeddings.
    entry = by_id[AUDIO_SAMPLE]
    _, _, pcm = samples.load_inputs(SAMPLES, entry)
    tensors["audio.log_mel"] = b.log_mel(pcm)
    tensors["audio.embeds"] = b.encode_audio(pcm)
    described["audio"] = {
        "file": f"samples/{entry['audio']}", "samples": int(pcm.size),
        "log_mel": "audio.log_mel: [frames, n_mels], end zero-padded to a multiple of chunk_frames",
        "embeds": "audio.embeds: [chunks * tokens, hidden], chunk by chunk, state zero then carried",
    }

    # Image: preprocessed pixels (to test the encoder alone) and embeddings.
    entry = by_id[IMAGE_SAMPLE]
    _, frames, _ = samples.load_inputs(SAMPLES, entry)
    pixels = b.preprocess_image(frames[0])
    tensors["image.pixels"] = pixels
    tensors["image.embeds"] = b.encode_pixels(pixels)
    described["image"] = {
        "file": f"samples/{entry['images'][0]}",
        "pixels": "image.pixels: [1, 3, h, w]; RGB, bilinear stretch with half-pixel centres "
                  "(source x = (x + 0.5) * W / w - 0.5, clamped, no antialiasing), /255, "
                  "(x - mean) / std",
        "embeds": "image.embeds: image encoder output for image.pixels",
    }

    # Text.
    ids = b.token_ids(TEXT)
    tensors["text.input_ids"] = np.array(ids, np.int64)
    tensors["text.embeds"] = b.embed_ids(ids)
    described["text"] = {"string": TEXT, "input_ids": ids,
                         "embeds": "text.embeds: [tokens, hidden]"}

    # Completion: summaries of the audio and text of one sample, image absent.
    text, _, pcm = samples.load_inputs(SAMPLES, by_id[AUDIO_SAMPLE])
    summaries = {"text": b.embed_ids(b.token_ids(text)).mean(0),
                 "image": np.zeros(b.hidden, np.float32),
                 "audio": b.encode_audio(pcm).mean(0)}
    present = np.array([1, 0, 1], np.float32)
    fills = b.complete(summaries, present)
    for m in ("text", "image", "audio"):
        tensors[f"completion.{m}_summary"] = summaries[m].astype(np.float32)
    tensors["completion.present"] = present
    tensors["completion.image_fill"] = fills["image"]
    tensors["completion.audio_fill"] = fills["audio"]
    described["completion"] = {
        "inputs": f"sample {AUDIO_SAMPLE}: mean text and audio embeddings, image absent",
        "tensors": ["completion.text_summary", "completion.image_summary",
                    "completion.audio_summary", "completion.present",
                    "completion.image_fill", "completion.audio_fill"]}

    # Decoder: the first prefill (past length 0) of one sample.
    text, frames, pcm = samples.load_inputs(SAMPLES, by_id[DECODER_SAMPLE])
    prefix, mods = b.prefix(text, frames[0] if frames else None, pcm, DECODER_POLICY)
    ids, answer, logits = b.generate(prefix, mods)
    tensors["decoder.inputs_embeds"] = prefix[None]
    tensors["decoder.modality_ids"] = mods[None]
    tensors["decoder.logits"] = logits
    described["decoder"] = {
        "sample": DECODER_SAMPLE, "policy": DECODER_POLICY,
        "inputs": "decoder.inputs_embeds [1, seq, hidden], decoder.modality_ids [1, seq]; "
                  "attention_mask all ones, position_ids 0..seq-1, past length 0",
        "logits": "decoder.logits [1, seq, vocab]", "greedy_ids": ids, "answer": answer}

    # Every sample: greedy ids and answer under each fill policy.
    per_sample = []
    for entry in manifest:
        text, frames, pcm = samples.load_inputs(SAMPLES, entry)
        image = frames[-1] if frames else None
        result = {"id": entry["id"], "expected": entry["expected"], "policies": {}}
        for policy in runtime.POLICIES:
            prefix, mods = b.prefix(text, image, pcm, policy)
            ids, answer, _ = b.generate(prefix, mods)
            result["policies"][policy] = {"token_ids": ids, "answer": answer,
                                          "prefix_len": int(prefix.shape[0])}
            assert answer == entry["expected"], (entry["id"], policy, answer)
        per_sample.append(result)

    os.makedirs(OUT, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              f"{OUT}/reference.safetensors")
    os.chmod(f"{OUT}/reference.safetensors", 0o644)
    doc = {
        "bundle": "models/bundles/tiny",
        "tolerance": {"log_mel": 1e-3, "embeds": 1e-3, "logits": 1e-2,
                      "note": "absolute; float32 graphs, float64 log-mel reference"},
        "audio_note": "WAVs not at 16 kHz (the *-24k samples) are resampled here with "
                      "scipy's polyphase filter; a runtime resampler differs slightly, so "
                      "compare only answers for those.",
        "frames_note": "for clips, the last frame is the image; every frame of each clip "
                       "gives the same answer",
        "fill_policies": {
            "omit": "an absent modality's template slot is dropped",
            "null": "an absent modality's slot gets its null embedding",
            "completion": "absent image/audio get the completion model's fill (summaries: "
                          "mean embeddings of present modalities, zeros when absent); "
                          "absent text gets its null embedding"},
        "tensors": described,
        "samples": per_sample,
    }
    with open(f"{OUT}/reference.json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
