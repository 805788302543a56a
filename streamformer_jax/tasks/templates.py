"""Prompt templates of the original multitask heads (spec §5.1); each label task's `TaskSpec.templates` is one
of these.

* `VIDEO_TEMPLATES` (28): label prompts of the Kinetics, SSv2 and TaskLocalization heads. Each label's
  embedding is the mean over the 28 prompts of the L2-normalised text embeddings (not re-normalised).
* `SCENE_TEMPLATES` (1, "{}"): label prompts of the VIS head.
* `CAPTION_PREFIXES` (17): the datasets prefix FineAction / HACS / ActivityNet grounding captions with
  "<random prefix> <text>" (`prefix_caption`).
"""
from __future__ import annotations

import numpy as np

_VIDEO_SUFFIXES = ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
                   "a person performing {}.", "a person practicing {}.")
# "a example of" (sic) is the original's spelling.
VIDEO_TEMPLATES: tuple[str, ...] = tuple(f"{head} {s}" for head in ("a photo of", "a video of", "a example of",
                                                                    "a demonstration of")
                                         for s in _VIDEO_SUFFIXES)
SCENE_TEMPLATES: tuple[str, ...] = ("{}",)
CAPTION_PREFIXES: tuple[str, ...] = (
    "A video of an action where",
    "A video showing",
    "A video that demonstrates",
    "A video clip of",
    "A video recording of",
    "A video featuring",
    "A video capturing",
    "A video displaying",
    "A video presenting",
    "A video illustrating",
    "Watch this action where",
    "Look at this scene showing",
    "Here is a demonstration of",
    "This clip captures",
    "Observe this recording of",
    "This moment shows",
    "Witness this scene of",
)
# Datasets whose grounding captions get a random prefix in the original loader.
PREFIXED_DATASETS = ("FineAction", "HACS", "ActivityNet")

assert len(VIDEO_TEMPLATES) == 28 and len(CAPTION_PREFIXES) == 17


def prefix_caption(text: str, rng: np.random.Generator) -> str:
    """"<random prefix> <text>" as the original's grounding loader does for FineAction/HACS/ActivityNet."""
    return f"{CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))]} {text}"
