"""Exact-match evaluation of an exported bundle on held-out voices, writers and fonts.

Runs the ONNX graphs through `runtime.Bundle`, the same path as the Rust runtime:
PCM -> log-mel -> streamed audio encoder, image -> preprocess -> encoder, typed text ->
tokenizer -> embeddings, prompt assembly with a fill policy, greedy decoding.
Held-out speech gets a random gain and light noise, then PCM16 rounding.
"""

import random
from collections import defaultdict

import numpy as np

from . import episodes, runtime

EVAL_SUBSETS = ["all three", "audio+text", "image+text", "text only", "audio+image",
                "audio only", "image only", "nothing"]


def degrade(pcm16: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = pcm16.astype(np.float64) / 32768.0 * 10 ** (rng.uniform(-12, 0) / 20)
    rms = np.sqrt(np.mean(x ** 2)) + 1e-9
    x = x + rng.standard_normal(x.size) * rms * 10 ** (-rng.uniform(15, 35) / 20)
    return (np.clip(np.round(x * 32768), -32768, 32767) / 32768.0).astype(np.float32)


def evaluate(bundle_dir: str, data, per_subset: int = 200, seed: int = 99, log=print):
    b = runtime.Bundle(bundle_dir)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    z = data.z
    labels = z["eval_img_label"]
    sources = z["eval_img_source"]
    clips = defaultdict(list)
    for i, r in enumerate(z["eval_req"]):
        clips[int(r)].append(i)
    results = {}
    by_source = defaultdict(lambda: [0, 0])
    failures = []
    for subset in EVAL_SUBSETS:
        n = per_subset if subset != "nothing" else 20
        correct = {p: 0 for p in runtime.POLICIES}
        for _ in range(n):
            ep = episodes.make_episode(rng, subset, labels, clips)
            embeds = {}
            if ep.typed is not None:
                embeds["text"] = b.embed_ids(b.token_ids(ep.typed))
            if ep.image is not None:
                embeds["image"] = b.encode_pixels(b.preprocess_image(z["eval_img"][ep.image]))[0]
            if ep.clip is not None:
                embeds["audio"] = b.encode_audio(degrade(data.clip("eval", ep.clip), nrng))
            for policy in runtime.POLICIES:
                prefix, mods = b.prefix_from_embeds(embeds, policy)
                got = b.generate(prefix, mods)[1]
                ok = got == ep.answer
                correct[policy] += ok
                if policy == "null":
                    if subset == "image only":
                        by_source[str(sources[ep.image])][0] += ok
                        by_source[str(sources[ep.image])][1] += 1
                    if not ok and len(failures) < 400:
                        failures.append((subset, ep.typed, ep.request, ep.digit, ep.answer, got))
        results[subset] = {p: correct[p] / n for p in runtime.POLICIES} | {"n": n}
        log(f"{subset:12s} " + " ".join(f"{p}={results[subset][p]:.3f}" for p in runtime.POLICIES))
    return results, {k: v[0] / max(1, v[1]) for k, v in by_source.items()}, failures


def markdown_table(results: dict) -> str:
    lines = ["| inputs present | n | omit | null fill | completion fill |",
             "|---|---|---|---|---|"]
    for subset, r in results.items():
        lines.append(f"| {subset} | {r['n']} | {r['omit']:.1%} | {r['null']:.1%} | "
                     f"{r['completion']:.1%} |")
    return "\n".join(lines)
