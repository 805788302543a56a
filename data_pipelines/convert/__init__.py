"""Converters from the original annotation formats to record shards (see docs/data_convert.md).

``python -m data_pipelines.convert TASK --annotations FILE --video-root DIR --out DIR``
"""
from .build import Options
from .pipeline import Summary, convert
from .readers import ArrayRecordSource, TFRecordSource, load_metadata, open_shards

__all__ = ["Options", "Summary", "convert", "ArrayRecordSource", "TFRecordSource", "load_metadata", "open_shards"]
