"""The one compiled part: the hot path's per-request work (service/_hotpath.c, the CPython API
only: a batch's explanations and a body's items as JSON). Optional: without a C compiler the
install goes on and the service computes the same in NumPy and Python (service/hotpath.py).
Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("service._hotpath", ["service/_hotpath.c"], optional=True, extra_compile_args=["-O2"])])
