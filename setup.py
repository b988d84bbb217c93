"""Builds the C value-cache hook (native/vr_hook.c) with the package; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("vreason_local._vrhook", ["native/vr_hook.c"], extra_compile_args=[])])
