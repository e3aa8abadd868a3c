"""The one compiled piece: the validator's clean-file fast path (tensorsafe/header/_native_fastpath.c).

It is optional: where no C compiler is found the install goes on and the same checks run in
Python (tensorsafe/header/fastpath.py), slower on small files. Everything else is in pyproject.toml.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tensorsafe.header._native_fastpath", ["tensorsafe/header/_native_fastpath.c"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing"],
    optional=True)])
