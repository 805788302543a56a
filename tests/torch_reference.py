"""An independent PyTorch re-implementation of the official StreamFormer backbone forward.

Written from the spec (§1.3–1.7, §2, Appendix A), not from the official code. The module tree reproduces the
official `TimesformerMultiTaskingModelSigLIP` state-dict names exactly (incl. the unused
`temporal_attention.attention.mask` buffers), so `load_state_dict(state, strict=True)` is a real strict key check
of an exported file. Built from an official `config.json` dict.

    model = ReferenceBackbone(json.load(open("config.json")))
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"), strict=True)
    out = model(pixels)   # [B, T, 3, H, W] normalised -> {"last_hidden_state": [B,T,N,D], "pooler_output": [B,T,D]}
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

OFFICIAL_LORA_RANK = 32


def _gelu(approximate: bool):
    return (lambda x: F.gelu(x, approximate="tanh")) if approximate else (lambda x: F.gelu(x))


def _attend(q, k, v, mask=None):
    """q, k, v [b, heads, s, hd]; logits scaled after the matmul; boolean mask True = may attend."""
    logits = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.matmul(logits.softmax(dim=-1), v)


def _split_heads(x, heads):  # [b, s, D] -> [b, heads, s, hd]
    b, s, d = x.shape
    return x.reshape(b, s, heads, d // heads).transpose(1, 2)


def _merge_heads(x):  # [b, heads, s, hd] -> [b, s, D]
    b, h, s, hd = x.shape
    return x.transpose(1, 2).reshape(b, s, h * hd)


class _SelfAttention(nn.Module):
    """`...attention.attention`: fused qkv (+ optional LoRA, + optional unused causal mask buffer)."""

    def __init__(self, dim, heads, lora_rank=0, mask_frames=0):
        super().__init__()
        self.heads = heads
        if mask_frames:  # registered first: the official state-dict order is mask, qkv
            self.register_buffer("mask", torch.tril(torch.ones(mask_frames, mask_frames)))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        if lora_rank:
            self.qkv_lora_a = nn.Linear(dim, lora_rank, bias=False)
            self.qkv_lora_b = nn.Linear(lora_rank, 3 * dim, bias=False)
        self.lora = bool(lora_rank)

    def forward(self, x, causal=False):
        b, s, d = x.shape
        qkv = self.qkv(x)
        if self.lora:  # no alpha/r scaling, no dropout
            qkv = qkv + self.qkv_lora_b(self.qkv_lora_a(x))
        # rows [q; k; v], each split into heads contiguously
        qkv = qkv.reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = torch.ones(s, s, dtype=torch.bool).tril() if causal else None
        return _merge_heads(_attend(qkv[0], qkv[1], qkv[2], mask))


class _Output(nn.Module):
    """`...attention.output`: out-projection `dense` (+ optional LoRA)."""

    def __init__(self, dim, lora_rank=0):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        if lora_rank:
            self.dense_lora_a = nn.Linear(dim, lora_rank, bias=False)
            self.dense_lora_b = nn.Linear(lora_rank, dim, bias=False)
        self.lora = bool(lora_rank)

    def forward(self, x):
        y = self.dense(x)
        return y + self.dense_lora_b(self.dense_lora_a(x)) if self.lora else y


class _AttentionBlock(nn.Module):
    def __init__(self, dim, heads, lora_rank=0, mask_frames=0):
        super().__init__()
        self.attention = _SelfAttention(dim, heads, lora_rank, mask_frames)
        self.output = _Output(dim, lora_rank)

    def forward(self, x, causal=False):
        return self.output(self.attention(x, causal))


class _Dense(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.dense(x)


class ReferenceLayer(nn.Module):
    """One divided space-time block: causal temporal attention (gated), spatial attention, MLP (§1.5)."""

    def __init__(self, cfg, lora_rank):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-6)
        heads = cfg["num_attention_heads"]
        self.causal = bool(cfg.get("enable_causal_temporal", False))
        self.temporal_attention_gating = nn.Parameter(torch.tensor(0.0))
        self.attention = _AttentionBlock(d, heads, lora_rank)
        self.intermediate = _Dense(d, cfg["intermediate_size"])
        self.output = _Dense(cfg["intermediate_size"], d)
        self.layernorm_before = nn.LayerNorm(d, eps=eps)
        self.layernorm_after = nn.LayerNorm(d, eps=eps)
        self.temporal_layernorm = nn.LayerNorm(d, eps=eps)
        self.temporal_attention = _AttentionBlock(d, heads, 0, cfg["num_frames"] if self.causal else 0)
        self.temporal_dense = nn.Linear(d, d)
        self.act = _gelu(cfg.get("hidden_act", "gelu") == "gelu_pytorch_tanh")

    def forward(self, h, b, t, n):
        d = h.shape[-1]
        # (a) temporal: sequences over time per patch (token order n*T + t)
        z = h.reshape(b * n, t, d)
        a = self.temporal_attention(self.temporal_layernorm(z), causal=self.causal)
        a = self.temporal_dense(a.reshape(b, n * t, d))
        h = h + torch.tanh(self.temporal_attention_gating) * a
        # (b) spatial: sequences over patches per frame
        s = h.reshape(b, n, t, d).permute(0, 2, 1, 3).reshape(b * t, n, d)
        sa = self.attention(self.layernorm_before(s))
        h = h + sa.reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b, n * t, d)
        # (c) MLP
        return h + self.output(self.act(self.intermediate(self.layernorm_after(h))))


class _PatchEmbeddings(nn.Module):
    def __init__(self, channels, dim, patch):
        super().__init__()
        self.projection = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)


class ReferenceEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, p = cfg["hidden_size"], cfg["patch_size"]
        self.patch = p
        grid = cfg["image_size"] // p
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid, d))
        self.time_embeddings = nn.Parameter(torch.zeros(1, cfg["num_frames"], d))
        self.patch_embeddings = _PatchEmbeddings(cfg.get("num_channels", 3), d, p)

    def position_table(self, height, width):
        """§2.4, as the official code does it: AA bicubic to (W/p, H/p), i.e. transposed when H != W."""
        pos = self.position_embeddings
        num, d = pos.shape[1], pos.shape[2]
        n = (height // self.patch) * (width // self.patch)
        if n == num and height == width:
            return pos
        g = int(math.isqrt(num))
        grid = pos.reshape(1, g, g, d).permute(0, 3, 1, 2).float()
        w0, h0 = width // self.patch, height // self.patch
        grid = F.interpolate(grid, size=(w0, h0), mode="bicubic", antialias=True, align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, w0 * h0, d).to(pos.dtype)

    def time_rows(self, t):
        f = self.time_embeddings.shape[1]
        idx = torch.arange(t) if t <= f else torch.div(torch.arange(t) * f, t, rounding_mode="floor")
        return self.time_embeddings[:, idx]  # [1, T, D]

    def forward(self, pixels):
        b, t, c, height, width = pixels.shape
        x = self.patch_embeddings.projection(pixels.reshape(b * t, c, height, width))  # [B*T, D, H', W']
        x = x.flatten(2).transpose(1, 2)  # [B*T, N, D], patches row-major
        x = x + self.position_table(height, width)
        n, d = x.shape[1], x.shape[2]
        x = x.reshape(b, t, n, d).permute(0, 2, 1, 3)  # [B, N, T, D]
        x = x + self.time_rows(t)[:, None]
        return x.reshape(b, n * t, d), n


class _PackedMHA(nn.Module):
    """The MAP head's attention (torch nn.MultiheadAttention's parameter names), computed by hand."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query, tokens):
        d = query.shape[-1]
        w, bias = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:d], bias[:d])
        k = F.linear(tokens, w[d:2 * d], bias[d:2 * d])
        v = F.linear(tokens, w[2 * d:], bias[2 * d:])
        q, k, v = (_split_heads(x, self.heads) for x in (q, k, v))
        q = q * (q.shape[-1] ** -0.5)  # torch's MHA scales q before the matmul
        o = torch.matmul(torch.matmul(q, k.transpose(-2, -1)).softmax(dim=-1), v)
        return self.out_proj(_merge_heads(o))


class _MLP(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ReferenceMAPHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        act = _gelu(cfg.get("hidden_act", "gelu") == "gelu_pytorch_tanh")
        self.probe = nn.Parameter(torch.zeros(1, 1, d))
        self.attention = _PackedMHA(d, cfg["num_attention_heads"])
        self.layernorm = nn.LayerNorm(d, eps=cfg.get("layer_norm_eps", 1e-6))
        self.mlp = _MLP(d, cfg["intermediate_size"], act)

    def forward(self, tokens):  # [frames, N, D] -> [frames, D]
        o = self.attention(self.probe.expand(tokens.shape[0], -1, -1), tokens)
        return (o + self.mlp(self.layernorm(o)))[:, 0]


class _Encoder(nn.Module):
    def __init__(self, cfg, lora_rank):
        super().__init__()
        self.layer = nn.ModuleList(ReferenceLayer(cfg, lora_rank) for _ in range(cfg["num_hidden_layers"]))


class ReferenceBackbone(nn.Module):
    """State-dict compatible with the official `TimesformerMultiTaskingModelSigLIP` (§1.8)."""

    def __init__(self, cfg: dict, lora_rank: int = OFFICIAL_LORA_RANK):
        super().__init__()
        if cfg.get("attention_type", "divided_space_time") != "divided_space_time":
            raise ValueError("only divided_space_time is implemented")
        self.config = dict(cfg)
        rank = lora_rank if cfg.get("add_lora_spatial", False) else 0
        self.embeddings = ReferenceEmbeddings(cfg)
        self.encoder = _Encoder(cfg, rank)
        self.post_layernorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-6))
        self.head = ReferenceMAPHead(cfg)

    def forward(self, pixels):
        """pixels: normalised float [B, T, C, H, W] (time before channels)."""
        b, t = pixels.shape[:2]
        h, n = self.embeddings(pixels)
        for layer in self.encoder.layer:
            h = layer(h, b, t, n)
        tokens = self.post_layernorm(h)  # [B, N*T, D]
        d = tokens.shape[-1]
        tokens = tokens.reshape(b, n, t, d).permute(0, 2, 1, 3)  # [B, T, N, D]
        pooled = self.head(tokens.reshape(b * t, n, d)).reshape(b, t, d)
        return {"last_hidden_state": tokens, "pooler_output": pooled}


def to_pixels(video_uint8):
    """uint8 [T, H, W, 3] (NumPy) -> normalised float32 [1, T, 3, H, W]."""
    x = torch.from_numpy(video_uint8).float()
    x = (x / 255.0 - 0.5) / 0.5
    return x.permute(0, 3, 1, 2)[None].contiguous()


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every parameter non-trivial (the fixture README's scheme); mask buffers keep their tril value."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") else ""
        if leaf == "temporal_attention_gating":
            p.copy_(torch.rand((), generator=gen) * 2 - 1)
        elif "lora_a" in name:
            p.copy_(normal(p.shape, p.shape[1] ** -0.5))
        elif "lora_b" in name:
            p.copy_(normal(p.shape, (0.25 / p.shape[1]) ** 0.5))
        elif leaf in ("position_embeddings", "time_embeddings"):
            p.copy_(normal(p.shape, 0.5))
        elif leaf == "probe":
            p.copy_(normal(p.shape, 1.0))
        elif "layernorm" in parent and leaf == "weight":
            p.copy_(normal(p.shape, 0.1, 1.0))
        elif leaf in ("bias", "in_proj_bias") or p.ndim == 1:
            p.copy_(normal(p.shape, 0.1))
        else:  # weight matrices, conv kernels, in_proj_weight: N(0, 1/fan_in)
            fan_in = p[0].numel()
            p.copy_(normal(p.shape, fan_in ** -0.5))
    return model


@torch.no_grad()
def saved_random_model(make, path, seed: int) -> nn.Module:
    """A Hugging Face model built by `make()` (torch seed 0), every parameter perturbed (`perturb_(seed)`), in eval
    mode and saved with `save_pretrained(path)`."""
    torch.manual_seed(0)
    model = perturb_(make(), seed).eval()
    model.save_pretrained(path)
    return model


def perturb_(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Add N(0, scale²) to every parameter of any torch model (e.g. a transformers SigLIP, whose init leaves
    biases 0 and LayerNorms 1/0), so that every tensor is distinct and non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
