"""Shared by the reliability tests: the tiny recipe and a snapshot of a directory tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TINY_RECIPE = {
    "model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
    "data": {"name": "digits", "image_size": 8, "batch_size": 128},
    "criterion": "l1",
    "allocation": {"macs_budget": 0.5},
    "calibration": {"size": 64, "batch_size": 64},
    "pretrain": {"epochs": 1, "lr": 0.1, "batch_size": 128},
    "finetune": {"epochs": 1, "lr": 0.05, "batch_size": 128},
    "device": "cpu",
    "seed": 0,
}


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under ``root``: size, mtime and a content hash (folders: kind only)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (0, 0, "dir")
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) else "link"
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, digest)
    return out
