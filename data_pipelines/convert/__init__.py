"""Converters from the original annotation formats to record shards (see docs/data_convert.md).

``python -m data_pipelines.convert TASK --annotations FILE --video-root DIR --out DIR``
``python -m data_pipelines.convert from-metadata --metadata all.yaml --out DIR``
"""
from data_pipelines.convert.build import Options
from data_pipelines.convert.from_metadata import convert_metadata
from data_pipelines.convert.pipeline import Summary, convert, convert_items

__all__ = ["Options", "Summary", "convert", "convert_items", "convert_metadata"]
