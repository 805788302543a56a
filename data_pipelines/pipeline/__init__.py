"""grain input pipelines over converted StreamFormer records (see docs/data_pipelines.md).

Modules, one job each: `sampling` (frame indices), `targets` (labels), `augment` (crop boxes, flips),
`randaugment` (timm-style RandAugment for clips), `codec`
(JPEG decode + resize), `transforms` (record -> example transforms, one per kind of task), `mixture` (one task per batch),
`sources` (record shards as grain data sources), `loader` (the chain, iterator state, global arrays),
`builtin` (a tiny dataset for the quickstart and tests).

This package file imports nothing heavy: grain's spawned workers import the modules they need on their own.
"""
