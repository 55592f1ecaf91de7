"""
What ``twisted-sse --version`` and ``twistd sse --version`` print.
"""

from __future__ import annotations

import platform

import twisted

from . import __version__

__all__ = ["version_text"]


def version_text() -> str:
    """
    This package's version, then on a second line the Twisted and Python
    it runs on: what a bug report needs.

    :returns: Two lines, without a final line feed.
    """
    return (
        f"twisted_sse {__version__}\n"
        f"Twisted {twisted.__version__}, Python {platform.python_version()}"
    )
