"""Converters from the original annotation formats to record shards (see docs/data_convert.md).

``python -m data_pipelines.convert TASK --annotations FILE --video-root DIR --out DIR``
``python -m data_pipelines.convert from-metadata --metadata all.yaml --out DIR``
"""
from .build import Options
from .from_metadata import convert_metadata
from .pipeline import Summary, convert, convert_items
from .readers import ArrayRecordSource, TFRecordSource, load_metadata, open_shards

__all__ = ["Options", "Summary", "convert", "convert_items", "convert_metadata", "ArrayRecordSource", "TFRecordSource", "load_metadata", "open_shards"]
