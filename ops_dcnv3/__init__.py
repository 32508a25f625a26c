"""The DCNv3 operator (InternImage): compiled CPU/CUDA kernels plus a pure-PyTorch fallback.

Importable without mmcv/mmdet. Importing ``ops_dcnv3.functions`` loads ``ops_dcnv3._C`` when it has
been built, which registers ``torch.ops.dcnv3.dcnv3_forward`` and ``dcnv3_backward``.
"""
from .functions import HAS_COMPILED_OP, DCNv3Function, dcnv3_core_pytorch, dcnv3_output_size

__all__ = ['DCNv3Function', 'dcnv3_core_pytorch', 'dcnv3_output_size', 'HAS_COMPILED_OP']
