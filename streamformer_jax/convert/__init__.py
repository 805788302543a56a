"""Checkpoint converters between our checkpoints and the official PyTorch / Hugging Face formats."""
