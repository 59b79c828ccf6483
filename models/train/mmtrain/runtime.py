"""Runs an exported bundle with onnxruntime the way the Rust runtime does.

This is the reference for `mmrt-models`: log-mel per the contract, chunked streaming
audio encode with carried state, image preprocessing, text embedding, prompt assembly
from the manifest's template, the fill policy for missing modalities, then a decoder
prefill with past length 0 and greedy decode steps that reuse the KV cache.

Fill policies for a modality that is absent from a turn:
- "omit": its template slot is dropped;
- "null": its learned null embedding (null_embeddings.safetensors) takes the slot;
- "completion": the completion model's fill for image and audio; text, which the
  completion model does not fill, gets its null embedding.
"""

import tomllib

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from . import features

POLICIES = ("omit", "null", "completion")


def bilinear_stretch(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float64 [height, width, 3], bilinear with half-pixel centres.

    Source coordinate of output pixel x is (x + 0.5) * W / width - 0.5, clamped to
    [0, W - 1]; the four neighbours are blended linearly. No antialiasing.
    """
    src = rgb.astype(np.float64)
    h, w = src.shape[:2]

    def coords(n_out, n_in):
        c = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        c = np.clip(c, 0.0, n_in - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo

    y0, y1, fy = coords(height, h)
    x0, x1, fx = coords(width, w)
    top = src[y0][:, x0] * (1 - fx)[None, :, None] + src[y0][:, x1] * fx[None, :, None]
    bot = src[y1][:, x0] * (1 - fx)[None, :, None] + src[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


class Bundle:
    def __init__(self, folder: str):
        self.folder = folder
        with open(f"{folder}/bundle.toml", "rb") as f:
            self.manifest = tomllib.load(f)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1

        def session(file):
            return ort.InferenceSession(f"{folder}/{file}", opts,
                                        providers=["CPUExecutionProvider"])

        m = self.manifest
        self.text = session(m["encoders"]["text"]["file"])
        self.image = session(m["encoders"]["image"]["file"])
        self.audio = session(m["encoders"]["audio"]["file"])
        self.completion = session(m["completion"]["file"])
        self.decoder = session(m["decoder"]["file"])
        self.tokenizer = Tokenizer.from_file(f"{folder}/{m['tokenizer']['file']}")
        self.nulls = load_file(f"{folder}/{m['completion']['null_embeddings']['file']}")
        self.hidden = m["hidden_size"]
        dec = m["decoder"]
        self.num_layers = dec["num_layers"]
        self.kv_heads = dec["num_kv_heads"]
        self.head_dim = dec["head_dim"]
        self.modality_ids = dec["modality_ids_map"]
        self.eos = self.tokenizer.token_to_id(m["special_tokens"]["eos"])

    # Encoders.

    def log_mel(self, pcm16k: np.ndarray) -> np.ndarray:
        return features.log_mel(pcm16k, pad=True)

    def encode_audio(self, pcm16k: np.ndarray) -> np.ndarray:
        """Streams the turn chunk by chunk, carrying the state: -> [tokens, hidden]."""
        return self.encode_audio_chunks(features.chunks(self.log_mel(pcm16k)))

    def encode_audio_chunks(self, chunks: np.ndarray) -> np.ndarray:
        """[n_chunks, frames, mels] -> [n_chunks * tokens, hidden], state carried."""
        spec = self.manifest["encoders"]["audio"]["state"][0]
        state = np.zeros((1, spec["shape"][1]), dtype=np.float32)
        outs = []
        for chunk in chunks:
            emb, state = self.audio.run(["embeds", spec["output"]],
                                        {"mel": chunk[None], spec["input"]: state})
            outs.append(emb[0])
        return np.concatenate(outs, axis=0)

    def preprocess_image(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> float32 [1, 3, height, width]."""
        p = self.manifest["encoders"]["image"]["preprocess"]
        x = bilinear_stretch(rgb, p["width"], p["height"]) / 255.0
        x = (x - np.array(p["mean"])) / np.array(p["std"])
        return x.transpose(2, 0, 1)[None].astype(np.float32)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(["embeds"], {"pixels": pixels})[0]

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        return self.encode_pixels(self.preprocess_image(rgb))[0]

    def token_ids(self, text: str) -> list:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def embed_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        return self.text.run(["embeds"], {"input_ids": ids})[0][0]

    def complete(self, summaries: dict, present: np.ndarray) -> dict:
        feeds = {f"{m}_summary": summaries[m][None].astype(np.float32)
                 for m in ("text", "image", "audio")}
        feeds["present"] = present[None].astype(np.float32)
        image_fill, audio_fill = self.completion.run(["image_fill", "audio_fill"], feeds)
        return {"image": image_fill[0], "audio": audio_fill[0]}

    # Prompt assembly.

    def prefix(self, text=None, image_rgb=None, pcm16k=None, policy="null"):
        """Embeddings and modality ids of the prompt for one turn."""
        embeds = {}
        if text is not None:
            embeds["text"] = self.embed_ids(self.token_ids(text))
        if image_rgb is not None:
            embeds["image"] = self.encode_image(image_rgb)
        if pcm16k is not None:
            embeds["audio"] = self.encode_audio(pcm16k)
        return self.prefix_from_embeds(embeds, policy)

    def prefix_from_embeds(self, embeds: dict, policy: str):
        assert policy in POLICIES
        fills = {}
        missing = [m for m in ("text", "image", "audio") if m not in embeds]
        if missing and policy == "completion":
            summaries = {m: embeds[m].mean(axis=0) if m in embeds
                         else np.zeros(self.hidden, np.float32) for m in ("text", "image", "audio")}
            present = np.array([m in embeds for m in ("text", "image", "audio")], np.float32)
            fills = self.complete(summaries, present)
        parts, mods = [], []
        for item in self.manifest["prompt"]["template"]:
            slot = item[1:-1] if item.startswith("{") and item.endswith("}") else None
            if slot is None:
                e = self.embed_ids(self.token_ids(item))
                mod = "text"
            elif slot in embeds:
                e, mod = embeds[slot], slot
            elif policy == "omit":
                continue
            elif policy == "completion" and slot in fills:
                e, mod = fills[slot], slot
            else:
                e, mod = self.nulls[slot], slot
            parts.append(e)
            mods += [self.modality_ids[mod]] * e.shape[0]
        return np.concatenate(parts, axis=0).astype(np.float32), np.array(mods, np.int64)

    # Decoding.

    def empty_past(self, batch: int = 1) -> dict:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        feeds = {}
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = z
            feeds[f"past_key_values.{i}.value"] = z
        return feeds

    def run_decoder(self, embeds, mask, positions, modality_ids, past: dict):
        feeds = {"inputs_embeds": embeds, "attention_mask": mask,
                 "position_ids": positions, "modality_ids": modality_ids, **past}
        names = ["logits"]
        for i in range(self.num_layers):
            names += [f"present.{i}.key", f"present.{i}.value"]
        out = self.decoder.run(names, feeds)
        new_past = {}
        for i in range(self.num_layers):
            new_past[f"past_key_values.{i}.key"] = out[1 + 2 * i]
            new_past[f"past_key_values.{i}.value"] = out[2 + 2 * i]
        return out[0], new_past

    def generate(self, prefix: np.ndarray, mods: np.ndarray, max_new_tokens=None):
        """Greedy decode -> (token ids, text, first prefill logits)."""
        if max_new_tokens is None:
            max_new_tokens = self.manifest["generation"]["max_new_tokens"]
        n = prefix.shape[0]
        mask = np.ones((1, n), np.int64)
        positions = np.arange(n, dtype=np.int64)[None]
        logits, past = self.run_decoder(prefix[None], mask, positions, mods[None],
                                        self.empty_past())
        first_logits = logits
        ids = []
        all_mods = mods[None]
        for step in range(max_new_tokens):
            tok = int(np.argmax(logits[0, -1]))
            if tok == self.eos:
                break
            ids.append(tok)
            if step + 1 == max_new_tokens:
                break
            e = self.embed_ids([tok])[None]
            mask = np.ones((1, n + 1), np.int64)
            all_mods = np.concatenate([all_mods, np.zeros((1, 1), np.int64)], axis=1)
            logits, past = self.run_decoder(e, mask, np.array([[n]], np.int64), all_mods, past)
            n += 1
        return ids, self.tokenizer.decode(ids), first_logits

    def answer(self, text=None, image_rgb=None, pcm16k=None, policy="null") -> str:
        prefix, mods = self.prefix(text, image_rgb, pcm16k, policy)
        return self.generate(prefix, mods)[1]
