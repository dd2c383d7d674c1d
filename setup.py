"""Build `patchscaler` and its one native extension, `patchscaler._C`.

The extension holds every C++ op (schemas via TORCH_LIBRARY_FRAGMENT in each
`csrc/**/<op>.cpp`) and their CPU kernels; the CUDA kernels in `csrc/cuda/*.cu`
are added when PyTorch was built with CUDA and nvcc is found, or when
`FORCE_CUDA=1` is set (no GPU needs to be visible; `TORCH_CUDA_ARCH_LIST` then
picks the architectures). Triton kernels live in the top-level `kernels/`
folder and are installed as `patchscaler.kernels`.

Build with the PyTorch already installed in the environment:
    pip install --no-build-isolation -e .
ninja compiles the translation units in parallel (MAX_JOBS caps the workers, default:
ninja's own, cores + 2); `pip install -v ...` shows its [n/N] progress lines, which
pip otherwise hides behind "still running...". Build times: benchmarks/results/build-time.md.
"""

import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def _extension():
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    with_cuda = _want_cuda()
    # One line up front, so a build log says what is being compiled and how wide
    # (ninja then prints "[n/N] <command>" per file as it finishes).
    print(
        f"patchscaler._C: {len(cpp_sources)} C++"
        + (f" + {len(cuda_sources)} CUDA" if with_cuda else " (no CUDA)")
        + f" files, ninja jobs: {os.environ.get('MAX_JOBS', 'ninja default')}",
        flush=True,
    )
    # PyTorch >= 2.13 headers require C++20; older ones accept it too.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    # ops register through TORCH_LIBRARY, so the module itself exports no functions;
    # Py_LIMITED_API keeps the .so loadable by any later CPython. PyTorch >= 2.6 defines
    # it itself for py_limited_api extensions (its minimum CPython, 3.10 for 2.14);
    # defining it here too only printed a "redefined" warning for every file.
    from torch.utils import cpp_extension

    defines_limited_api = hasattr(cpp_extension, "min_supported_cpython")
    define_macros = [] if defines_limited_api else [("Py_LIMITED_API", "0x03090000")]
    if with_cuda:
        return CUDAExtension(
            "patchscaler._C",
            cpp_sources + cuda_sources,
            define_macros=define_macros + [("PATCHSCALER_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    return CppExtension(
        "patchscaler._C",
        cpp_sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


setup(
    name="patchscaler",
    version="0.1.0",
    description="Fast x4 diffusion super-resolution with patch-adaptive group sampling (PatchScaler)",
    packages=find_packages(include=["patchscaler", "patchscaler.*"]) + ["patchscaler.kernels"],
    package_dir={"patchscaler.kernels": "kernels"},
    package_data={"patchscaler": ["weights/*/*.safetensors", "weights/*/*.json", "metrics/*.safetensors", "metrics/*.txt", "examples/*.png", "examples/*.md"]},
    python_requires=">=3.10",
    # pypng: 16-bit PNGs, which Pillow cannot write (see patchscaler/imaging/image_files.py)
    install_requires=["torch>=2.4", "numpy", "pillow", "safetensors", "tqdm", "pypng"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy", "gradio", "gradio_client"],
        # the local web app, patchscaler-ui (patchscaler/command/ui.py)
        "ui": ["gradio"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["patchscaler=patchscaler.command.cli:main", "patchscaler-ui=patchscaler.command.ui:main"]},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
