"""The original's six pretraining tasks, registered in its mixture order (the concatenation order of its
`scripts/dataset_metadata/all.yaml`). The registry imports this module on first use."""
from streamformer_jax.tasks import classification, grounding, localization, registry, retrieval, vis

for _spec in (classification.KINETICS, classification.SSV2, retrieval.RETRIEVAL, grounding.GROUNDING,
              localization.LOCALIZATION, vis.VIS):
    registry.register(_spec)
