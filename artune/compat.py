"""The one place artune leans on another project's internals.

Each use says why, the versions it was checked on, the public behaviour it falls back to where the
internal has moved, and the test that holds it. Nothing else under ``artune/`` may import
``ray._private``, Ray Tune's or Ray Train's internals, or ``torch._*``.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- torch


# --------------------------------------------------------------------------- Ray
