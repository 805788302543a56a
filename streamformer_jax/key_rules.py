"""The one key-mapping rule engine: declarative tables between a foreign state dict (PyTorch / Hugging Face
names and layouts) and our flat parameters. Used by the backbone (`convert.keymap`), SigLIP (`convert.siglip`),
text-tower (`text.model`) and head (`tasks.vis`, `convert.classifier_io`) converters.

A `Rule` names one parameter of ours, the foreign key(s) it comes from and the layout transform between them.
`{l}` in a name expands over layers (`expand`). `to_ours` applies a table strictly (every key used, every
shape checked, all problems in one error); `to_theirs` is its inverse.

Layouts (foreign tensor -> ours, ours -> foreign):
  copy     unchanged (shapes must agree)
  vector   reshape to our shape; back: flattened (0-dim stays 0-dim): biases, LayerNorm vectors, gates
  linear   torch Linear [out, in] -> kernel [*in, *out] (`n_in` input dims of ours); back: [out, in]
  conv     Conv2d [O, C, kh, kw] -> [kh, kw, C, O]
  table    reshape; back: a leading axis of 1 (embedding tables stored as [1, N, D])
  probe    reshape; back: [1, 1, D]
  add_axis a leading axis of 1 ([N, D] -> [1, N, D]); back: without it
  scalar   reshape to 0-dim; back: [1]
`part`: ours is the given third of the rows of a packed [q; k; v] foreign tensor (several rules share it);
a tuple of foreign keys is concatenated along rows ([q; k; v] from three tensors).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from streamformer_jax.param_tree import ParameterMismatchError, raise_if_mismatched


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: str
    theirs: str | tuple[str, ...]
    layout: str = "copy"
    n_in: int = 1  # input dims of a linear kernel of ours ([H, d] inputs have 2)
    part: int | None = None  # which third of the rows of a packed [q; k; v] foreign tensor
    lora_only: bool = False

    @property
    def sources(self) -> tuple[str, ...]:
        return self.theirs if isinstance(self.theirs, tuple) else (self.theirs,)


class Layout(NamedTuple):
    to_ours: Callable[[np.ndarray, tuple | None, Rule], np.ndarray]
    to_theirs: Callable[[np.ndarray, Rule], np.ndarray]
    ndim: int | None = None  # the foreign tensor's rank, when the layout requires one


def _reshape(t, shape, rule):
    return t if shape is None else t.reshape(shape)


def _copy(t, shape, rule):
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError
    return t


LAYOUTS = {
    "copy": Layout(_copy, lambda a, rule: a),
    "vector": Layout(_reshape, lambda a, rule: a.reshape(-1) if a.ndim else a),
    "linear": Layout(lambda t, shape, rule: t.T if shape is None else t.T.reshape(shape),
                     lambda a, rule: a.reshape(int(np.prod(a.shape[:rule.n_in])), -1).T, ndim=2),
    "conv": Layout(lambda t, shape, rule: t.transpose(2, 3, 1, 0).reshape(shape),
                   lambda a, rule: a.transpose(3, 2, 0, 1), ndim=4),
    "table": Layout(_reshape, lambda a, rule: a[None]),
    "probe": Layout(_reshape, lambda a, rule: a[None, None]),
    "add_axis": Layout(lambda t, shape, rule: t[None], lambda a, rule: a[0]),
    "scalar": Layout(lambda t, shape, rule: t.reshape(()), lambda a, rule: a.reshape(1)),
}


def _per_layer(rule: Rule) -> bool:
    return "{l}" in rule.ours or any("{l}" in s for s in rule.sources)


def expand(rules: Iterable[Rule], num_layers: int, lora: bool = True) -> list[Rule]:
    """The rules without `{l}`, then those with `{l}` for layer 0, 1, ... (`lora_only` rules dropped when not
    `lora`)."""
    rules = [r for r in rules if lora or not r.lora_only]
    out = [r for r in rules if not _per_layer(r)]
    for l in range(num_layers):
        for r in filter(_per_layer, rules):
            theirs = tuple(s.format(l=l) for s in r.sources)
            out.append(dataclasses.replace(r, ours=r.ours.format(l=l),
                                           theirs=theirs if isinstance(r.theirs, tuple) else theirs[0]))
    return out


def _gather(state: Mapping[str, np.ndarray], rule: Rule) -> np.ndarray:
    """The foreign tensor a rule reads, before its layout: one key, a [q; k; v] concatenation, or a third."""
    t = np.concatenate([np.asarray(state[s], np.float32) for s in rule.sources], axis=0) \
        if len(rule.sources) > 1 else np.asarray(state[rule.sources[0]], np.float32)
    if rule.part is not None:
        if t.shape[0] % 3:
            raise ValueError(f"{rule.theirs}: {t.shape} cannot be split into q, k, v")
        n = t.shape[0] // 3
        t = t[rule.part * n:(rule.part + 1) * n]
    return t


def to_ours(state: Mapping[str, np.ndarray], rules: Sequence[Rule], shapes: Mapping[str, tuple] | None, what: str,
            *, ignored: Iterable[str] = (), strict: bool = True,
            error: type[Exception] = ParameterMismatchError) -> dict[str, np.ndarray]:
    """Foreign tensors -> ours (float32, C order). `shapes`: our shape per name (None: the layout decides).

    Strict: every foreign key of the rules must be present and every key of `state` used (except `ignored`);
    all problems are reported in one `error` that starts with `what`. Not strict: the rules whose keys are
    present are applied, the others skipped.
    """
    used = {s for r in rules for s in r.sources}
    missing = sorted(used - set(state)) if strict else []
    unexpected = sorted(set(state) - used - set(ignored)) if strict else []
    out, bad = {}, []
    for r in rules:
        if not all(s in state for s in r.sources):
            continue
        layout = LAYOUTS[r.layout]
        want = None if shapes is None else tuple(shapes[r.ours])
        try:
            t = _gather(state, r)
            if layout.ndim is not None and t.ndim != layout.ndim:
                raise ValueError
            if want is not None and t.size != int(np.prod(want)):
                raise ValueError
            value = layout.to_ours(t, want, r)
        except ValueError as err:
            shape = tuple(np.shape(state[r.sources[0]]))
            bad.append(str(err) if str(err) else f"{r.theirs}: shape {shape} does not fit {r.ours} {want}")
            continue
        out[r.ours] = np.array(value, dtype=np.float32, order="C")
    raise_if_mismatched(what, missing, unexpected, bad, error)
    return out


def to_theirs(params: Mapping[str, np.ndarray], rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """Ours -> foreign tensors (float32, C order); rules sharing a packed key (`part`) are concatenated."""
    parts: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for r in rules:
        t = LAYOUTS[r.layout].to_theirs(np.asarray(params[r.ours], dtype=np.float32), r)
        if r.part is None:
            out[r.theirs] = t
        else:
            parts.setdefault(r.theirs, {})[r.part] = t
    for key, pieces in parts.items():
        out[key] = np.concatenate([pieces[i] for i in range(3)], axis=0)
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in out.items()}


def linear(ours: str, theirs: str, n_in: int = 1) -> list[Rule]:
    """A torch Linear `theirs.{weight,bias}` <-> our Dense `ours.{kernel,bias}`."""
    return [Rule(f"{ours}.kernel", f"{theirs}.weight", "linear", n_in=n_in), Rule(f"{ours}.bias", f"{theirs}.bias",
                                                                                  "vector")]


def layer_norm(ours: str, theirs: str) -> list[Rule]:
    """A torch LayerNorm `theirs.{weight,bias}` <-> our LayerNorm `ours.{scale,bias}`."""
    return [Rule(f"{ours}.scale", f"{theirs}.weight", "vector"), Rule(f"{ours}.bias", f"{theirs}.bias", "vector")]
