from .dcnv3_func import (HAS_COMPILED_OP, DCNv3Function, check_dcnv3_args, dcnv3_core_pytorch,
                         dcnv3_output_size)

__all__ = ['DCNv3Function', 'dcnv3_core_pytorch', 'dcnv3_output_size', 'check_dcnv3_args',
           'HAS_COMPILED_OP']
