"""Checks an exported bundle: manifest against graphs, dynamic axes, past length 0,
batches with left padding, cached decoding against a full prefill, and (given the
torch model) agreement of every graph with the module it came from."""

import numpy as np
import onnxruntime as ort
import torch

from . import features, runtime

DTYPES = {"tensor(float)": "f32", "tensor(int64)": "i64"}


def _check_io(sess, spec, where, inputs=True):
    nodes = {n.name: n for n in (sess.get_inputs() if inputs else sess.get_outputs())}
    node = nodes.get(spec["name"])
    assert node is not None, f"{where}: no tensor {spec['name']} in {list(nodes)}"
    assert DTYPES[node.type] == spec["dtype"], f"{where}: {spec['name']} dtype {node.type}"
    assert len(node.shape) == len(spec["shape"]), f"{where}: {spec['name']} rank {node.shape}"
    for want, have in zip(spec["shape"], node.shape):
        if isinstance(want, int):
            assert have == want or isinstance(have, str), f"{where}: {spec['name']} {node.shape}"


def check_manifest(b: runtime.Bundle):
    m = b.manifest
    for key, sess in (("text", b.text), ("image", b.image), ("audio", b.audio)):
        _check_io(sess, m["encoders"][key]["input"], key)
        _check_io(sess, m["encoders"][key]["output"], key, inputs=False)
    st = m["encoders"]["audio"]["state"][0]
    _check_io(b.audio, {"name": st["input"], "shape": st["shape"], "dtype": st["dtype"]}, "audio")
    _check_io(b.audio, {"name": st["output"], "shape": st["shape"], "dtype": st["dtype"]},
              "audio", inputs=False)
    for s in m["completion"]["summaries"] + [m["completion"]["present"]]:
        _check_io(b.completion, s, "completion")
    for s in m["completion"]["fills"].values():
        _check_io(b.completion, s, "completion", inputs=False)
    _check_io(b.decoder, m["decoder"]["inputs_embeds"], "decoder")
    names = [i.name for i in b.decoder.get_inputs()]
    assert names[:4] == ["inputs_embeds", "attention_mask", "position_ids", "modality_ids"], names
    for t in ("bos", "eos", "pad"):
        tok = m["special_tokens"][t]
        assert b.tokenizer.encode(tok, add_special_tokens=False).ids == [
            b.tokenizer.token_to_id(tok)], tok


def check_decoder(b: runtime.Bundle, seed=0):
    """A cached decode equals a full prefill; a left-padded batch equals single rows."""
    rng = np.random.default_rng(seed)
    h = b.hidden
    n, extra = 9, 3
    x = rng.standard_normal((1, n + extra, h)).astype(np.float32)
    mods = rng.integers(0, 3, (1, n + extra)).astype(np.int64)
    pos = np.arange(n + extra)[None]
    full, _ = b.run_decoder(x, np.ones((1, n + extra), np.int64), pos, mods, b.empty_past())
    logits, past = b.run_decoder(x[:, :n], np.ones((1, n), np.int64), pos[:, :n],
                                 mods[:, :n], b.empty_past())
    steps = [logits]
    for i in range(extra):
        t = n + i + 1
        logits, past = b.run_decoder(x[:, n + i:n + i + 1], np.ones((1, t), np.int64),
                                     pos[:, n + i:n + i + 1], mods[:, :t], past)
        steps.append(logits)
    cached = np.concatenate(steps, axis=1)
    err = np.abs(cached - full).max()
    assert err < 1e-4, f"cached decode differs from prefill by {err}"

    # Batch of two, the shorter row left-padded (padding masked, position and modality 0).
    m2 = 5
    y = rng.standard_normal((1, m2, h)).astype(np.float32)
    ymods = rng.integers(0, 3, (1, m2)).astype(np.int64)
    single_y, _ = b.run_decoder(y, np.ones((1, m2), np.int64), np.arange(m2)[None], ymods,
                                b.empty_past())
    pad = n - m2
    xb = np.concatenate([x[:, :n], np.concatenate([np.zeros((1, pad, h), np.float32), y], 1)])
    maskb = np.ones((2, n), np.int64)
    maskb[1, :pad] = 0
    posb = np.stack([np.arange(n), np.concatenate([np.zeros(pad, np.int64), np.arange(m2)])])
    modsb = np.concatenate([mods[:, :n], np.concatenate([np.zeros((1, pad), np.int64), ymods], 1)])
    batch, _ = b.run_decoder(xb, maskb, posb, modsb, b.empty_past(2))
    e1 = np.abs(batch[0] - full[0, :n]).max()
    e2 = np.abs(batch[1, pad:] - single_y[0]).max()
    assert e1 < 1e-4 and e2 < 1e-4, f"batched rows differ: {e1} {e2}"
    assert np.isfinite(batch).all(), "padding rows must stay finite"


def check_against_torch(b: runtime.Bundle, model, seed=0):
    model = model.eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        ids = rng.integers(0, b.tokenizer.get_vocab_size(), (2, 5)).astype(np.int64)
        e = np.abs(b.text.run(["embeds"], {"input_ids": ids})[0]
                   - model.text(torch.tensor(ids)).numpy()).max()
        assert e < 1e-5, f"text {e}"
        px = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
        e = np.abs(b.encode_pixels(px) - model.image(torch.tensor(px)).numpy()).max()
        assert e < 1e-4, f"image {e}"
        mel = rng.standard_normal((2, features.CHUNK_FRAMES, features.N_MELS)).astype(np.float32)
        st = rng.standard_normal((2, model.audio.gru.hidden_size)).astype(np.float32)
        o, s = b.audio.run(None, {"mel": mel, "state": st})
        to, ts = model.audio(torch.tensor(mel), torch.tensor(st))
        e = max(np.abs(o - to.numpy()).max(), np.abs(s - ts.numpy()).max())
        assert e < 1e-4, f"audio {e}"
        # Streaming chunk by chunk equals encoding the whole turn at once.
        turn = rng.standard_normal((1, 3, features.CHUNK_FRAMES, features.N_MELS)).astype(np.float32)
        whole = model.encode_audio(torch.tensor(turn))[0].numpy()
        streamed = b.encode_audio_chunks(turn[0])
        e = np.abs(whole - streamed).max()
        assert e < 1e-4, f"streamed audio {e}"
        x = rng.standard_normal((2, 7, b.hidden)).astype(np.float32)
        mods = rng.integers(0, 3, (2, 7))
        logits, _ = b.run_decoder(x, np.ones((2, 7), np.int64), np.arange(7)[None].repeat(2, 0),
                                  mods, b.empty_past(2))
        tl, _ = model.decoder(torch.tensor(x), torch.ones(2, 7, dtype=torch.long),
                              torch.arange(7)[None].repeat(2, 1), torch.tensor(mods),
                              model.empty_past(2))
        e = np.abs(logits - tl.numpy()).max()
        assert e < 1e-3, f"decoder {e}"


def check_bundle(folder: str, model=None):
    b = runtime.Bundle(folder)
    check_manifest(b)
    check_decoder(b)
    if model is not None:
        check_against_torch(b, model)
    # One whole turn through every graph, each fill policy.
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (96, 120, 3)).astype(np.uint8)
    pcm = (rng.standard_normal(16000) * 0.05).astype(np.float32)
    for policy in runtime.POLICIES:
        for kw in ({"text": "what is 4 times 2"}, {"image_rgb": rgb, "pcm16k": pcm}, {}):
            prefix, mods = b.prefix(policy=policy, **kw)
            b.generate(prefix, mods, max_new_tokens=3)
    return b
