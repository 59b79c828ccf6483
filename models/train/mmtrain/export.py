"""Writes the bundle: one ONNX graph per module, null embeddings, tokenizer, manifest.

The manifest is generated from the same constants the model uses, so the shapes it
declares are the shapes of the graphs.
"""

import hashlib
import os
import tomllib

import torch
import torch.nn as nn
from safetensors.numpy import save_file

from . import features, model as M

OPSET = 17


class DecoderExport(nn.Module):
    """Flattens the KV cache into named inputs and outputs."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, inputs_embeds, attention_mask, position_ids, modality_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(M.NUM_LAYERS)]
        logits, presents = self.decoder(inputs_embeds, attention_mask, position_ids,
                                        modality_ids, past)
        out = [logits]
        for k, v in presents:
            out += [k, v]
        return tuple(out)


def _export(module, args, path, inputs, outputs, axes):
    torch.onnx.export(module, args, path, input_names=inputs, output_names=outputs,
                      dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)


def export_graphs(model: M.TinyModel, out_dir: str):
    model = model.eval()
    os.makedirs(out_dir, exist_ok=True)
    with torch.no_grad():
        _export(model.text, (torch.zeros(2, 3, dtype=torch.long),),
                f"{out_dir}/text_embed.onnx", ["input_ids"], ["embeds"],
                {"input_ids": {0: "batch", 1: "seq"}, "embeds": {0: "batch", 1: "seq"}})
        _export(model.image, (torch.zeros(2, 3, M.IMAGE_SIZE, M.IMAGE_SIZE),),
                f"{out_dir}/image_encoder.onnx", ["pixels"], ["embeds"],
                {"pixels": {0: "batch"}, "embeds": {0: "batch"}})
        _export(model.audio, (torch.zeros(2, features.CHUNK_FRAMES, features.N_MELS),
                              torch.zeros(2, M.AUDIO_STATE)),
                f"{out_dir}/audio_encoder.onnx", ["mel", "state"], ["embeds", "state_out"],
                {"mel": {0: "batch"}, "state": {0: "batch"}, "embeds": {0: "batch"},
                 "state_out": {0: "batch"}})
        z = torch.zeros(2, M.HIDDEN)
        _export(model.completion, (z, z, z, torch.ones(2, 3)), f"{out_dir}/completion.onnx",
                ["text_summary", "image_summary", "audio_summary", "present"],
                ["image_fill", "audio_fill"],
                {n: {0: "batch"} for n in ["text_summary", "image_summary", "audio_summary",
                                           "present", "image_fill", "audio_fill"]})

        b, s, p = 2, 3, 2
        past_names, present_names, past_args = [], [], []
        axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
                "position_ids": {0: "batch", 1: "seq"}, "modality_ids": {0: "batch", 1: "total"},
                "logits": {0: "batch", 1: "seq"}}
        for i in range(M.NUM_LAYERS):
            for kind in ("key", "value"):
                past_names.append(f"past_key_values.{i}.{kind}")
                present_names.append(f"present.{i}.{kind}")
                axes[past_names[-1]] = {0: "batch", 2: "past"}
                axes[present_names[-1]] = {0: "batch", 2: "total"}
                past_args.append(torch.zeros(b, M.NUM_KV_HEADS, p, M.HEAD_DIM))
        args = (torch.zeros(b, s, M.HIDDEN), torch.ones(b, p + s, dtype=torch.long),
                torch.arange(p, p + s)[None].repeat(b, 1), torch.zeros(b, p + s, dtype=torch.long),
                *past_args)
        _export(DecoderExport(model.decoder), args, f"{out_dir}/decoder.onnx",
                ["inputs_embeds", "attention_mask", "position_ids", "modality_ids", *past_names],
                ["logits", *present_names], axes)

        nulls = {m: model.null[m].detach().numpy().astype("float32") for m in M.MODALITIES}
        save_file(nulls, f"{out_dir}/null_embeddings.safetensors")
        os.chmod(f"{out_dir}/null_embeddings.safetensors", 0o644)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def _shape(dims) -> str:
    return "[" + ", ".join(f'"{d}"' if isinstance(d, str) else str(d) for d in dims) + "]"


def _tensor(name, dims, dtype="f32") -> str:
    return f'{{ name = "{name}", shape = {_shape(dims)}, dtype = "{dtype}" }}'


def write_manifest(out_dir: str, vocab: int, description: str):
    h = M.HIDDEN
    sums = {f: sha256(f"{out_dir}/{f}") for f in [
        "text_embed.onnx", "image_encoder.onnx", "audio_encoder.onnx", "completion.onnx",
        "decoder.onnx", "null_embeddings.safetensors"]}
    toml = f'''# The built-in bundle of mmrt, written by models/train (do not edit by hand).
format = 1
name = "tiny"
description = "{description}"
hidden_size = {h}

[tokenizer]
file = "tokenizer.json"

[special_tokens]
bos = "<bos>"
eos = "<eos>"
pad = "<pad>"

[prompt]
template = ["<bos>", "{{image}}", "{{audio}}", "{{text}}", "<answer>"]

[generation]
max_new_tokens = 16
temperature = 0.0
top_k = 0
top_p = 1.0
stop = []

[encoders.text]
file = "text_embed.onnx"
sha256 = "{sums['text_embed.onnx']}"
input = {_tensor("input_ids", ["batch", "seq"], "i64")}
output = {_tensor("embeds", ["batch", "seq", h])}

[encoders.image]
file = "image_encoder.onnx"
sha256 = "{sums['image_encoder.onnx']}"
input = {_tensor("pixels", ["batch", 3, M.IMAGE_SIZE, M.IMAGE_SIZE])}
output = {_tensor("embeds", ["batch", M.IMAGE_TOKENS, h])}
[encoders.image.preprocess]
width = {M.IMAGE_SIZE}
height = {M.IMAGE_SIZE}
layout = "nchw"
resize = "stretch"
mean = [{", ".join(str(x) for x in M.IMAGE_MEAN)}]
std = [{", ".join(str(x) for x in M.IMAGE_STD)}]

[encoders.audio]
file = "audio_encoder.onnx"
sha256 = "{sums['audio_encoder.onnx']}"
input = {_tensor("mel", ["batch", features.CHUNK_FRAMES, features.N_MELS])}
output = {_tensor("embeds", ["batch", M.AUDIO_TOKENS, h])}
state = [{{ input = "state", output = "state_out", shape = {_shape(["batch", M.AUDIO_STATE])}, dtype = "f32" }}]
[encoders.audio.features]
kind = "log_mel"
sample_rate = {features.SAMPLE_RATE}
chunk_frames = {features.CHUNK_FRAMES}
n_fft = {features.N_FFT}
win_length = {features.WIN_LENGTH}
hop_length = {features.HOP_LENGTH}
n_mels = {features.N_MELS}
f_min = {features.F_MIN}
f_max = {features.F_MAX}
mel_scale = "htk"
mel_norm = "none"
log_offset = {features.LOG_OFFSET}
mean = {features.MEL_MEAN}
std = {features.MEL_STD}

[completion]
file = "completion.onnx"
sha256 = "{sums['completion.onnx']}"
modalities = ["text", "image", "audio"]
summaries = [
  {_tensor("text_summary", ["batch", h])},
  {_tensor("image_summary", ["batch", h])},
  {_tensor("audio_summary", ["batch", h])},
]
present = {_tensor("present", ["batch", 3])}
# One line: TOML 1.0 inline tables cannot span lines.
fills = {{ image = {_tensor("image_fill", ["batch", M.IMAGE_TOKENS, h])}, audio = {_tensor("audio_fill", ["batch", M.AUDIO_TOKENS, h])} }}
null_embeddings = {{ file = "null_embeddings.safetensors", sha256 = "{sums['null_embeddings.safetensors']}" }}

[decoder]
file = "decoder.onnx"
sha256 = "{sums['decoder.onnx']}"
inputs_embeds = {_tensor("inputs_embeds", ["batch", "seq", h])}
attention_mask = "attention_mask"
position_ids = "position_ids"
modality_ids = "modality_ids"
logits = "logits"
num_layers = {M.NUM_LAYERS}
num_kv_heads = {M.NUM_KV_HEADS}
head_dim = {M.HEAD_DIM}
max_positions = {M.MAX_POSITIONS}
past_key = "past_key_values.{{i}}.key"
past_value = "past_key_values.{{i}}.value"
present_key = "present.{{i}}.key"
present_value = "present.{{i}}.value"
[decoder.modality_ids_map]
text = 0
image = 1
audio = 2
'''
    tomllib.loads(toml)  # refuse to write a manifest that does not parse
    with open(f"{out_dir}/bundle.toml", "w") as f:
        f.write(toml)


def write_bundle(model: M.TinyModel, tokenizer, out_dir: str, description: str):
    export_graphs(model, out_dir)
    tokenizer.save(f"{out_dir}/tokenizer.json")
    write_manifest(out_dir, tokenizer.get_vocab_size(), description)
