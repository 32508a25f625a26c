"""Build and install the InternImage plugin and its compiled DCNv3 operator (``ops_dcnv3._C``).

The C++ CPU kernels are always built. The CUDA kernels are built whenever a CUDA toolkit (nvcc)
is found, with or without a GPU on the build machine.

Environment variables:
    DCNV3_WITH_CUDA=0       build the CPU kernels only
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default: those of the visible GPUs; with none
                            visible, "8.0;9.0+PTX": A100 and H100, and PTX for newer GPUs)
    CUDA_HOME               toolkit folder (detected from nvcc when unset)
"""
import glob
import os
import shutil
import subprocess

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('ops_dcnv3', 'csrc')


def find_cuda_home():
    """Return the CUDA toolkit folder, following an ``nvcc`` wrapper script to the real binary.

    torch guesses CUDA_HOME as the parent of the folder holding ``nvcc``; where ``nvcc`` is a
    wrapper that execs the toolkit's binary, that guess has no headers.
    """
    if os.environ.get('CUDA_HOME'):
        return os.environ['CUDA_HOME']
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, '--dryrun', '-x', 'cu', '-c', os.devnull, '-o', os.devnull],
                             capture_output=True, text=True).stderr
    except OSError:
        return None
    # The dry run names the real binary folder in a line like '#$ _HERE_=/usr/local/cuda-13.0/bin'.
    for line in out.splitlines():
        if line.startswith('#$ _HERE_='):
            top = os.path.dirname(os.path.realpath(line.split('=', 1)[1].strip()))
            if os.path.isfile(os.path.join(top, 'include', 'cuda_runtime.h')):
                return top
    top = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return top if os.path.isfile(os.path.join(top, 'include', 'cuda_runtime.h')) else None


def _nvidia_wheel_includes():
    """Header folders of torch's nvidia-* wheels (cuSPARSE, cuBLAS, ...), which a bare toolkit may lack."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        dirs += glob.glob(os.path.join(root, '*', 'include'))
        dirs += glob.glob(os.path.join(root, 'cu*', 'include'))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


# What a build with no GPU visible targets: A100 and H100 machine code, plus H100's PTX, which the
# driver compiles for newer GPUs (Blackwell) on first use.
DEFAULT_CUDA_ARCH_LIST = '8.0;9.0+PTX'


def _capability(arch_name):
    """(major, minor) of a torch arch name such as 'sm_90', 'sm_90a' or 'sm_120'."""
    number = int(''.join(ch for ch in arch_name.split('_', 1)[1] if ch.isdigit()))
    return number // 10, number % 10


def cuda_arch_list():
    """The CUDA architectures to build for, spelled as TORCH_CUDA_ARCH_LIST spells them.

    TORCH_CUDA_ARCH_LIST when set (``native`` counts as unset). Otherwise those of the visible
    GPUs, each capped at the newest torch itself was built for, the newest also as PTX: torch's
    ``native``, resolved here so the build stamps and the mmcv-full wheel cache can name it. A T4
    (7.5) or an RTX 5090 (12.0) cannot run A100/H100 machine code. With no GPU visible,
    DEFAULT_CUDA_ARCH_LIST.
    """
    chosen = os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip()
    if chosen and chosen != 'native':
        return chosen
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    built = [_capability(name) for name in torch.cuda.get_arch_list() if name.startswith('sm_')]
    if gpus == 0 or not built:
        return DEFAULT_CUDA_ARCH_LIST
    archs = sorted({min(torch.cuda.get_device_capability(i), max(built)) for i in range(gpus)})
    return ';'.join(f'{major}.{minor}' for major, minor in archs) + '+PTX'


def get_extensions():
    with_cuda = os.environ.get('DCNV3_WITH_CUDA', '1') != '0'
    cuda_home = find_cuda_home() if with_cuda else None
    if cuda_home:
        os.environ['CUDA_HOME'] = cuda_home  # must be set before torch.utils.cpp_extension is imported
        os.environ['TORCH_CUDA_ARCH_LIST'] = cuda_arch_list()

    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    # at::parallel_for is implemented in ATen's headers: without OpenMP the CPU kernels run on one
    # thread. Linking with -fopenmp resolves to the libgomp torch has already loaded, so
    # torch.set_num_threads keeps controlling the kernels.
    openmp = ['-fopenmp'] if torch.backends.openmp.is_available() else []
    sources = [os.path.join(CSRC, 'dcnv3.cpp')] + sorted(glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    cxx_flags = ['-O3', '-std=c++20'] + openmp
    if cuda_home:
        sources += sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
        return [CUDAExtension(
            'ops_dcnv3._C', sources,
            include_dirs=[os.path.join(HERE, CSRC)] + _nvidia_wheel_includes(),
            define_macros=[('WITH_CUDA', None)],
            extra_compile_args={'cxx': cxx_flags,
                                'nvcc': ['-O3', '-std=c++20', '--expt-relaxed-constexpr']},
            extra_link_args=openmp)]
    return [CppExtension('ops_dcnv3._C', sources, include_dirs=[os.path.join(HERE, CSRC)],
                         extra_compile_args={'cxx': cxx_flags}, extra_link_args=openmp)]


def main():
    ext_modules = get_extensions()  # first: it sets CUDA_HOME, which torch.utils.cpp_extension reads on import
    from torch.utils.cpp_extension import BuildExtension
    setup(
        name='internimage-mmdet',
        version='0.1.0',
        description='InternImage Mask R-CNN for MMDetection 2.x, with a compiled DCNv3 operator for CPU and CUDA',
        packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
        ext_modules=ext_modules,
        cmdclass={'build_ext': BuildExtension.with_options(use_ninja=True)},
        python_requires='>=3.10',  # the torch requirements.txt pins (2.14.1) has no Python 3.9 wheels
        zip_safe=False,
    )


if __name__ == '__main__':
    main()
