"""Downstream evaluation for streamformer_jax: metrics, action recognition, OAD features, PyTorch exports.

See docs/evaluation.md. Modules: `eval.metrics`, `eval.action_recognition`, `eval.oad_extract`, `eval.exports`.
"""
