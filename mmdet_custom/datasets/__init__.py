"""The built-in synthetic shapes dataset (COCO format, read by mmdet's CocoDataset).

``synthetic_shapes`` is not imported here: it runs as ``python -m
mmdet_custom.datasets.synthetic_shapes``, and a package that pre-imports it would make Python
warn that the module is loaded twice. Import it directly where needed.
"""
