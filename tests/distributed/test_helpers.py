"""The process-group helpers outside a process group: one process of world size 1, rank 0, the
one-process random stream."""

from __future__ import annotations

import pytest
import torch

from ebmlab import distributed


def test_shards_cover_every_item_once_in_rank_order():
    for n in (1, 7, 8, 400, 401):
        for world in (1, 2, 3, 5):
            parts = [range(n)[distributed.shard(n, r, world)] for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rank_zero_draws_the_one_process_stream_and_the_others_their_own():
    assert distributed.derive_seed(5) == distributed.derive_seed(5, 0) == distributed.derive_seed(5, 0, 0) == 5
    assert torch.equal(distributed.generator(5, rank_=0).get_state(), torch.Generator().manual_seed(5).get_state())
    seeds = {distributed.derive_seed(s, r, t) for s in (0, 1) for r in range(4) for t in (0, 10)}
    assert len(seeds) == 16  # neighbouring seeds, ranks and steps give distinct streams
    assert distributed.derive_seed(0, 1) == distributed.derive_seed(0, 1)  # and the same ones every time


def test_outside_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.all_mean(x) is x and torch.equal(distributed.gather_cat(x), x)
    assert distributed.run_on_main(lambda: 3) == 3 and distributed.broadcast_json({"a": 1}) == {"a": 1}
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: no group, the same numbers
    assert distributed.init_from_env() is False
    monkeypatch.setenv("EBMLAB_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="EBMLAB_DIST_TIMEOUT"):
        distributed.init_from_env()
    with pytest.raises(ValueError, match="positive number of seconds"):
        distributed.init_from_env(timeout=-1)
