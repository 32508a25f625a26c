"""InternImage plugin for mmdet 2.x: importing this package registers its backbone, RoI head and
RoI extractor, optimizer constructor and hooks in mmdet's and mmcv's registries (configs load it
with ``custom_imports=dict(imports=['mmdet_custom'])``).
"""
from . import mmcv_compat  # noqa: F401  (first: fixes mmcv on this torch before anything uses it)
from . import models  # noqa: F401  (core refers to the backbone class)
from . import core, datasets  # noqa: F401
