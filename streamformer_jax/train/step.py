"""The train state and the jitted steps: one gradient micro-step per task-pure micro-batch, one update step.

Train state (a plain pytree; also the on-disk layout, with the project's stable parameter names):

  {"params": {...trainable, nested by dotted name...}, "frozen": {...frozen...}, "opt": optax state,
   "step": int32 [], "rng": uint32 [2]}

`micro_step(state, acc, batch, text, task=...)` adds one micro-batch's gradient to the float32 accumulator
`acc` (donated), compiled once per task. `apply_step(state, acc)` averages the accumulated gradients, applies
AdamW and returns the new state and a zeroed accumulator; both inputs are donated. If the loss or the
gradient norm is not finite the update is dropped (the state is returned unchanged) and `finite` is False: the
loop stops with a message and the last good checkpoint stays the latest.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from streamformer_jax import sharding as sharding_lib
from streamformer_jax.param_tree import ModuleTemplate, flat_params, flatten, nest, path_name
from streamformer_jax.train import optim as optim_lib
from streamformer_jax.train.task_model import TaskModel, apply_remat


def _tree_zeros_like(tree):
    return jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)


class Trainer:
    """Shardings, the optimiser and the compiled step functions for one model and mesh.

    `optim`: the `config.optim` section (AdamW, schedule over `total_steps`, `optim.make_optimizer`), applied to
    the trainable parameters with the model's weight-decay groups; `rules`: a sharding rule preset or rules;
    `remat`: the rematerialisation policy of the backbone blocks; `scan_layers`: trace them as one scan.
    """

    def __init__(self, tm: TaskModel, optim, total_steps: int, mesh: Mesh, *, rules: Any = "dp",
                 remat: str = "none", scan_layers: bool = False):
        self.tm, self.mesh, self.rules, self.remat, self.scan_layers = tm, mesh, rules, remat, scan_layers
        self.template = ModuleTemplate(tm.model)
        self.trainable_names = [n for n in self.template.names if self.template.is_param[n] and tm.trainable(n)]
        chosen = set(self.trainable_names)
        self.frozen_names = [n for n in self.template.names if n not in chosen]
        if not self.trainable_names:
            raise ValueError("no trainable parameters: check config.model.trainable")
        decay = nest({n: bool(tm.decay(n)) for n in self.trainable_names})
        self.tx, self.schedule = optim_lib.make_optimizer(optim, total_steps, decay)
        self.replicated = sharding_lib.replicated(self.mesh)
        flat_sh = self._flat_param_shardings()
        self.param_shardings = nest({n: flat_sh[n] for n in self.trainable_names})
        self.frozen_shardings = nest({n: flat_sh[n] for n in self.frozen_names})
        abstract = self.abstract_state(with_shardings=False)
        self.opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract["opt"], self.param_shardings,
            transform_non_params=lambda _: self.replicated)
        self.state_shardings = {"params": self.param_shardings, "frozen": self.frozen_shardings,
                                "opt": self.opt_shardings, "step": self.replicated, "rng": self.replicated}
        self.acc_shardings = {"grads": self.param_shardings, "loss": self.replicated, "count": self.replicated}
        self._micro_fns = {}
        self.apply_step = jax.jit(self._apply, donate_argnums=(0, 1),
                                  out_shardings=(self.state_shardings, self.acc_shardings, self.replicated))

    # ------------------------------------------------------------------------------------------ shardings
    def _flat_param_shardings(self) -> dict[str, NamedSharding]:
        tree = sharding_lib.state_shardings(self.template.abstract_state(), self.mesh, self.rules)
        out = {}
        for path, value in nnx.to_flat_state(tree):
            value = value.get_value() if hasattr(value, "get_value") else value
            out[path_name(path)] = value if isinstance(value, NamedSharding) else self.replicated
        return out

    def abstract_state(self, with_shardings: bool = True) -> dict:
        """ShapeDtypeStructs of the train state (with shardings: the restore target on this mesh)."""
        shapes = self.template.shapes
        params = nest({n: shapes[n] for n in self.trainable_names})
        frozen = nest({n: shapes[n] for n in self.frozen_names})
        state = {"params": params, "frozen": frozen, "opt": jax.eval_shape(self.tx.init, params),
                 "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
        if with_shardings:
            state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                           state, self.state_shardings)
        return state

    # ----------------------------------------------------------------------------------------------- init
    def init_state(self, seed: int, values: Mapping[str, Any] | None = None) -> dict:
        """The initial state from the model's current values (or `values`), placed on the mesh.

        Every process must pass the same values (the model init is deterministic in the seed)."""
        values = flat_params(self.tm.model, None) if values is None else values
        flat_sh = {**flatten(self.param_shardings), **flatten(self.frozen_shardings)}
        params = nest({n: sharding_lib.put_global(values[n], flat_sh[n]) for n in self.trainable_names})
        frozen = nest({n: sharding_lib.put_global(values[n], flat_sh[n]) for n in self.frozen_names})
        opt = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)
        key = np.asarray(jax.random.key_data(jax.random.key(seed)), np.uint32)
        return {"params": params, "frozen": frozen, "opt": opt,
                "step": sharding_lib.put_global(np.zeros((), np.int32), self.replicated),
                "rng": sharding_lib.put_global(key, self.replicated)}

    def init_accumulator(self) -> dict:
        abstract = self.abstract_state(with_shardings=False)["params"]
        grads = jax.jit(lambda: _tree_zeros_like(abstract), out_shardings=self.param_shardings)()
        zero = jax.jit(lambda: (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)),
                       out_shardings=self.replicated)()
        return {"grads": grads, "loss": zero[0], "count": zero[1]}

    # ----------------------------------------------------------------------------------------------- steps
    def model_from(self, params, frozen):
        model = self.template.merge({**flatten(params), **flatten(frozen)})
        return apply_remat(model, self.remat, self.scan_layers)

    def loss_and_grads(self, state, batch, text, task: str, micro_index):
        rng = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"]),
                                 micro_index)

        def loss_fn(params):
            loss, metrics = self.tm.loss(self.model_from(params, state["frozen"]), task, batch, text, rng=rng)
            return loss.astype(jnp.float32), metrics

        return jax.value_and_grad(loss_fn, has_aux=True)(state["params"])

    def _micro(self, state, acc, batch, text, task):
        (loss, metrics), grads = self.loss_and_grads(state, batch, text, task, acc["count"])
        acc = {"grads": jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), acc["grads"], grads),
               "loss": acc["loss"] + loss, "count": acc["count"] + 1}
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
        return acc, {**metrics, "loss": loss}

    def micro_step_fn(self, task: str):
        """The jitted micro-step of one task (compiled on first use; also for lowering / cost analysis)."""
        if task not in self._micro_fns:
            # keep_unused: the optimizer state is not read here but stays resident in HBM; as an argument it
            # enters the compiler's memory budget (and its own rematerialisation decisions) instead of being
            # pruned, so a micro-step that compiles also fits beside the full train state.
            self._micro_fns[task] = jax.jit(functools.partial(self._micro, task=task), donate_argnums=(1,),
                                            out_shardings=(self.acc_shardings, self.replicated), keep_unused=True)
        return self._micro_fns[task]

    def micro_step(self, state, acc, batch, text, task: str):
        return self.micro_step_fn(task)(state, acc, batch, text)

    def _apply(self, state, acc):
        n = jnp.maximum(acc["count"], 1).astype(jnp.float32)
        grads = jax.tree_util.tree_map(lambda g: g / n, acc["grads"])
        loss = acc["loss"] / n
        grad_norm = optim_lib.global_norm(grads)
        updates, opt = self.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # An element-wise select, not lax.cond over the whole state: the select fuses into each update kernel,
        # where a conditional copies every array of the state in both branches (on TPU it doubled the update's
        # kernels and compile time); the frozen group never changes, so it does not pass through it.
        keep = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(finite, x, y), a, b)  # noqa: E731
        new = {"params": keep(params, state["params"]), "frozen": state["frozen"], "opt": keep(opt, state["opt"]),
               "step": jnp.where(finite, state["step"] + 1, state["step"]), "rng": state["rng"]}
        metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": optim_lib.global_norm(new["params"]),
                   "lr": jnp.asarray(self.schedule(state["step"]), jnp.float32), "finite": finite}
        zero = {"grads": _tree_zeros_like(acc["grads"]), "loss": jnp.zeros((), jnp.float32),
                "count": jnp.zeros((), jnp.int32)}
        return new, zero, metrics


def device_batch(batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The jax.Array fields of a loader batch (strings stay on the host)."""
    return {k: v for k, v in batch.items() if isinstance(v, jax.Array)}
