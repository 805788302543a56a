"""The LSTR online-action-detection head (spec §7.2, the MAT/LSTR codebase's `LSTR` model) in JAX.

Pure functions over a parameter dict (`init_params`): no framework state, so the train step, the batch
("offline") inference and the frame-by-frame ("online") inference share one forward, and orbax saves the dict.

Architecture (the original's, post-norm transformer layers, dropout 0 as in the released configs):
  * feature heads (one for the long memory, one for the work memory): Linear(D_in -> d) + LayerNorm + ReLU;
  * sinusoidal position encoding added to both (long memory at positions 0..Nl-1, work memory at Nl..Nl+Nw-1);
  * long-memory encoder, `enc_module` = [[16, 1, True], [-1, 2, True]]: 16 learned queries and one decoder layer
    (self-attention among the queries, cross-attention to the long memory with its padding mask) + LayerNorm,
    then two encoder layers over the 16 tokens + LayerNorm;
  * decoder, `dec_module` = [-1, 2, True]: two decoder layers over the work memory (causal self-attention,
    cross-attention to the 16 tokens) + LayerNorm;
  * classifier Linear(d -> C) per work-memory frame.
Attention: packed in-projection [d, 3d], q scaled by head_dim^-0.5, additive masks (-inf), exact GELU, LayerNorm
eps 1e-5 (PyTorch's defaults). Parameter init follows PyTorch's defaults (Linear: U(+-1/sqrt(fan_in)); the
packed in-projection: Xavier uniform, zero bias, zero out-projection bias; query embeddings N(0, 1)).

Memory sampling (the original `LSTRDataLayer` / `LSTRBatchInferenceDataLayer`), for a work window [s, s + Nw):
  * training: long indices = sort(linspace(max(0, s - Ll), s - 1, Nl)).astype(int32).clip(0);
  * test: arange(max(0, s - Ll), s)[::rate], left-padded with zeros to Nl;
  * padding mask: with k = (number of leading zero indices) - 1, the first k long slots get -inf (the last
    zero slot, frame 0, stays visible).
Online inference predicts frame t from the window ending at t (its last output row); the first window
[0, Nw) predicts all its frames (row t sees work frames <= t through the causal mask).
"""
from __future__ import annotations

import bisect
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5


# --------------------------------------------------------------------------------------------- sizes
def memory_sizes(cfg) -> dict[str, int]:
    """Frame counts at the annotation rate (`fps`): long/work memory lengths, their sample counts."""
    fps = int(cfg.fps)
    long_len = int(cfg.long_memory_seconds * fps)
    work_len = int(cfg.work_memory_seconds * fps)
    rate = int(cfg.long_memory_sample_rate)
    if long_len % rate:
        raise ValueError(f"long memory {long_len} frames is not a multiple of its sample rate {rate}")
    return {"long_len": long_len, "work_len": work_len, "long_samples": long_len // rate, "rate": rate}


# ---------------------------------------------------------------------------------------------- init
def _linear(rng: np.random.Generator, fan_in: int, fan_out: int, zero_bias: bool = False) -> dict:
    bound = 1.0 / math.sqrt(fan_in)
    return {"kernel": rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
            "bias": (np.zeros(fan_out) if zero_bias else rng.uniform(-bound, bound, fan_out)).astype(np.float32)}


def _norm(d: int) -> dict:
    return {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)}


def _attention(rng, d: int) -> dict:
    bound = math.sqrt(6.0 / (d + 3 * d))  # xavier_uniform on the packed [3d, d] in_proj_weight
    return {"in_kernel": rng.uniform(-bound, bound, (d, 3 * d)).astype(np.float32),
            "in_bias": np.zeros(3 * d, np.float32),
            "out": _linear(rng, d, d, zero_bias=True)}


def _layer(rng, d: int, ff: int, cross: bool) -> dict:
    p = {"self_attn": _attention(rng, d), "linear1": _linear(rng, d, ff), "linear2": _linear(rng, ff, d),
         "norm1": _norm(d), "norm2": _norm(d)}
    if cross:
        p["cross_attn"] = _attention(rng, d)
        p["norm3"] = _norm(d)
    return p


def _stack(rng, d: int, ff: int, layers: int, norm: bool, cross: bool) -> dict:
    p = {"layers": {str(i): _layer(rng, d, ff, cross) for i in range(layers)}}
    if norm:
        p["norm"] = _norm(d)
    return p


def init_params(cfg, feature_dim: int, num_classes: int, seed: int = 0) -> dict:
    """Random parameters (NumPy float32) for `cfg` (configs/oad_lstr.py's `model`)."""
    rng = np.random.default_rng(seed)
    d, ff = int(cfg.d_model), int(cfg.dim_feedforward)
    if d % int(cfg.num_heads):
        raise ValueError(f"d_model {d} is not divisible by {cfg.num_heads} heads")

    def head():
        return {"linear": _linear(rng, feature_dim, d), "norm": _norm(d)}

    params = {"feature_head_long": head(), "feature_head_work": head(), "enc": {}, "enc_queries": {}}
    for i, (queries, layers, norm) in enumerate(cfg.enc_module):
        if int(queries) != -1:
            params["enc_queries"][str(i)] = rng.standard_normal((int(queries), d)).astype(np.float32)
        params["enc"][str(i)] = _stack(rng, d, ff, int(layers), bool(norm), cross=int(queries) != -1)
    _, layers, norm = cfg.dec_module
    params["dec"] = _stack(rng, d, ff, int(layers), bool(norm), cross=True)
    params["classifier"] = _linear(rng, d, num_classes)
    return params


def positional_encoding(length: int, d: int) -> np.ndarray:
    """The original `PositionalEncoding` table [length, d] (float32 arithmetic, as torch computes it)."""
    position = np.arange(length, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, d, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d))
    pe = np.zeros((length, d), np.float32)
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term)
    return pe


# -------------------------------------------------------------------------------------------- forward
def _layer_norm(p, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + LN_EPS) * p["scale"] + p["bias"]


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _mha(p, q_in, kv_in, heads: int, mask=None):
    """q_in [B, Tq, d], kv_in [B, Tk, d]; mask additive, broadcastable to [B, Tq, Tk]."""
    d = q_in.shape[-1]
    hd = d // heads
    w, b = p["in_kernel"], p["in_bias"]
    q = (q_in @ w[:, :d] + b[:d]) * (float(hd) ** -0.5)
    k = kv_in @ w[:, d:2 * d] + b[d:2 * d]
    v = kv_in @ w[:, 2 * d:] + b[2 * d:]
    split = lambda x: x.reshape(*x.shape[:-1], heads, hd)  # noqa: E731
    logits = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k))
    if mask is not None:
        logits = logits + mask[:, None]
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), split(v))
    return _dense(p["out"], out.reshape(*out.shape[:-2], d))


def _ffn(p, x):
    return _dense(p["linear2"], jax.nn.gelu(_dense(p["linear1"], x), approximate=False))


def _encoder(p, x, heads):
    for i in range(len(p["layers"])):
        lp = p["layers"][str(i)]
        x = _layer_norm(lp["norm1"], x + _mha(lp["self_attn"], x, x, heads))
        x = _layer_norm(lp["norm2"], x + _ffn(lp, x))
    return _layer_norm(p["norm"], x) if "norm" in p else x


def _decoder(p, x, memory, heads, self_mask=None, memory_mask=None):
    for i in range(len(p["layers"])):
        lp = p["layers"][str(i)]
        x = _layer_norm(lp["norm1"], x + _mha(lp["self_attn"], x, x, heads, self_mask))
        x = _layer_norm(lp["norm2"], x + _mha(lp["cross_attn"], x, memory, heads, memory_mask))
        x = _layer_norm(lp["norm3"], x + _ffn(lp, x))
    return _layer_norm(p["norm"], x) if "norm" in p else x


def _feature_head(p, x):
    return jax.nn.relu(_layer_norm(p["norm"], _dense(p["linear"], x)))


def causal_mask(n: int) -> jax.Array:
    """`generate_square_subsequent_mask`: 0 on and below the diagonal, -inf above."""
    return jnp.where(jnp.tril(jnp.ones((n, n), bool)), 0.0, -jnp.inf).astype(jnp.float32)


def forward(params: Mapping, long_x: jax.Array, long_mask: jax.Array, work_x: jax.Array, *, num_heads: int
            ) -> jax.Array:
    """long_x [B, Nl, D_in], long_mask [B, Nl] (0 / -inf), work_x [B, Nw, D_in] -> logits [B, Nw, C]."""
    d = params["classifier"]["kernel"].shape[0]
    nl, nw = long_x.shape[1], work_x.shape[1]
    pe = jnp.asarray(positional_encoding(nl + nw, d))
    memory = _feature_head(params["feature_head_long"], long_x.astype(jnp.float32)) + pe[:nl]
    for i in range(len(params["enc"])):
        module = params["enc"][str(i)]
        if str(i) in params["enc_queries"]:
            queries = jnp.broadcast_to(params["enc_queries"][str(i)], (memory.shape[0],) +
                                       params["enc_queries"][str(i)].shape)
            mask = long_mask[:, None, :] if i == 0 else None  # the padding mask applies to the raw long memory
            memory = _decoder(module, queries, memory, num_heads, memory_mask=mask)
        else:
            memory = _encoder(module, memory, num_heads)
    work = _feature_head(params["feature_head_work"], work_x.astype(jnp.float32)) + pe[nl:nl + nw]
    out = _decoder(params["dec"], work, memory, num_heads, self_mask=causal_mask(nw)[None])
    return _dense(params["classifier"], out)


# ------------------------------------------------------------------------------------------------ loss
def mce_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, ignore_index: int | None) -> jax.Array:
    """The original MCE: per frame sum_c -y_c log softmax(z)_c, over the classes other than `ignore_index`
    (the softmax too); mean over the frames whose target is not the ignored class. `weights` [N] (0/1) drops
    padding rows. logits/targets [N, C]."""
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    if ignore_index is not None and 0 <= ignore_index < logits.shape[-1]:
        keep = np.array([c for c in range(logits.shape[-1]) if c != ignore_index])
        per = jnp.sum(-targets[:, keep] * jax.nn.log_softmax(logits[:, keep], axis=-1), axis=-1)
        weights = weights * (targets[:, ignore_index] != 1)
    else:
        per = jnp.sum(-targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# -------------------------------------------------------------------------------------------- sampling
def padding_mask(indices: np.ndarray) -> np.ndarray:
    """0 / -inf per long slot: every leading zero index but the last one is masked."""
    mask = np.zeros(len(indices), np.float32)
    last_zero = bisect.bisect_right(list(indices), 0) - 1
    if last_zero > 0:
        mask[:last_zero] = -np.inf
    return mask


def train_long_indices(work_start: int, long_len: int, num_samples: int) -> np.ndarray:
    start, end = max(0, work_start - long_len), work_start - 1
    return np.sort(np.linspace(start, end, num_samples)).astype(np.int32).clip(0)


def test_long_indices(work_start: int, long_len: int, num_samples: int, rate: int) -> np.ndarray:
    start, end = max(0, work_start - long_len), work_start - 1
    idx = np.arange(start, end + 1)[::rate]
    pad = num_samples - idx.shape[0]
    if pad > 0:
        idx = np.concatenate([np.zeros(pad), idx])
    return np.sort(idx).astype(np.int32).clip(0)


def test_windows(num_frames: int, work_len: int) -> list[int]:
    """Work-window starts of the online protocol: every s with s + Nw <= num_frames."""
    return list(range(0, num_frames - work_len + 1))


def window_inputs(feats: np.ndarray, starts: Sequence[int], sizes: Mapping[str, int], *, train: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gathered (long_x [B, Nl, D], long_mask [B, Nl], work_x [B, Nw, D]) for the windows starting at `starts`."""
    nl, ll, nw, rate = sizes["long_samples"], sizes["long_len"], sizes["work_len"], sizes["rate"]
    long_idx = np.stack([train_long_indices(s, ll, nl) if train else test_long_indices(s, ll, nl, rate)
                         for s in starts])
    mask = np.stack([padding_mask(i) for i in long_idx])
    work_idx = np.asarray(starts)[:, None] + np.arange(nw)[None]
    return feats[long_idx], mask, feats[work_idx]


def online_scores(predict, feats: np.ndarray, sizes: Mapping[str, int], batch: int = 256) -> np.ndarray:
    """Per-frame softmax scores [n, C] of one video, each frame predicted from its past only (the original
    batch inference: window ending at the frame; the first window predicts all its frames). `predict(long_x,
    long_mask, work_x) -> probabilities [B, Nw, C]`. Videos shorter than the work memory give no row."""
    n = len(feats)
    starts = test_windows(n, sizes["work_len"])
    if not starts:
        return np.zeros((0, 0), np.float32)
    rows = []
    for a in range(0, len(starts), batch):
        chunk = starts[a:a + batch]
        pad = batch - len(chunk)
        lx, lm, wx = window_inputs(feats, chunk + [chunk[-1]] * pad, sizes, train=False)
        probs = np.asarray(predict(lx, lm, wx))[:len(chunk)]
        if a == 0:
            rows.append(probs[0])  # the first window predicts frames 0..Nw-1
            probs = probs[1:]
        rows.append(probs[:, -1])
    return np.concatenate(rows).astype(np.float32)


# -------------------------------------------------------------------------------------- online (stream)
class OnlineLSTR:
    """Frame-by-frame inference: `push(feature [D]) -> softmax scores [C]` for that frame, from the frames seen
    so far only. Keeps a ring buffer of the last Ll + Nw features (plus frame 0, which the long-memory padding
    refers to); each step runs one window (constant cost per frame, one compiled program). Equals
    `online_scores` of the whole sequence (tested)."""

    def __init__(self, params, sizes: Mapping[str, int], num_heads: int):
        self.sizes = dict(sizes)
        self.capacity = sizes["long_len"] + sizes["work_len"]
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self._predict = jax.jit(lambda p, lx, lm, wx: jax.nn.softmax(forward(p, lx, lm, wx, num_heads=num_heads), -1))
        self.buffer = None
        self.first = None
        self.t = 0

    def push(self, feature) -> np.ndarray:
        feature = np.asarray(feature, np.float32)
        if self.buffer is None:
            self.buffer = np.zeros((self.capacity, feature.shape[-1]), np.float32)
            self.first = feature
        self.buffer[self.t % self.capacity] = feature
        t, nw = self.t, self.sizes["work_len"]
        self.t += 1
        s = max(0, t - nw + 1)
        long_idx = test_long_indices(s, self.sizes["long_len"], self.sizes["long_samples"], self.sizes["rate"])
        work_idx = np.arange(s, s + nw)
        lx = np.stack([self._frame(i) for i in long_idx])
        wx = np.stack([self._frame(min(i, t)) for i in work_idx])  # frames after t: never seen by row t
        probs = self._predict(self.params, lx[None], padding_mask(long_idx)[None], wx[None])
        return np.asarray(probs)[0, t - s]

    def _frame(self, i: int) -> np.ndarray:
        if i == 0:
            return self.first
        if i < self.t - self.capacity:
            raise RuntimeError(f"frame {i} left the buffer")  # cannot happen: windows reach back Ll + Nw frames
        return self.buffer[i % self.capacity]
