"""The compiled module as a whole: its version.

These check the built module (``fastpgd._ext.built``), so they also run under
``FASTPGD_DISABLE_EXT=1``, which only hides it from the public names.
"""

from __future__ import annotations

import importlib.metadata

import pytest

import fastpgd
from fastpgd import _ext

C = _ext.built
needs_built = pytest.mark.skipif(C is None, reason="needs the compiled extension built")


def test_version_is_written_once():
    assert importlib.metadata.version("fastpgd") == fastpgd.__version__


@needs_built
def test_extension_has_the_package_version():
    assert C.__version__ == fastpgd.__version__
