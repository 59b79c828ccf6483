"""The log-mel front end of docs/bundle-format.md ("The log-mel front end, exactly").

`log_mel` (numpy, float64 inside, float32 out) is the reference the runtime must match;
`LogMelTorch` computes the same thing on batches for training.
"""

import math

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 40
F_MIN = 0.0
F_MAX = 8000.0
LOG_OFFSET = 1e-6
CHUNK_FRAMES = 32
# Normalisation applied after the log, measured once on training speech (rounded).
MEL_MEAN = -5.0
MEL_STD = 5.0


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filters() -> np.ndarray:
    """[n_mels, n_fft/2 + 1] triangles on the HTK mel scale, no area normalisation."""
    edges = mel_to_hz_htk(np.linspace(hz_to_mel_htk(F_MIN), hz_to_mel_htk(F_MAX), N_MELS + 2))
    freqs = np.arange(N_FFT // 2 + 1, dtype=np.float64) * SAMPLE_RATE / N_FFT
    fb = np.zeros((N_MELS, freqs.size), dtype=np.float64)
    for m in range(N_MELS):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - left) / (centre - left)
        falling = (right - freqs) / (right - centre)
        fb[m] = np.maximum(0.0, np.minimum(rising, falling))
    return fb


def hann_window() -> np.ndarray:
    n = np.arange(WIN_LENGTH, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / WIN_LENGTH)
    if WIN_LENGTH < N_FFT:
        w = np.concatenate([w, np.zeros(N_FFT - WIN_LENGTH)])
    return w


def pad_to_chunks(pcm: np.ndarray) -> np.ndarray:
    """Append zero samples until the frame count is a positive multiple of CHUNK_FRAMES."""
    n = pcm.shape[-1]
    frames = 0 if n < N_FFT else 1 + (n - N_FFT) // HOP_LENGTH
    target = max(1, math.ceil(frames / CHUNK_FRAMES)) * CHUNK_FRAMES
    needed = (target - 1) * HOP_LENGTH + N_FFT
    return np.concatenate([pcm, np.zeros(max(0, needed - n), dtype=pcm.dtype)])


def mel_power(pcm: np.ndarray) -> np.ndarray:
    """[frames, n_mels] mel power (before the log) of unpadded PCM, float32."""
    pcm = np.asarray(pcm, dtype=np.float64)
    frames = 0 if pcm.size < N_FFT else 1 + (pcm.size - N_FFT) // HOP_LENGTH
    idx = np.arange(frames)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]
    spec = np.abs(np.fft.rfft(pcm[idx] * hann_window()[None, :], n=N_FFT, axis=-1)) ** 2
    return (spec @ mel_filters().T).astype(np.float32)


def log_mel(pcm: np.ndarray, pad: bool = True) -> np.ndarray:
    """[frames, n_mels] float32 features of mono float PCM in [-1, 1] at SAMPLE_RATE."""
    pcm = np.asarray(pcm, dtype=np.float64)
    if pad:
        pcm = pad_to_chunks(pcm)
    frames = 0 if pcm.size < N_FFT else 1 + (pcm.size - N_FFT) // HOP_LENGTH
    idx = np.arange(frames)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]
    spec = np.abs(np.fft.rfft(pcm[idx] * hann_window()[None, :], n=N_FFT, axis=-1)) ** 2
    mel = spec @ mel_filters().T
    feat = (np.log(mel + LOG_OFFSET) - MEL_MEAN) / MEL_STD
    return feat.astype(np.float32)


def chunks(feat: np.ndarray) -> np.ndarray:
    """[frames, n_mels] -> [n_chunks, CHUNK_FRAMES, n_mels]; frames must be a multiple."""
    assert feat.shape[0] % CHUNK_FRAMES == 0 and feat.shape[0] > 0
    return feat.reshape(-1, CHUNK_FRAMES, N_MELS)


class LogMelTorch(torch.nn.Module):
    """Batched float32 version for training: [batch, samples] -> [batch, frames, n_mels]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.tensor(hann_window(), dtype=torch.float32))
        self.register_buffer("fb", torch.tensor(mel_filters().T, dtype=torch.float32))

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        frames = pcm.unfold(-1, N_FFT, HOP_LENGTH) * self.window
        spec = torch.fft.rfft(frames, n=N_FFT, dim=-1).abs() ** 2
        mel = spec @ self.fb
        return (torch.log(mel + LOG_OFFSET) - MEL_MEAN) / MEL_STD
