"""Multitask pretraining: model + losses (`multitask`, `heads`, `losses`, `templates`) and the trainer."""
