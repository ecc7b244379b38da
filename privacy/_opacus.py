"""Opacus, imported without its side effect on the root logger.

``opacus.utils.module_utils`` calls ``logging.basicConfig`` when it is
imported, which installs a stderr handler on the *root* logger of whatever
program imports it. In a Flower process every log line then appears twice
(Flower's own handler, then the root's), and an application embedding
fedprofile would find its logging configured for it. So fedprofile imports
Opacus only through this module, which removes the handlers that import added.
"""

from __future__ import annotations

import logging

_before = list(logging.root.handlers)
import opacus  # noqa: E402  (the point of this module is to wrap this import)

for _handler in list(logging.root.handlers):
    if _handler not in _before:
        logging.root.removeHandler(_handler)
del _before

__all__ = ["opacus"]
