"""Loading a script of benchmarks/ as a module, so a test can call its ``main(argv)`` small."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@contextlib.contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` as a module; afterwards it leaves ``sys.modules`` and torch's thread
    count (which the scripts' ``--threads`` set) as they were."""
    key = f"{name}_bench"
    spec = importlib.util.spec_from_file_location(key, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(key, None)
        torch.set_num_threads(threads)
