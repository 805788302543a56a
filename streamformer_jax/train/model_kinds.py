"""Model kinds by name (`config.model.kind`): "multitask" is the StreamFormer backbone with one head per registered
task (`multitask_kind`), "classifier" the action-recognition finetuning model (`classifier_kind`). A kind is a
builder `(ModelSettings, class_names: {task: [names]}) -> TaskModel`; `register_model_kind` adds one."""
from __future__ import annotations

from typing import Callable, Mapping

from streamformer_jax.train import classifier_kind, multitask_kind
from streamformer_jax.train.task_model import ModelSettings, TaskModel

_KINDS: dict[str, Callable[[ModelSettings, Mapping[str, list[str]]], TaskModel]] = {
    "multitask": multitask_kind.build, "classifier": classifier_kind.build}


def register_model_kind(name: str, builder: Callable[[ModelSettings, Mapping[str, list[str]]], TaskModel]) -> None:
    _KINDS[name] = builder


def build_task_model(settings: ModelSettings, class_names: Mapping[str, list[str]]) -> TaskModel:
    if settings.kind not in _KINDS:
        raise ValueError(f"unknown model kind {settings.kind!r}; registered: {sorted(_KINDS)}")
    return _KINDS[settings.kind](settings, class_names)
