"""ReadAhead: chunks in order with the values of direct reads, widened exactly; a read's
error raised when its chunk is taken; the reader thread stopped on leaving, errors too."""

import threading

import pytest
import torch

from otamerge.errors import OtaMergeError
from otamerge.io.readahead import ChunkRead, ReadAhead


class Source:
    """A stand-in checkpoint: bf16 rows of a fixed tensor; ``bad`` names a failing read."""

    def __init__(self, seed: int, bad: tuple | None = None):
        self.t = torch.randn(10, 3, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
        self.bad = bad

    def get(self, name, rows=None):
        if (name, rows) == self.bad:
            raise OtaMergeError(f"{name} {rows}: bad")
        return (self.t if rows is None else self.t[rows[0]:rows[1]]).clone()


def readers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("otamerge-read")}


def test_chunks_come_in_order_with_the_bits_of_direct_reads():
    sources = [Source(0), Source(1)]
    reads = [ChunkRead("w", (a, min(a + 4, 10)), torch.float32) for a in range(0, 10, 4)]
    reads.append(ChunkRead("w", None, torch.float64))
    with ReadAhead(sources, reads, torch.device("cpu")) as reader:
        for r in reads:
            got = reader.take(r.name, r.rows)
            for src, value in zip(sources, got):
                assert torch.equal(value, src.get(r.name, r.rows).to(r.dtype)) and value.dtype == r.dtype
        with pytest.raises(RuntimeError, match="out of order"):
            reader.take("w", None)
    assert not readers()


def test_a_failed_read_is_raised_at_its_chunk_and_the_thread_stops():
    reads = [ChunkRead("w", (0, 5), torch.float32), ChunkRead("w", (5, 10), torch.float32)]
    with pytest.raises(OtaMergeError, match=r"\(5, 10\): bad"):
        with ReadAhead([Source(0, bad=("w", (5, 10)))], reads, torch.device("cpu")) as reader:
            reader.take("w", (0, 5))  # fine: the bad chunk is only being read ahead
            reader.take("w", (5, 10))
    assert not readers()
