"""Paged KV cache: preallocated blocks and a free list (no allocation per step)."""
from __future__ import annotations

import math
from collections import deque

import torch

from .sequence import Sequence


class KVCache:
    """The K and V tensors of every layer, allocated once.

    ``k[layer]`` / ``v[layer]``: (num_blocks, block_size, num_kv_heads, head_dim). Token at
    position ``p`` of a sequence lives in block ``block_table[p // block_size]`` at offset
    ``p % block_size``.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class BlockManager:
    """Hands out KV blocks to sequences from a fixed pool.

    A sequence owns ``ceil(tokens_in_cache / block_size)`` blocks; blocks come back on
    ``free``. Nothing is allocated on the device after construction.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def blocks_needed(self, seq: Sequence, new_tokens: int) -> int:
        """Extra blocks ``seq`` needs to hold ``new_tokens`` more tokens in the cache."""
        total = seq.num_computed + new_tokens
        return max(0, math.ceil(total / self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, new_tokens: int, reserve: int = 0) -> bool:
        return self.blocks_needed(seq, new_tokens) + reserve <= self.num_free

    def allocate(self, seq: Sequence, new_tokens: int) -> None:
        """Give ``seq`` enough blocks for ``new_tokens`` more cached tokens."""
        need = self.blocks_needed(seq, new_tokens)
        if need > self.num_free:
            raise RuntimeError(f"KV cache out of blocks: need {need}, {self.num_free} free")
        for _ in range(need):
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        """Return all of ``seq``'s blocks to the pool."""
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
