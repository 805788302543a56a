"""The pretraining tasks: one `TaskSpec` per task (`registry`), the task heads, losses and prompt templates, and the
multitask model that combines them (`model`). See docs/multitask.md, "Adding a task"."""
