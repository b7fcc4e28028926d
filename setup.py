"""Build the two Cython extension modules.

Directives live here once (STYLE.md §2.7). JAILSERVE_DEBUG=1 turns on annotate,
line tracing and the JS_DEBUG C constant. JAILSERVE_ONLY=_core (or _jail) builds
just that module, which lets one module be rebuilt while the other is being edited.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("JAILSERVE_DEBUG") == "1"
ONLY = os.environ.get("JAILSERVE_ONLY", "")

macros = [("JS_DEBUG", "1" if DEBUG else "0")]
if DEBUG:
    macros.append(("CYTHON_TRACE", "1"))

modules = [
    Extension("jailserve._core", ["jailserve/_core.pyx"], define_macros=macros,
              extra_compile_args=["-O2"]),
    Extension("jailserve._jail", ["jailserve/_jail.pyx"], define_macros=macros,
              extra_compile_args=["-O2"]),
]
if ONLY:
    modules = [m for m in modules if m.name.endswith(ONLY)]

setup(
    ext_modules=cythonize(
        modules,
        annotate=DEBUG,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": DEBUG,
            "embedsignature": True,
        },
    ),
)
