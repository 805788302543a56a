"""Zero-shot evaluation of the pretraining tasks (retrieval, temporal grounding, temporal action localization)
with a pretrained model's own heads and text tower, by the original's protocol and metrics.

    items      what is evaluated: converted records or an original annotation file + videos (`find_items`)
    clips      the original's test-mode frame sampling and resizing per task
    features   the backbone pass: sharded over devices and hosts, padded, resumable (`FeatureRunner`)
    evaluate   per-task metrics per dataset (`evaluate`, `ZeroShotModel`, `flat_summary`)
    metrics    the metric functions, equal to the original's (grounding windows and IoU, R@K, ActivityNet AP)

Callers: the CLIs `python -m eval.retrieval|grounding|localization` (a pretraining export or run directory,
`eval.pretrained`) and the trainer's periodic evaluation (`streamformer_jax.train.zero_shot_eval`,
`--config.eval_every`).
"""
