"""This process's place among ``torch.distributed`` ranks (the piece distributed.py and sweeps/sharing.py share)."""
from __future__ import annotations

from typing import Tuple

import torch.distributed as dist


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
