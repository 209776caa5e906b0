"""The words a process group's ranks agree on when a step diverges (``ebmlab._ranks.Peers.failure``), checked
on flag tables built by hand: each culprit rank is named, and a rank among the culprits gives its own words."""

from __future__ import annotations

import math

import torch

from ebmlab._ranks import FLAGS, Peers


def table(world: int, **set_flags: list[int]) -> Peers:
    flags = torch.zeros((world, len(FLAGS)), dtype=torch.float64)
    for name, ranks in set_flags.items():
        flags[ranks, FLAGS.index(name)] = 1.0
    return Peers(flags)


def test_a_culprit_rank_gives_its_own_words_and_the_others_name_it():
    ok = torch.tensor(1.0)
    # without a process group this process is rank 0
    assert table(2, loss=[0]).failure(None, lambda: "loss is nan", ok, 1e5) == ("loss is nan (on rank 0)", False)
    assert table(2, loss=[1]).failure(None, lambda: "loss is nan", ok, 1e5) == (
        "the loss is not finite (on rank 1)", False)
    assert table(3, chains=[0, 2]).failure(("planted", True), None, ok, 1e5) == ("planted (on rank 0, 2)", True)
    assert table(2, chains=[1]).failure(None, None, ok, 1e5) == ("the chains diverged (on rank 1)", True)
    # the chains' failure is reported before the loss's
    assert table(2, chains=[1], loss=[0]).failure(None, lambda: "loss is nan", ok, 1e5)[1] is True


def test_the_energies_magnitude_and_the_gradient_norm():
    ok = torch.tensor(1.0)
    assert table(2, magnitude=[0]).failure(None, lambda: "energy magnitude 2e+05", ok, 1e5) == (
        "energy magnitude 2e+05 (on rank 0)", False)
    assert table(2, magnitude=[1]).failure(None, lambda: "mine", ok, 1e5) == (
        "the energies' magnitude is above max_energy=100000 (on rank 1)", False)
    assert table(2, magnitude=[0]).failure(None, None, ok, 10.0) == (
        "the energies' magnitude is above max_energy=10 (on rank 0)", False)
    assert table(2).failure(None, None, torch.tensor(math.inf), 1e5) == ("parameter gradient norm is inf", False)
    assert table(2).failure(None, lambda: "unused", ok, 1e5) is None


def test_stop_flags():
    peers = table(2, time_up=[1])
    assert peers.time_up and not peers.checkpoint_due and peers.stopped_by is None
    flags = torch.zeros((2, len(FLAGS)), dtype=torch.float64)
    flags[1, FLAGS.index("signal")] = 15.0
    assert Peers(flags).stopped_by == "SIGTERM"
