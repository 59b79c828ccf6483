"""The tiny model: one encoder per modality into a shared space, a completion model
for missing modalities, and a decoder whose attention is routed per modality.

Every module here is exported to its own ONNX graph by `export`; the shapes and names
follow docs/bundle-format.md.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import features

HIDDEN = 128
NUM_LAYERS = 3
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = 32
FF = 384
MAX_POSITIONS = 256
ROPE_BASE = 10000.0

IMAGE_SIZE = 32
IMAGE_TOKENS = 4
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)
IMAGE_CLASSES = 11  # ten digits and "no digit"

AUDIO_TOKENS = 4  # per chunk of features.CHUNK_FRAMES frames
AUDIO_STATE = 192

MODALITIES = ("text", "image", "audio")
MODALITY_IDS = {"text": 0, "image": 1, "audio": 2}
NULL_TOKENS = {"text": 1, "image": IMAGE_TOKENS, "audio": AUDIO_TOKENS}
# A large finite negative: a row whose keys are all masked stays finite.
MASK_VALUE = -1.0e9


class TextEmbed(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Embedding(vocab, HIDDEN)
        nn.init.normal_(self.table.weight, std=0.5)

    def forward(self, input_ids):
        return self.table(input_ids)


class ImageEncoder(nn.Module):
    """[batch, 3, 32, 32] normalised pixels -> [batch, 4, HIDDEN]."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.proj = nn.Linear(128 * 4 * 4, IMAGE_TOKENS * HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-2)

    def features(self, pixels):
        """[batch, 3, h, w] -> [batch, 2048] convolutional features."""
        # Per-image standardisation first: lighting and colour vary from camera to camera.
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        std = ((pixels - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True).add(1e-4).sqrt()
        return self.convs((pixels - mean) / std).flatten(1)

    def project(self, feats):
        """Features -> IMAGE_TOKENS tokens in the shared space."""
        x = self.proj(F.dropout(feats, 0.1, self.training))
        return self.norm(x.view(-1, IMAGE_TOKENS, HIDDEN))

    def forward(self, pixels):
        return self.project(self.features(pixels))


class AudioEncoder(nn.Module):
    """One chunk of log-mel frames plus the recurrent state -> 4 tokens and new state.

    Convolutions see only the chunk; context across chunks flows through the GRU state,
    so a turn is encoded while it arrives. Training runs the GRU over a whole turn at
    once (`encode_turn`); the exported graph unrolls the same cell over one chunk.
    """

    def __init__(self):
        super().__init__()
        m = features.N_MELS
        self.convs = nn.Sequential(
            nn.Conv1d(m, 128, 5, padding=2), nn.BatchNorm1d(128), nn.GELU(),
            nn.Conv1d(128, 128, 3, stride=2, padding=1), nn.BatchNorm1d(128), nn.GELU(),
            nn.Conv1d(128, 128, 3, stride=2, padding=1), nn.BatchNorm1d(128), nn.GELU(),
            nn.Conv1d(128, 160, 3, stride=2, padding=1), nn.BatchNorm1d(160), nn.GELU(),
        )
        self.gru = nn.GRU(160, AUDIO_STATE, batch_first=True)
        self.out = nn.Linear(AUDIO_STATE + 160, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-2)

    def frontend(self, mel):
        """[n, frames, mels] -> [n, AUDIO_TOKENS, 160], each chunk on its own."""
        return self.convs(mel.transpose(1, 2)).transpose(1, 2)

    def tokens(self, hs, x):
        return self.project(torch.cat([hs, x], dim=-1))

    def project(self, feats):
        """[..., AUDIO_STATE + 160] recurrent and convolutional features -> tokens."""
        return self.norm(self.out(feats))

    def forward(self, mel, state):
        x = self.frontend(mel)
        # The GRU cell unrolled with nn.GRU's weights and gate order (r, z, n).
        gx = F.linear(x, self.gru.weight_ih_l0, self.gru.bias_ih_l0)
        h = state
        outs = []
        for t in range(AUDIO_TOKENS):
            xr, xz, xn = gx[:, t].chunk(3, dim=-1)
            hr, hz, hn = F.linear(h, self.gru.weight_hh_l0, self.gru.bias_hh_l0).chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            outs.append(h)
        return self.tokens(torch.stack(outs, dim=1), x), h

    def turn_features(self, chunks):
        """[batch, n_chunks, frames, mels] -> [batch, n_chunks * 4, AUDIO_STATE + 160]."""
        b, n = chunks.shape[:2]
        x = self.frontend(chunks.reshape(b * n, *chunks.shape[2:]))
        x = x.reshape(b, n * AUDIO_TOKENS, -1)
        hs, _ = self.gru(x)
        return torch.cat([hs, x], dim=-1)

    def encode_turn(self, chunks):
        """[batch, n_chunks, frames, mels] -> [batch, n_chunks * 4, HIDDEN], as if streamed."""
        return self.project(self.turn_features(chunks))


class Completion(nn.Module):
    """Summaries of the present modalities -> stand-ins for image and audio."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3 * HIDDEN + 3, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU())
        self.image = nn.Linear(256, IMAGE_TOKENS * HIDDEN)
        self.audio = nn.Linear(256, AUDIO_TOKENS * HIDDEN)

    def forward(self, text_summary, image_summary, audio_summary, present):
        x = torch.cat([text_summary * present[:, 0:1], image_summary * present[:, 1:2],
                       audio_summary * present[:, 2:3], present], dim=-1)
        h = self.net(x)
        return (self.image(h).view(-1, IMAGE_TOKENS, HIDDEN),
                self.audio(h).view(-1, AUDIO_TOKENS, HIDDEN))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RoutedAttention(nn.Module):
    """Grouped-query attention computed once per modality, mixed by per-query weights.

    Each query predicts, per head, a softmax over the modalities; the heads' outputs for
    each modality (attention restricted to that modality's keys) are mixed by those
    weights, renormalised over the modalities that have at least one visible key.
    """

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(HIDDEN, NUM_HEADS * HEAD_DIM)
        self.k = nn.Linear(HIDDEN, NUM_KV_HEADS * HEAD_DIM)
        self.v = nn.Linear(HIDDEN, NUM_KV_HEADS * HEAD_DIM)
        self.o = nn.Linear(NUM_HEADS * HEAD_DIM, HIDDEN)
        self.router = nn.Linear(HIDDEN, NUM_HEADS * len(MODALITIES))

    def forward(self, x, cos, sin, past_k, past_v, allowed, key_modality):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, NUM_HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k(x).view(b, s, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v(x).view(b, s, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k_all = torch.cat([past_k, k], dim=2)
        v_all = torch.cat([past_v, v], dim=2)
        group = NUM_HEADS // NUM_KV_HEADS
        kk = k_all[:, :, None].expand(-1, -1, group, -1, -1).reshape(b, NUM_HEADS, -1, HEAD_DIM)
        vv = v_all[:, :, None].expand(-1, -1, group, -1, -1).reshape(b, NUM_HEADS, -1, HEAD_DIM)
        scores = q @ kk.transpose(2, 3) / math.sqrt(HEAD_DIM)  # [b, heads, s, total]

        weights = torch.softmax(self.router(x).view(b, s, NUM_HEADS, len(MODALITIES)), -1)
        weights = weights.permute(0, 2, 1, 3)  # [b, heads, s, modalities]
        mixed = 0.0
        norm = 0.0
        for m in range(len(MODALITIES)):
            visible = allowed & (key_modality == m)  # [b, 1, s, total]
            p = torch.softmax(torch.where(visible, scores, torch.full_like(scores, MASK_VALUE)), -1)
            has = (visible.float().sum(-1, keepdim=True) > 0).float()  # [b, 1, s, 1]
            w = weights[..., m:m + 1] * has
            mixed = mixed + w * (p @ vv)
            norm = norm + w
        out = mixed / (norm + 1e-6)
        out = out.transpose(1, 2).reshape(b, s, NUM_HEADS * HEAD_DIM)
        return self.o(out), k_all, v_all


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(HIDDEN)
        self.attn = RoutedAttention()
        self.ln2 = nn.LayerNorm(HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, FF), nn.GELU(), nn.Linear(FF, HIDDEN))

    def forward(self, x, cos, sin, past_k, past_v, allowed, key_modality):
        a, k, v = self.attn(self.ln1(x), cos, sin, past_k, past_v, allowed, key_modality)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, k, v


class Decoder(nn.Module):
    """inputs_embeds + mask + positions + modality ids + KV cache -> logits + new cache."""

    def __init__(self, vocab: int):
        super().__init__()
        self.modality_embed = nn.Embedding(len(MODALITIES), HIDDEN)
        nn.init.normal_(self.modality_embed.weight, std=0.1)
        self.blocks = nn.ModuleList([Block() for _ in range(NUM_LAYERS)])
        self.ln = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, vocab)
        inv = 1.0 / (ROPE_BASE ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, inputs_embeds, attention_mask, position_ids, modality_ids, past):
        """`past` is a list of (key, value) per layer, [batch, kv_heads, past, head_dim]."""
        s = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        past_len = total - s

        # Causal rule over absolute key indices, and the caller's mask.
        q_idx = torch.arange(s, device=inputs_embeds.device) + past_len
        k_idx = torch.arange(total, device=inputs_embeds.device)
        causal = k_idx[None, :] <= q_idx[:, None]  # [s, total]
        allowed = causal[None, None] & (attention_mask[:, None, None, :] == 1)
        key_modality = modality_ids[:, None, None, :]

        # Rotary positions from position_ids, shared by all heads.
        ang = position_ids.float()[..., None] * self.inv_freq  # [b, s, head_dim/2]
        ang = torch.cat([ang, ang], dim=-1)[:, None]
        cos, sin = torch.cos(ang), torch.sin(ang)

        x = inputs_embeds + self.modality_embed(modality_ids[:, past_len:])
        presents = []
        for block, (pk, pv) in zip(self.blocks, past):
            x, k, v = block(x, cos, sin, pk, pv, allowed, key_modality)
            presents.append((k, v))
        return self.head(self.ln(x)), presents


class TinyModel(nn.Module):
    """Everything trained together; the auxiliary heads are not exported."""

    def __init__(self, vocab: int, n_words: int):
        super().__init__()
        self.text = TextEmbed(vocab)
        self.image = ImageEncoder()
        self.audio = AudioEncoder()
        self.completion = Completion()
        self.decoder = Decoder(vocab)
        self.null = nn.ParameterDict({
            m: nn.Parameter(torch.randn(n, HIDDEN) * 0.5) for m, n in NULL_TOKENS.items()})
        self.image_cls = nn.Linear(HIDDEN, IMAGE_CLASSES)
        self.audio_ctc = nn.Linear(HIDDEN, n_words + 1)  # blank is the last class

    def encode_audio(self, chunks):
        """[batch, n_chunks, frames, mels] -> [batch, n_chunks * 4, HIDDEN]."""
        return self.audio.encode_turn(chunks)

    def empty_past(self, batch: int):
        z = torch.zeros(batch, NUM_KV_HEADS, 0, HEAD_DIM)
        return [(z, z) for _ in range(NUM_LAYERS)]
