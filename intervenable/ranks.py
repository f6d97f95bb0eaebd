"""This process's place among ``torch.distributed`` ranks (the piece distributed.py and sweeps/sharing.py share).

Importing this module also imports ``torch.distributed.nn`` while no process group exists yet.
Its functions take ``group=group.WORLD`` as default arguments, evaluated when it is first imported:
imported after ``init_process_group`` (transformers' modeling code imports it through FSDP when a
model class is first loaded), they keep the default process group alive for good, so
``destroy_process_group`` cannot free it and gloo's threads run on into interpreter shutdown,
where a rank is sometimes aborted ("terminate called without an active exception").
"""
from __future__ import annotations

from typing import Tuple

import torch.distributed as dist

if dist.is_available() and not dist.is_initialized():
    import torch.distributed.nn  # noqa: F401  (before any process group: see the module docstring)


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
