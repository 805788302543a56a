"""Converters from the original annotation formats to record shards (see docs/data_convert.md).

``python -m data_pipelines.convert TASK --annotations FILE --video-root DIR --out DIR``
"""
from data_pipelines.convert.build import Options
from data_pipelines.convert.pipeline import Summary, convert

__all__ = ["Options", "Summary", "convert"]
