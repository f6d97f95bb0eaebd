"""Where the benchmarks find pyvene 0.1.8 for their comparison columns.

``--pyvene-python PATH`` wins; else the ``PYVENE_PYTHON`` environment variable; else
``.venv-pyvene/bin/python`` in the repository, made once with::

    python3 -m venv .venv-pyvene
    .venv-pyvene/bin/pip install torch==2.13.0
    .venv-pyvene/bin/pip install pyvene==0.1.8 "transformers>=4.45,<4.50"

A path that does not exist makes the pyvene column read "not installed".
"""
import os
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1] / ".venv-pyvene" / "bin" / "python"


def default_pyvene_python() -> str:
    """The interpreter of the comparison venv: ``$PYVENE_PYTHON`` or the repository's ``.venv-pyvene``."""
    return os.environ.get("PYVENE_PYTHON") or str(DEFAULT)
