"""Trains every module of the tiny model together on random episodes.

Each batch mixes modality subsets. A modality that is absent is, at random, omitted,
replaced by its null embedding or by the completion model's fill, so any subset works
under any fill policy. Besides the answer's cross-entropy, two auxiliary heads speed
up the encoders (a digit classifier on the image tokens, CTC over the request's words
on the audio tokens) and the completion model regresses the embeddings of a modality
hidden from it.
"""

import math
import random
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from . import corpus, episodes, features, model as M, tokenizer as T

POLICY_WEIGHTS = {"omit": 1.0, "null": 1.0, "completion": 1.0}


class Batcher:
    """Turns episodes into the tensors one training step needs."""

    def __init__(self, data, tok, split="train", seed=0):
        self.data, self.tok, self.split = data, tok, split
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        z = data.z
        self.image_bank = z[f"{split}_img"]
        self.image_labels = z[f"{split}_img_label"]
        self.clips_by_request = defaultdict(list)
        for i, r in enumerate(z[f"{split}_req"]):
            self.clips_by_request[int(r)].append(i)
        self.words = {w: i for i, w in enumerate(corpus.word_vocab())}
        self.bos, self.eos, self.answer = (tok.token_to_id(t) for t in ("<bos>", "<eos>", "<answer>"))
        self.pad = tok.token_to_id("<pad>")
        self.image_cache = None
        self.audio_cache = None
        self.mean = torch.tensor(M.IMAGE_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(M.IMAGE_STD).view(1, 3, 1, 1)

    def episodes(self, n):
        names = list(episodes.TRAIN_SUBSET_WEIGHTS)
        weights = list(episodes.TRAIN_SUBSET_WEIGHTS.values())
        return [episodes.make_episode(self.rng, self.rng.choices(names, weights)[0],
                                      self.image_labels, self.clips_by_request)
                for _ in range(n)]

    def clip_features(self, clip):
        """Normalised log-mel of a training clip with lead-in silence, gain and noise.

        Done on the clean mel power: gain scales it, and noise adds its own mel power
        (the cross terms average out), which is far cheaper than redoing the STFT.
        """
        power = self.data.train_power[clip]
        lead = int(self.np_rng.integers(0, 30))
        power = np.concatenate([np.zeros((lead, features.N_MELS), np.float32), power])
        gain = 10 ** (self.np_rng.uniform(-18, 6) / 10)  # a power ratio
        power = power * gain
        if self.np_rng.random() < 0.6:
            snr = self.np_rng.uniform(6, 40)
            level = self.data.train_rms[clip] ** 2 * gain * 10 ** (-snr / 10)
            bank = self.data.noise[self.np_rng.integers(0, len(self.data.noise))]
            start = int(self.np_rng.integers(0, len(bank) - len(power)))
            power = power + level * bank[start:start + len(power)]
        # The end of the turn is completed with silence, as the runtime does.
        n = max(1, math.ceil(len(power) / features.CHUNK_FRAMES)) * features.CHUNK_FRAMES
        power = np.concatenate([power, np.zeros((n - len(power), features.N_MELS), np.float32)])
        return (np.log(power + features.LOG_OFFSET) - features.MEL_MEAN) / features.MEL_STD

    def audio_batch(self, clip_ids):
        """-> chunks [n, max_chunks, frames, mels] and chunk counts."""
        feats = [self.clip_features(c) for c in clip_ids]
        counts = [len(f) // features.CHUNK_FRAMES for f in feats]
        n = max(counts)
        silence = (math.log(features.LOG_OFFSET) - features.MEL_MEAN) / features.MEL_STD
        out = np.full((len(feats), n * features.CHUNK_FRAMES, features.N_MELS), silence, np.float32)
        for i, f in enumerate(feats):
            out[i, :len(f)] = f
        return torch.from_numpy(out).reshape(len(feats), n, features.CHUNK_FRAMES, features.N_MELS), counts

    def image_tokens(self, model, idx, augment=True):
        """Image tokens, from cached features when the convolutions are frozen."""
        if self.image_cache is not None:
            return model.image.project(self.image_cache[torch.as_tensor(np.asarray(idx))])
        return model.image(self.image_batch(idx, augment))

    def audio_tokens(self, model, clip_ids):
        """Audio tokens [n, longest, HIDDEN] and token counts, cached when frozen."""
        if self.audio_cache is not None:
            feats = [self.audio_cache[int(self.np_rng.integers(0, len(self.audio_cache)))][c]
                     for c in clip_ids]
            lens = [f.shape[0] for f in feats]
            out = torch.zeros(len(feats), max(lens), feats[0].shape[1])
            for i, f in enumerate(feats):
                out[i, :lens[i]] = f
            return model.audio.project(out), lens
        chunks, counts = self.audio_batch(clip_ids)
        return model.encode_audio(chunks), [c * M.AUDIO_TOKENS for c in counts]

    @torch.no_grad()
    def build_caches(self, model, conv_threads, audio_variants=3, log=print):
        """Freezes the encoders' convolutions and GRU: their outputs are computed once."""
        t0 = time.time()
        model.eval()
        torch.set_num_threads(conv_threads)
        with torch.backends.mkldnn.flags(enabled=True):
            feats = [model.image.features(self.image_batch(
                np.arange(i, min(i + 1024, len(self.image_bank))), augment=False))
                for i in range(0, len(self.image_bank), 1024)]
        self.image_cache = torch.cat(feats)
        torch.set_num_threads(1)
        n_clips = len(self.data.z["train_len"])
        self.audio_cache = []
        for _ in range(audio_variants):
            variant = [None] * n_clips
            order = np.argsort(self.data.z["train_len"])  # similar lengths batch together
            for s in range(0, n_clips, 64):
                ids = order[s:s + 64]
                chunks, counts = self.audio_batch(ids)
                f = model.audio.turn_features(chunks)
                for j, c in enumerate(ids):
                    variant[c] = f[j, :counts[j] * M.AUDIO_TOKENS].clone()
            self.audio_cache.append(variant)
        model.train()
        torch.backends.mkldnn.enabled = False
        log(f"cached frozen encoder features in {time.time() - t0:.0f}s")

    def image_batch(self, idx, augment=True):
        x = torch.from_numpy(self.image_bank[idx]).float().permute(0, 3, 1, 2) / 255.0
        if augment:
            b = x.shape[0]
            x = x * torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2) + torch.empty(b, 1, 1, 1).uniform_(-0.1, 0.1)
            x = x + torch.randn_like(x) * torch.empty(b, 1, 1, 1).uniform_(0, 0.04)
            if self.rng.random() < 0.5:  # sometimes swap colour channels
                x = x[:, torch.randperm(3)]
            x = x.clamp(0, 1)
        return (x - self.mean) / self.std


def _rows_to_batch(values, rows, b):
    """[len(rows), ...] -> [b, ...] with zeros in the rows not listed."""
    out = values.new_zeros((b, *values.shape[1:]))
    if rows:
        out = out.index_copy(0, torch.tensor(rows), values)
    return out


def _masked_mean(x, lengths):
    """x [n, t, h], lengths [n] -> mean over the first lengths[i] steps, [n, h]."""
    mask = (torch.arange(x.shape[1])[None, :] < torch.tensor(lengths)[:, None]).float()
    return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def forward_batch(model, batcher, eps, policies=None, augment=True):
    """Teacher-forced loss terms for a list of episodes.

    Vectorised: each encoder runs once on its rows, and the decoder input is gathered
    from one pool of embeddings by an index matrix built in numpy.
    """
    tok = batcher.tok
    rng = batcher.rng
    b = len(eps)
    h = M.HIDDEN
    aux = {}

    # Encoders, batched per modality.
    img_rows = [i for i, e in enumerate(eps) if e.image is not None]
    aud_rows = [i for i, e in enumerate(eps) if e.clip is not None]
    txt_rows = [i for i, e in enumerate(eps) if e.typed is not None]
    img_tok = torch.zeros(0, M.IMAGE_TOKENS, h)
    aud_tok = torch.zeros(0, 0, h)
    aud_len = []
    if img_rows:
        img_tok = batcher.image_tokens(model, [eps[i].image for i in img_rows], augment)
        labels = torch.tensor([10 if eps[i].digit is None else eps[i].digit for i in img_rows])
        aux["image_cls"] = F.cross_entropy(model.image_cls(img_tok.mean(1)), labels)
    if aud_rows:
        aud_tok, aud_len = batcher.audio_tokens(model, [eps[i].clip for i in aud_rows])
        targets = [[batcher.words[w] for w in
                    corpus.words_for_ctc(episodes.REQUESTS[eps[i].request].text)]
                   for i in aud_rows]
        logp = F.log_softmax(model.audio_ctc(aud_tok), -1).transpose(0, 1).contiguous()
        aux["audio_ctc"] = F.ctc_loss(
            logp, torch.tensor([t for ts in targets for t in ts]), torch.tensor(aud_len),
            torch.tensor([len(t) for t in targets]), blank=len(batcher.words),
            zero_infinity=True)
    txt_ids = [tok.encode(eps[i].typed, add_special_tokens=False).ids for i in txt_rows]
    txt_tok = None
    if txt_rows:
        arr = np.full((len(txt_ids), max(len(x) for x in txt_ids)), batcher.pad, np.int64)
        for j, x in enumerate(txt_ids):
            arr[j, :len(x)] = x
        txt_tok = model.text(torch.from_numpy(arr))

    # Completion: summaries of what is present, once as is (fills for the decoder) and
    # once with a present image or audio hidden (regression targets).
    img_sum = _rows_to_batch(img_tok.mean(1), img_rows, b)
    aud_sum = _rows_to_batch(_masked_mean(aud_tok, aud_len), aud_rows, b) if aud_rows \
        else torch.zeros(b, h)
    txt_sum = _rows_to_batch(_masked_mean(txt_tok, [len(x) for x in txt_ids]), txt_rows, b) \
        if txt_rows else torch.zeros(b, h)
    present = np.array([[m in e.modalities for m in M.MODALITIES] for e in eps], np.float32)
    fill_image, fill_audio = model.completion(txt_sum, img_sum, aud_sum, torch.from_numpy(present))
    hide = [rng.choice([m for m in ("image", "audio") if m in e.modalities] or [None]) for e in eps]
    present2 = present.copy()
    for i, m in enumerate(hide):
        if m is not None:
            present2[i, M.MODALITY_IDS[m]] = 0.0
    hid_image, hid_audio = model.completion(txt_sum, img_sum, aud_sum, torch.from_numpy(present2))
    terms = []
    rows = [i for i in img_rows if hide[i] == "image"]
    if rows:
        sel = [img_rows.index(i) for i in rows]
        terms.append(F.mse_loss(hid_image[rows], img_tok[sel].detach(), reduction="sum")
                     / (M.IMAGE_TOKENS * h))
    rows = [i for i in aud_rows if hide[i] == "audio"]
    if rows:
        # Targets: the turn's audio tokens averaged over 4 equal spans.
        sel = [aud_rows.index(i) for i in rows]
        pool = np.zeros((len(rows), M.AUDIO_TOKENS, aud_tok.shape[1]), np.float32)
        for j, a in enumerate(sel):
            edges = np.linspace(0, aud_len[a], M.AUDIO_TOKENS + 1).round().astype(int)
            for k in range(M.AUDIO_TOKENS):
                pool[j, k, edges[k]:edges[k + 1]] = 1.0 / max(1, edges[k + 1] - edges[k])
        target = torch.bmm(torch.from_numpy(pool), aud_tok[sel].detach())
        terms.append(F.mse_loss(hid_audio[rows], target, reduction="sum") / (M.AUDIO_TOKENS * h))
    if terms:
        aux["completion"] = sum(terms) / max(1, sum(1 for x in hide if x is not None))

    # The pool every non-text decoder input is gathered from.
    pool_parts = [model.null["text"], model.null["image"], model.null["audio"],
                  img_tok.reshape(-1, h), aud_tok.reshape(-1, h),
                  fill_image.reshape(-1, h), fill_audio.reshape(-1, h)]
    offsets = np.cumsum([0] + [p.shape[0] for p in pool_parts])
    null_at = {"text": offsets[0], "image": offsets[1], "audio": offsets[2]}
    pool = torch.cat(pool_parts)
    t_aud = aud_tok.shape[1]

    # Prompt assembly per the template, then the answer, teacher-forced.
    seq_ids, seq_src, seq_mod, seq_tgt = [], [], [], []
    for i, e in enumerate(eps):
        ids, src, mod = [batcher.bos], [-1], [0]
        for m in ("image", "audio", "text"):
            if m in e.modalities:
                if m == "image":
                    j = img_rows.index(i)
                    idx = list(range(offsets[3] + j * M.IMAGE_TOKENS,
                                     offsets[3] + (j + 1) * M.IMAGE_TOKENS))
                elif m == "audio":
                    j = aud_rows.index(i)
                    idx = list(range(offsets[4] + j * t_aud, offsets[4] + j * t_aud + aud_len[j]))
                else:
                    t = txt_ids[txt_rows.index(i)]
                    ids += t
                    src += [-1] * len(t)
                    mod += [0] * len(t)
                    continue
            else:
                policy = policies[i] if policies else rng.choices(
                    list(POLICY_WEIGHTS), list(POLICY_WEIGHTS.values()))[0]
                if policy == "omit":
                    continue
                n_tok = M.NULL_TOKENS[m]
                if policy == "completion" and m == "image":
                    idx = list(range(offsets[5] + i * M.IMAGE_TOKENS, offsets[5] + (i + 1) * M.IMAGE_TOKENS))
                elif policy == "completion" and m == "audio":
                    idx = list(range(offsets[6] + i * M.AUDIO_TOKENS, offsets[6] + (i + 1) * M.AUDIO_TOKENS))
                else:
                    idx = list(range(null_at[m], null_at[m] + n_tok))
            ids += [batcher.pad] * len(idx)
            src += idx
            mod += [M.MODALITY_IDS[m]] * len(idx)
        answer_ids = T.encode_answer(tok, e.answer)
        start = len(ids)  # position of <answer>
        ids += [batcher.answer] + answer_ids[:-1]
        src += [-1] * len(answer_ids)
        mod += [0] * len(answer_ids)
        tgt = [-100] * start + answer_ids
        seq_ids.append(ids)
        seq_src.append(src)
        seq_mod.append(mod)
        seq_tgt.append(tgt)
    n = max(len(x) for x in seq_ids)
    ids = np.full((b, n), batcher.pad, np.int64)
    src = np.full((b, n), -1, np.int64)
    mod = np.zeros((b, n), np.int64)
    tgt = np.full((b, n), -100, np.int64)
    mask = np.zeros((b, n), np.int64)
    for i in range(b):
        k = len(seq_ids[i])
        ids[i, :k], src[i, :k], mod[i, :k], tgt[i, :k], mask[i, :k] = (
            seq_ids[i], seq_src[i], seq_mod[i], seq_tgt[i], 1)
    src_t = torch.from_numpy(src)
    x = torch.where((src_t >= 0)[..., None], pool[src_t.clamp(min=0)], model.text(torch.from_numpy(ids)))
    positions = torch.arange(n)[None].repeat(b, 1)
    logits, _ = model.decoder(x, torch.from_numpy(mask), positions, torch.from_numpy(mod),
                              model.empty_past(b))
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(tgt).reshape(-1),
                           ignore_index=-100)
    return loss, aux


LOG_EVERY = 50
AUX_WEIGHTS = {"image_cls": 0.5, "audio_ctc": 0.3, "completion": 1.0}


def _schedule(opt, steps, warmup):
    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def pretrain_image(model, batcher, steps, batch_size=128, log=print):
    """The image encoder alone, as an 11-way digit classifier."""
    params = list(model.image.parameters()) + list(model.image_cls.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    sched = _schedule(opt, steps, 50)
    labels = batcher.image_labels
    t0, running = time.time(), 0.0
    for step in range(steps):
        idx = batcher.np_rng.integers(0, len(labels), batch_size)
        logits = model.image_cls(model.image(batcher.image_batch(idx)).mean(1))
        loss = F.cross_entropy(logits, torch.from_numpy(labels[idx]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % LOG_EVERY == 0:
            log(f"image step {step + 1}/{steps} image_cls={running / LOG_EVERY:.3f} "
                f"({time.time() - t0:.0f}s)")
            running = 0.0


def pretrain_audio(model, batcher, steps, batch_size=48, log=print):
    """The audio encoder alone, with CTC over the words of the spoken request."""
    params = list(model.audio.parameters()) + list(model.audio_ctc.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    sched = _schedule(opt, steps, 50)
    reqs = batcher.data.z["train_req"]
    t0, running = time.time(), 0.0
    for step in range(steps):
        clips = batcher.np_rng.integers(0, len(reqs), batch_size)
        chunks, counts = batcher.audio_batch(clips)
        tokens = model.encode_audio(chunks)
        targets = [[batcher.words[w] for w in
                    corpus.words_for_ctc(episodes.REQUESTS[int(reqs[c])].text)] for c in clips]
        logp = F.log_softmax(model.audio_ctc(tokens), -1).transpose(0, 1).contiguous()
        loss = F.ctc_loss(logp, torch.tensor([t for ts in targets for t in ts]),
                          torch.tensor([c * M.AUDIO_TOKENS for c in counts]),
                          torch.tensor([len(t) for t in targets]), blank=len(batcher.words),
                          zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % LOG_EVERY == 0:
            log(f"audio step {step + 1}/{steps} audio_ctc={running / LOG_EVERY:.3f} "
                f"({time.time() - t0:.0f}s)")
            running = 0.0


def train(data, tok, steps: int, image_steps: int, audio_steps: int, batch_size: int = 48,
          seed: int = 0, conv_threads: int = 2, log=print):
    """Pretrains the encoders on their auxiliary tasks, then trains everything jointly.

    Threads per phase: the image convolutions run faster on `conv_threads` with oneDNN;
    the audio GRU and the small joint-phase ops run faster on one thread (measured on
    the 2-core machine). oneDNN stays off wherever the GRU runs: its GRU backward in
    Debian's torch 1.13 returns huge input gradients.
    """
    torch.manual_seed(seed)
    model = M.TinyModel(tok.get_vocab_size(), len(corpus.word_vocab()))
    batcher = Batcher(data, tok, "train", seed)
    model.train()
    torch.set_num_threads(conv_threads)
    with torch.backends.mkldnn.flags(enabled=True):
        pretrain_image(model, batcher, image_steps, log=log)
    torch.set_num_threads(1)
    with torch.backends.mkldnn.flags(enabled=False):
        pretrain_audio(model, batcher, audio_steps, log=log)

    # Joint training. The encoders' convolutions and GRU stay as pretrained (their
    # outputs are cached); their projections into the shared space train with the rest.
    batcher.build_caches(model, conv_threads, log=log)
    frozen = set(id(p) for m in (model.image.convs, model.audio.convs, model.audio.gru)
                 for p in m.parameters())
    model.image.convs.eval()  # batch norm keeps its pretrained statistics
    model.audio.convs.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if id(p) not in frozen],
                            lr=2e-3, weight_decay=0.01)
    sched = _schedule(opt, steps, 200)
    t0 = time.time()
    running = defaultdict(float)
    torch.set_num_threads(1)
    for step in range(steps):
        loss, aux = forward_batch(model, batcher, batcher.episodes(batch_size))
        total = loss + sum(AUX_WEIGHTS[k] * v for k, v in aux.items())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running["answer"] += loss.item()
        for k, v in aux.items():
            running[k] += v.item()
        if (step + 1) % LOG_EVERY == 0:
            parts = " ".join(f"{k}={v / LOG_EVERY:.3f}" for k, v in running.items())
            log(f"step {step + 1}/{steps} {parts} ({time.time() - t0:.0f}s)")
            running.clear()
    model.eval()
    return model
