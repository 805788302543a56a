"""Optimiser: AdamW with linear warm-up and one cosine decay over the whole run, decay groups, optional clipping.

The original's schedule restarted its cosine every epoch (spec §5.5: effectively a constant 7e-5); here the
cosine spans the whole run, as the original intended. Frozen parameters never reach the optimiser (the
trainer differentiates only the trainable group), so they carry no Adam moments.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    """Linear warm-up from `warmup_lr` to `lr` over `warmup_steps`, then cosine to `min_lr` at `total_steps`."""
    warmup = int(optim.warmup_steps)
    total = max(int(total_steps), warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=float(optim.warmup_lr) if warmup else float(optim.lr), peak_value=float(optim.lr),
        warmup_steps=warmup, decay_steps=total, end_value=float(optim.min_lr))


def make_optimizer(optim, total_steps: int, decay_mask: Mapping | Callable) -> tuple[optax.GradientTransformation,
                                                                                       optax.Schedule]:
    """AdamW (decoupled weight decay times the learning rate, as torch.optim.AdamW) on the trainable group.

    decay_mask: a pytree of bools over the trainable parameters (True = decayed), or a callable producing one.
    Gradient clipping by global norm when `optim.clip_grad_norm > 0`.
    """
    schedule = learning_rate_schedule(optim, total_steps)
    mu_dtype = jnp.dtype(optim.mu_dtype) if optim.mu_dtype else None
    parts = []
    if optim.clip_grad_norm and optim.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim.clip_grad_norm)))
    parts.append(optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
                             weight_decay=float(optim.weight_decay), mask=decay_mask, mu_dtype=mu_dtype))
    return optax.chain(*parts), schedule


def global_norm(tree) -> jax.Array:
    return optax.global_norm(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree))
