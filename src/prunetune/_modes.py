"""Train/eval modes put back as they were, module by module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Put back every submodule's train/eval mode after the block (``model.train(was)`` would set all
    of them to the top module's, a frozen ``bn.eval()`` included)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
