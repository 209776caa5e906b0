"""Shared pieces of every sampler: State/Info types, the Metropolis-Hastings
accept, and the one sampling loop :func:`sample`.

A sampler is a frozen dataclass of hyper-parameters with

* ``init(energy, x) -> State`` -- evaluates what the sampler caches at ``x``;
* ``step(energy, state, *, generator) -> (State, Info)`` -- one transition for
  every chain at once (chains are the batch dimension).

Gradient-based samplers split ``step`` into ``draw(state, generator)`` (all the
random numbers of one step) and a deterministic ``transition(energy, state,
*draws)``. ``step`` is just the two in a row; the split lets :func:`sample`
compile the transition into one graph (a ``torch.Generator`` cannot enter a
compiled graph) while drawing from the caller's generator exactly as eager
code does, so compiled and eager runs give the same chains.

Nothing in a sampler loops over steps, logs, or seeds: that is :func:`sample`'s
job (or a training loop's, or the playground's).
"""

from __future__ import annotations

from collections import OrderedDict

import math
import time
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from .state import DivergenceError, Info, State
from .trace_io import Trace

from ..devices import random_on

__all__ = [
    "DivergenceError",
    "Info",
    "Sampler",
    "State",
    "Trace",
    "all_accepted",
    "broadcast_chains",
    "mh_accept",
    "normal_like",
    "random_on",
    "uniform_log",
    "sample",
]


class Sampler(Protocol):
    """What :func:`sample` needs of a sampler: a frozen dataclass of hyper-parameters with ``init`` and ``step``.

    The gradient samplers also split ``step`` into ``draw`` (every random number of the step) and a
    deterministic ``transition``, which ``sample(..., compile=True)`` compiles.
    """

    def init(self, energy: Any, x: Tensor) -> State:
        """The state at ``x``: energy (and score, for gradient samplers) evaluated once and cached.

        Args:
            energy: the energy, a callable ``x -> (chains,)``.
            x: the chains' starting points, shape ``(chains, *event)``.
        """
        ...

    def step(self, energy: Any, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        """One transition of every chain.

        Args:
            energy: the energy, a callable ``x -> (chains,)``.
            state: from :meth:`init` or a previous step.
            generator: the source of all randomness; ``None`` is torch's global generator.

        Returns:
            ``(new_state, info)``.
        """
        ...


def broadcast_chains(v: Tensor, like: Tensor) -> Tensor:
    """View a per-chain ``(chains,)`` tensor so it broadcasts against ``(chains, *event)``.

    Works for vectors and images alike (no ``[:, None, None, None]``).
    """
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def mh_accept(log_alpha: Tensor, current: State, proposed: State, log_u: Tensor) -> tuple[State, Tensor, Tensor]:
    """Metropolis-Hastings accept/reject, per chain.

    Accept with probability ``min(1, exp(log_alpha))`` (Metropolis et al. 1953;
    Hastings 1970). A proposal whose ``log_alpha`` is NaN or -inf (the energy
    is NaN or +inf there) is rejected: it has zero density under the target;
    its reported log acceptance is then NaN or -inf.

    Args:
        log_alpha: log acceptance ratio, shape ``(chains,)``.
        current: the current state.
        proposed: the proposed state (same fields set as ``current``).
        log_u: ``log U``, ``U ~ Uniform(0, 1)`` per chain, drawn by the
            caller (see :func:`uniform_log`), so the accept is deterministic
            given its inputs and compiles into one graph.

    Returns:
        ``(new_state, accepted, log_acceptance)`` with ``log_acceptance =
        min(0, log_alpha)`` (see :attr:`Info.acceptance_prob`).
    """
    accepted = log_u < log_alpha  # False for NaN log_alpha: a NaN proposal is rejected
    mask = broadcast_chains(accepted, current.x)
    new = State(
        x=torch.where(mask, proposed.x, current.x),
        energy=torch.where(accepted, proposed.energy, current.energy),
        score=None if current.score is None else torch.where(mask, proposed.score, current.score),
    )
    return new, accepted, log_alpha.clamp(max=0.0)


_ALL_ACCEPTED: dict[tuple[int, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def all_accepted(energy: Tensor) -> tuple[Tensor, Tensor]:
    """``(accepted, log_acceptance)`` of a step without an accept test: all ``True`` and all 0, per chain.

    The same two tensors every step (one cached pair per shape, device and
    dtype, at most 64 kept): allocating and filling them per step costs as much
    as a cheap step's arithmetic. Treat them as read-only.
    """
    if torch.compiler.is_compiling():  # inside a graph: two constants, fused away
        return torch.ones_like(energy, dtype=torch.bool), torch.zeros_like(energy)
    key = (energy.shape[0], energy.device, energy.dtype)
    pair = _ALL_ACCEPTED.get(key)
    if pair is None:
        if len(_ALL_ACCEPTED) >= 64:
            _ALL_ACCEPTED.clear()
        pair = _ALL_ACCEPTED[key] = (torch.ones(key[0], dtype=torch.bool, device=key[1]),
                                     torch.zeros(key[0], dtype=key[2], device=key[1]))
    return pair


def normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x`` (see :func:`random_on` for the generator's device)."""
    return random_on(torch.randn, x.shape, generator, x.device, x.dtype)


_STACKED_NORMALS_OK: dict[tuple, bool] = {}


def normal_steps(x: Tensor, generator: torch.Generator | None, steps: int) -> Tensor:
    """``steps`` draws of :func:`normal_like`, stacked (shape ``(steps, *x.shape)``): the numbers ``steps``
    calls of ``normal_like(x, generator)`` would give, in the same order.

    One ``torch.randn`` of the stacked shape when that gives the same numbers, else one draw per step. torch's
    CPU generator fills normals 16 at a time and redraws the last 16 of a draw whose size is not a multiple of
    16, so one draw of ``steps * n`` numbers equals ``steps`` draws of ``n`` when ``n`` is a multiple of 16;
    rather than rely on that, the first call per (size, dtype, device, steps) compares the two on a copy of the
    generator's state and the answer is kept. Measured at 1,000 chains in 2-D, 8 steps: 58 us against 78 us
    for eight draws and a stack.
    """
    gen = generator if generator is not None else (torch.default_generator if x.device.type == "cpu" else None)
    if gen is not None and gen.device == x.device:
        key = (x.numel(), steps, x.dtype, x.device)
        ok = _STACKED_NORMALS_OK.get(key)
        if ok is None:
            saved = gen.get_state()
            one_by_one = torch.stack([normal_like(x, gen) for _ in range(steps)])
            gen.set_state(saved)
            stacked = torch.randn((steps, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
            gen.set_state(saved)
            if len(_STACKED_NORMALS_OK) >= 64:
                _STACKED_NORMALS_OK.clear()
            ok = _STACKED_NORMALS_OK[key] = torch.equal(one_by_one, stacked)
        if ok:
            return torch.randn((steps, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
    return torch.stack([normal_like(x, generator) for _ in range(steps)])


def uniform_log(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``log U`` per chain (one per row of ``x``), for :func:`mh_accept`."""
    return random_on(torch.rand, (x.shape[0],), generator, x.device, x.dtype).log()


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value > 2**63 - 1:  # torch's sizes are 64-bit; a longer loop would never end anyway
        raise ValueError(f"{name} must be an integer <= {2**63 - 1}, got {value!r}")


def check_finite_state(state: State, step: int, *, since: int | None = None) -> None:
    """Raise :class:`DivergenceError` if any chain's energy is not finite.

    ``since``: the previous step checked, when checks are spaced out; the
    message then names the window in which the chain diverged.
    """
    # One reduction and one sync: a sum is non-finite iff some term is (or the
    # energies are ~1e38, which is divergence too). ``math.isfinite`` of the Python float: 5 us against 16-30 us
    # for ``bool(torch.isfinite(...))`` at 1,000 chains (a check is due about once per compiled block).
    if math.isfinite(state.energy.sum().item()):
        return
    bad = ~torch.isfinite(state.energy)
    n = int(bad.sum()) or bad.numel()
    when = f"at step {step}" if since is None or since >= step - 1 else f"at step {step} (between steps {since + 1} and {step})"
    raise DivergenceError(
        f"{n} of {bad.numel()} chains diverged (non-finite energy) {when}; reduce the step size or check the energy"
    )


#: Compiled transitions, least recently used first; at most ``COMPILED_CACHE_SIZE`` (sampler, energy) pairs are
#: kept, so a process that compiles many energies (a sweep, a notebook re-run) does not hold every one alive.
_COMPILED: OrderedDict[tuple[Any, int, int, bool], tuple[Any, Callable]] = OrderedDict()
COMPILED_CACHE_SIZE = 16


def compiled_transition(sampler: Any, energy: Any, steps: int = 1, collect: bool = True) -> Callable:
    """``sampler.transition`` bound to ``energy`` and compiled with ``torch.compile``.

    With ``steps > 1`` the compiled function runs that many transitions in one graph (see
    :func:`uncompiled_transition`), so the fixed cost of a compiled call is paid once per block.

    Cached per (sampler, energy, steps, collect), for the :data:`COMPILED_CACHE_SIZE` most recently used
    (an evicted one recompiles when used again); ``torch.compile`` itself specialises on
    shape, dtype and device. Inductor's own CPU random numbers are never used
    (the draws happen outside the graph), so compiled chains equal eager ones
    up to floating-point reassociation.
    """
    if not hasattr(sampler, "transition"):
        raise ValueError(f"{type(sampler).__name__} has no deterministic transition to compile; use compile=False")
    key = (sampler, id(energy), steps, collect)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is energy:
        _COMPILED.move_to_end(key)
        return hit[1]
    # Every (sampler, energy) pair compiles the same closure code object; lift
    # dynamo's per-code recompile limit (8 by default) so the ninth pair in a
    # process still compiles instead of silently running eagerly.
    import torch._dynamo

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 256))
    fn = torch.compile(uncompiled_transition(sampler, energy, steps, collect), dynamic=False)
    _COMPILED[key] = (energy, fn)
    _COMPILED.move_to_end(key)
    while len(_COMPILED) > COMPILED_CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return fn


def uncompiled_transition(sampler: Any, energy: Any, steps: int = 1, collect: bool = True) -> Callable:
    """What :func:`compiled_transition` compiles: ``(state, *draws) -> (state, info)`` for one step, or for
    ``steps > 1``, ``(state, *draws) -> (state, xs, energies, accepted)``, where each of ``draws`` stacks one of
    :meth:`draw`'s random numbers for the ``steps`` steps (leading dimension ``steps``, see :func:`block_draws`), and
    the ``steps`` states' points and energies come back (``None`` unless ``collect``; stacked inside
    ``torch.compile``, as lists of the steps' tensors when run eagerly) with their acceptance flags, stacked
    (``None`` for a sampler that accepts every move, ``always_accepts``).
    """
    if steps == 1:
        def transition(state: State, *draws: Tensor) -> tuple[State, Info]:
            return sampler.transition(energy, state, *draws)

        return transition

    # A sampler without an accept test returns no flags: stacking ``steps`` all-True tensors measured 60 us of a
    # 150-us 8-step ULA block at 1,000 chains (it also changes how inductor fuses the block).
    flags = not getattr(sampler, "always_accepts", False)

    def block(state: State, *draws: Tensor) -> tuple[State, Tensor | None, Tensor | None, Tensor | None]:
        return run(state, _per_step(draws))

    def run(state: State, per_step: Any, sink: list | None = None
            ) -> tuple[State, Tensor | None, Tensor | None, Tensor | None]:
        """The block on each step's draws, apart (an iterable of ``steps`` tuples). Eagerly, ``sink`` (one
        ``(x_out, energy_out)`` or ``None`` per step) takes each kept step's point and energy as soon as it is
        computed, while still in the cache, and nothing is returned for them."""
        xs, es, accs = [], [], []
        per_step = iter(per_step)
        for i in range(steps):
            state, info = sampler.transition(energy, state, *next(per_step))
            if flags:
                accs.append(info.accepted)
            if sink is not None:
                if sink[i] is not None:
                    sink[i][0].copy_(state.x)
                    sink[i][1].copy_(state.energy)
            elif collect:
                xs.append(state.x)
                es.append(state.energy)
        if collect and torch.compiler.is_compiling():  # a graph's outputs: one tensor per kind
            return state, torch.stack(xs), torch.stack(es), torch.stack(accs) if flags else None
        # Eagerly the lists: the loop stacks the kept steps straight into the trace (one write, not two).
        kept = collect and sink is None
        return state, xs if kept else None, es if kept else None, torch.stack(accs) if flags else None

    block.per_step = run  # type: ignore[attr-defined]  # eager blocks: the steps' draws apart, and a sink
    return block


def _per_step(draws: tuple[Tensor, ...]) -> Any:
    """A block's stacked draws as one tuple per step: one ``unbind`` per kind, not a select per step and kind."""
    return zip(*(d.unbind(0) for d in draws))


def sample(
    energy: Any,
    sampler: Sampler,
    x0: Tensor,
    num_steps: int,
    *,
    generator: torch.Generator | None = None,
    burn_in: int = 0,
    thin: int = 1,
    callback: Callable[[int, State, Info], None] | None = None,
    compile: bool | str = "auto",
    check_every: int = 10,
    keep: str = "all",
    max_kept: int = 1000,
) -> Trace:
    """Run ``num_steps`` transitions of ``sampler`` on every chain and keep the draws.

    Args:
        energy: callable ``x -> (chains,)`` (for annealed Langevin: a
            noise-conditional score ``score_fn(x, sigma)``).
        sampler: any sampler (``init``/``step``).
        x0: initial points, one chain per row, shape ``(chains, *event)``.
        num_steps: total transitions, burn-in included.
        generator: source of all randomness.
        burn_in: transitions discarded before keeping draws.
        thin: keep every ``thin``-th draw after burn-in.
        callback: called as ``callback(step, state, info)`` after each step.
        compile: ``"auto"`` (the default) decides for you, by measurement:
            the run starts eagerly; when the first steps' time predicts that
            the rest of the run would take longer than
            :data:`AUTO_COMPILE_SECONDS` (compilation costs a few seconds,
            once per process), it switches to the compiled ``transition``, and
            back to eager if the compiled steps turn out no faster (or
            compilation fails: a warning says so). The verdict is kept for the
            (sampler, energy, shape, dtype, device), so a later run of the same
            pair starts compiled (the compile is paid once). ``True`` compiles
            from the first step; ``False`` never compiles. Either way random
            numbers come from ``generator``, outside the graph, so compiled
            chains are the eager ones up to floating-point rounding
            (:attr:`Trace.compiled_from` says from which step a run was
            compiled; ``False`` gives bit-for-bit repeatable eager runs).
            ``"auto"`` compiles only samplers whose ``auto_compile`` is true
            (ULA, MALA, HMC, random-walk MH); NUTS, parallel tempering,
            rejection and annealed Langevin run eagerly.
        check_every: test the chains' energies for NaN/inf every this many
            steps (each test syncs; the message names the window).
        keep: ``"all"`` keeps every ``thin``-th draw after burn-in;
            ``"last"`` keeps only the final state (``kept = 1``), the inner
            loop of training, where storing draws would only cost memory;
            ``"stats"`` runs in memory that does not grow with ``num_steps``:
            running mean / variance / covariance of every draw (``Trace.moments``)
            and a reservoir of at most ``max_kept`` evenly spaced draws for ESS and
            R-hat (when it fills, every other draw is dropped and the spacing doubles,
            so the kept draws stay a thinned chain).
            ``acceptance_rate`` covers the steps after burn-in either way.
        max_kept: ``keep="stats"`` only: the reservoir's capacity in draws (even, >= 2).

    Returns:
        A :class:`Trace` with ``(kept, chains, *event)`` samples, where
        ``kept = ceil((num_steps - burn_in) / thin)`` (``1`` for ``keep="last"``).

    Raises:
        DivergenceError: when a chain's energy becomes non-finite; the message
            names the step.
        TypeError: for a sampler class instead of an instance, an ``x0`` that is
            not a tensor (a NumPy array: ``torch.as_tensor``), or an energy that
            cannot take ``x0``'s dtype or cannot be differentiated by a
            gradient sampler (the messages say what to change).
    """
    if isinstance(sampler, type):
        raise TypeError(f"sampler must be a sampler instance, e.g. {sampler.__name__}(step_size=0.1), got the "
                        f"class {sampler.__name__} itself")
    if not (callable(getattr(sampler, "init", None)) and callable(getattr(sampler, "step", None))):
        if callable(getattr(energy, "init", None)) and callable(getattr(energy, "step", None)):
            raise TypeError(f"the energy is a sampler ({type(energy).__name__}) and the sampler is not: the two "
                            "arguments look swapped; call sample(energy, sampler, x0, num_steps)")
        what = f"the string {sampler!r}: build one with ebmlab.samplers.build_sampler({sampler!r}, step_size)" \
            if isinstance(sampler, str) else type(sampler).__name__
        raise TypeError(f"sampler must have init(energy, x) and step(energy, state, *, generator) (e.g. "
                        f"ebmlab.MALA(0.5)), got {what}")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor of shape (chains, *event), got {type(x0).__name__}; convert "
                        "it with torch.as_tensor(x0, dtype=torch.float32)")
    if x0.dim() < 2 or x0.numel() == 0:
        raise ValueError(f"x0 must have shape (chains, *event) with at least one chain and one coordinate, got "
                         f"shape {tuple(x0.shape)}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}; convert it with "
                        "x0.to(torch.float32)")
    if not bool(torch.isfinite(x0).all()):  # else the first energy check would blame a divergence
        bad = int((~torch.isfinite(x0)).flatten(1).any(1).sum())
        raise ValueError(f"x0 must be finite: {bad} of {x0.shape[0]} chains start at NaN or inf")
    if not callable(energy):
        raise TypeError(f"energy must be a callable x -> (chains,), got {type(energy).__name__}")
    _check_int("num_steps", num_steps, 1)
    _check_int("burn_in", burn_in, 0)
    _check_int("thin", thin, 1)
    _check_int("check_every", check_every, 1)
    if burn_in >= num_steps:
        raise ValueError(f"burn_in must be smaller than num_steps, got burn_in={burn_in}, num_steps={num_steps}")
    if keep not in ("all", "last", "stats"):
        raise ValueError(f"keep must be 'all', 'last' or 'stats', got {keep!r}")
    if keep == "stats" and (isinstance(max_kept, bool) or not isinstance(max_kept, int) or max_kept < 2
                            or max_kept % 2):
        raise ValueError(f"max_kept must be an even integer >= 2, got {max_kept!r}")
    if not (compile is True or compile is False or (isinstance(compile, str) and compile == "auto")):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    start = time.perf_counter()
    state = sampler.init(energy, x0)
    check_finite_state(state, 0)

    def eager_step(state: State) -> tuple[State, Info]:
        return sampler.step(energy, state, generator=generator)

    auto = None
    # A short run is one block only when asked to compile: under "auto" a short run after a long one would
    # otherwise compile a new graph of its own length just to reuse the verdict.
    block = block_steps(sampler, state, keep, callback, num_steps if compile is True else None)
    collect = keep != "last"
    own = type(sampler).__module__.startswith("ebmlab.samplers.")  # its step() is transition(draw()), unchanged
    tail_step = eager_step  # the last steps of a run that no whole block covers
    # Eager steps run in blocks too (ebmlab's own samplers; bit for bit the chains of one step per call), and a
    # short run (training's negatives) is one eager block: nothing is compiled for its length.
    eager_block = block_steps(sampler, state, keep, callback, num_steps)
    eager = _eager_block_step(sampler, energy, generator, eager_block, collect) if eager_block > 1 and own \
        else eager_step
    if compile is True:
        step = _compiled_step(sampler, energy, generator, block, collect)
        if block > 1 and num_steps % block:
            tail_step = _compiled_step(sampler, energy, generator)
    elif compile == "auto" and _auto_compiles(sampler, state):
        auto = _AutoCompile(sampler, energy, generator, eager, state, num_steps, block, collect)
        step = auto.first_step()
    else:
        step = eager
    next_check = -1 if auto is None else auto.next_check

    keep_all = keep == "all"
    kept = -(-(num_steps - burn_in) // thin) if keep_all else 0
    samples = torch.empty((kept, *state.x.shape), dtype=state.x.dtype, device=state.x.device)
    energies = torch.empty((kept, state.x.shape[0]), dtype=state.energy.dtype, device=state.x.device)
    reservoir = _Reservoir(max_kept, state, thin) if keep == "stats" else None
    moments = _Moments(state.x) if keep == "stats" else None
    accepted = torch.zeros(state.x.shape[0], dtype=torch.int32, device=state.x.device)
    tree: dict[str, Tensor] = {}  # NUTS' per-chain counts, summed after burn-in
    # Steps run one per call: the draws and acceptance flags of the last few are written in one op each (a copy
    # per step costs as much as a cheap step's arithmetic); only ebmlab's own samplers, which never modify a
    # returned state in place, and at most _Pending.MAX_BYTES of pending draws (blocks write their own).
    pending = _Pending(samples, energies, accepted, state.x, deferred=own)
    # A sampler without an accept test (ULA): count its steps, not its all-True flags.
    no_flags = getattr(sampler, "always_accepts", False)
    checked = t = 0
    while t < num_steps:
        k = getattr(step, "steps", 1)  # a compiled block runs k steps per call
        if k > 1 and t + k > num_steps:  # the run's last few steps: one at a time (compile="auto": eagerly)
            step, k = tail_step, 1
        if k == 1:
            state, info = step(state)
            last = t
        else:
            if keep_all and getattr(step, "sinks", False):  # an eager block writes its kept steps itself
                state, xs, es, accs = step(state, pending.sink(t, k, burn_in, thin))
            else:
                state, xs, es, accs = step(state)
            last = t + k - 1
        if last >= next_check >= 0:  # compile="auto": time this mode, maybe switch (a few times per run at most)
            step, next_check = auto.update(last, step)
        if (last + 1) // check_every > t // check_every or last + 1 == num_steps:  # a check is due in this call
            check_finite_state(state, last + 1, since=checked)
            checked = last + 1
        if k > 1:
            if last >= burn_in:
                pending.add_block(t, k, xs, es, accs, burn_in, thin if keep_all else 0, reservoir, moments)
        elif t >= burn_in:
            if info.num_grad_evals is not None:
                for name in ("num_grad_evals", "divergent", "tree_depth"):
                    v = getattr(info, name)
                    if v is not None:
                        tree[name] = tree[name] + v if name in tree else v.to(torch.int64)
            flags = None if no_flags else info.accepted
            if keep_all and (t - burn_in) % thin == 0:
                pending.add(state, flags)
            else:
                pending.add(None, flags)
                if reservoir is not None:
                    reservoir.offer(t - burn_in, state)
                    moments.update(state.x)
        if callback is not None:
            callback(t, state, info)
        t = last + 1
    pending.close()
    if reservoir is not None:
        samples, energies = reservoir.x[: reservoir.k], reservoir.e[: reservoir.k]
    elif not keep_all:
        samples, energies = state.x.unsqueeze(0), state.energy.unsqueeze(0)
    seconds = time.perf_counter() - start
    return Trace(
        samples=samples,
        energies=energies,
        acceptance_rate=accepted.to(state.energy.dtype) / (num_steps - burn_in),
        final_state=state,
        num_steps=num_steps,
        seconds=seconds,
        burn_in=burn_in,
        num_grad_evals=tree.get("num_grad_evals"),
        divergences=tree.get("divergent"),
        mean_tree_depth=tree["tree_depth"].double() / (num_steps - burn_in) if "tree_depth" in tree else None,
        moments=None if moments is None else {**moments.result(state.x.shape[1:]), "thin": reservoir.stride},
        compiled_from=0 if compile is True else (None if auto is None else auto.compiled_from),
    )


#: ``compile="auto"`` compiles a run whose remaining eager steps are predicted to take longer than this many
#: seconds. Measured on one CPU core (a 1,000-chain MALA on a user's closure): the first compilation in a
#: process costs about 20 s from an empty inductor cache (a few seconds once the on-disk cache has it), and the
#: compiled steps ran 1.2x (an MLP) to 6x (a closure) faster; at 60 s a run that gains 1.5x breaks even on a
#: cold cache, and one that gains 4x takes about 35 s.
AUTO_COMPILE_SECONDS = 60.0


def _auto_compiles(sampler: Any, state: State) -> bool:
    """Whether ``compile="auto"`` may try compiling: a sampler that says so (ULA, MALA, HMC, random-walk MH:
    a deterministic ``transition`` and a cheap graph), on the CPU or CUDA, not already inside a compiled
    function."""
    return (getattr(sampler, "auto_compile", False) and state.x.device.type in ("cpu", "cuda")
            and not torch.compiler.is_compiling())


#: ``compile="auto"``'s verdicts, per (sampler, energy): for each (shape, dtype, device), whether the compiled
#: step was faster. Bounded like the compile cache; the energy is held to check that an ``id`` is not reused.
_VERDICTS: OrderedDict[tuple[Any, int], tuple[Any, dict[tuple, bool]]] = OrderedDict()


def _verdicts(sampler: Any, energy: Any) -> dict[tuple, bool]:
    key = (sampler, id(energy))
    hit = _VERDICTS.get(key)
    if hit is None or hit[0] is not energy:
        hit = _VERDICTS[key] = (energy, {})
    _VERDICTS.move_to_end(key)
    while len(_VERDICTS) > COMPILED_CACHE_SIZE:
        _VERDICTS.popitem(last=False)
    return hit[1]


#: A compiled call runs this many energy evaluations' worth of steps in one graph: 8 ULA or MALA steps (HMC of 2
#: to 5 leapfrogs: see ``MIN_BLOCK_STEPS``), one HMC step of 6 or more. Measured
#: on one CPU core, MALA on a user's closure, 1,000 chains, empty inductor cache: 1 / 4 / 8 / 16 steps per call
#: ran 7.4 / 10.2 / 11.1 / 13.6 M chain-steps/s and took 20 / 21 / 22 / 33 s to compile (first compilation in the
#: process); 8 buys most of the speed for 2 s.
COMPILED_BLOCK_EVALS = 8

#: ... except that a sampler of several evaluations a step (HMC) runs at least ``MIN_BLOCK_STEPS`` steps per call
#: while they take at most ``MAX_BLOCK_EVALS`` evaluations (8 HMC steps of 2 to 5 leapfrogs) and the state has at
#: most ``MIN_BLOCK_MAX_NUMEL`` numbers: one step per call left most of a cheap HMC step to the call's fixed cost.
#: Measured, HMC (L=5) on the banana, one core: at 1,000 chains 1 / 2 / 4 steps per call ran 5.2-6.9 / no faster
#: than 1 / 7.0-9.8 M chain-steps/s (4 steps: 1.33-1.48x 1 step, three alternated process pairs; compile 17.5 /
#: 18.8 / 21.9 s from an empty inductor cache); 8 steps took 0.83x the time per step of 4 (78.5 against 96.8 us,
#: 16 alternated rounds in one process, median of the paired ratios) and 27.9-30.7 s to compile from an empty
#: cache against 18.8-22.3 s for 4 (two fresh processes each). At 10,000 chains, where a step's work outweighs the
#: call's cost, 4 steps ran 0.90-0.97x one step (best of 5 and of 6, alternated), so large states keep one step
#: per call.
MIN_BLOCK_STEPS = 8
MAX_BLOCK_EVALS = 40
MIN_BLOCK_MAX_NUMEL = 8192

#: ... and at most this many bytes of stacked draws per block.
_BLOCK_BYTES = 1 << 24


def block_steps(sampler: Any, state: State, keep: str, callback: Any, num_steps: int | None = None) -> int:
    """Steps per compiled call for this run: 1 (one step per call) when a callback must see every step, for
    samplers that do not take part (``auto_compile``), or when a block would not fit in memory; a run of at
    most two blocks' steps (training's negatives) is one block, so it compiles one graph and runs it once."""
    if callback is not None or not getattr(sampler, "auto_compile", False):
        return 1
    evals = max(1, int(getattr(sampler, "num_leapfrog", 1)))
    steps = max(1, COMPILED_BLOCK_EVALS // evals)
    if steps < MIN_BLOCK_STEPS and MIN_BLOCK_STEPS * evals <= MAX_BLOCK_EVALS and state.x.numel() <= MIN_BLOCK_MAX_NUMEL:
        steps = MIN_BLOCK_STEPS
    if num_steps is not None and num_steps <= 2 * steps:
        steps = num_steps
    if keep != "last":
        steps = min(steps, max(1, _BLOCK_BYTES // max(1, state.x.numel() * state.x.element_size())))
    return steps


def _compiled(sampler: Any, energy: Any, steps: int = 1, collect: bool = True) -> Callable:
    import torch._inductor.config as inductor_config

    # Inductor's own CPU random numbers (a counter-based Philox) cost 12-13x torch.randn's per number
    # (benchmarks/normals.py); the draws happen outside the graph anyway; the fallback also covers a user's
    # energy that draws.
    inductor_config.fallback_random = True
    return compiled_transition(sampler, energy, steps, collect)


def block_draws(sampler: Any, state: State, generator: torch.Generator | None, steps: int) -> tuple[Tensor, ...]:
    """The random numbers of ``steps`` steps, in the order eager steps draw them (the draws depend only on the
    state's shape, dtype and device, so they can be taken before the block runs); for ``steps > 1`` each of
    :meth:`draw`'s outputs stacked over the steps (one graph input per kind, not per step).

    Args:
        sampler: a gradient sampler with ``draw`` (and, optionally, ``draw_steps``).
        state: the block's starting state (only its shape, dtype and device are read).
        generator: the caller's generator, drawn from as the eager steps would.
        steps: steps in the block.
    """
    if steps == 1:
        return sampler.draw(state, generator)
    if hasattr(sampler, "draw_steps"):  # the same numbers, stacked at less cost (one torch.randn for ULA)
        return sampler.draw_steps(state, generator, steps)
    return tuple(torch.stack(kind) for kind in zip(*(sampler.draw(state, generator) for _ in range(steps))))


def _compiled_step(sampler: Any, energy: Any, generator: torch.Generator | None, steps: int = 1,
                   collect: bool = True) -> Callable:
    return _block_step(_compiled(sampler, energy, steps, collect), sampler, generator, steps)


def _eager_block_step(sampler: Any, energy: Any, generator: torch.Generator | None, steps: int,
                      collect: bool) -> Callable:
    """``steps`` eager steps per call: the compiled block's function, uncompiled. The same transitions on the
    same draws in the same order as one step per call, so the chains are equal bit for bit; the sampling loop's
    bookkeeping and a ULA's draws (one ``torch.randn``) are paid once per block."""
    block = uncompiled_transition(sampler, energy, steps, collect)
    run = block.per_step
    if hasattr(sampler, "draw_steps"):  # one draw for the block's steps (ULA: one torch.randn) is cheaper
        def step(state: State, sink: list | None = None) -> tuple:
            return run(state, _per_step(block_draws(sampler, state, generator, steps)), sink)
    else:
        def step(state: State, sink: list | None = None) -> tuple:
            # each step's draws as the eager steps take them, not stacked per kind
            return run(state, [sampler.draw(state, generator) for _ in range(steps)], sink)

    step.steps = steps  # type: ignore[attr-defined]
    step.sinks = True  # type: ignore[attr-defined]  # writes the kept steps into the trace itself
    return step


def _block_step(transition: Callable, sampler: Any, generator: torch.Generator | None, steps: int) -> Callable:
    def step(state: State) -> tuple:
        return transition(state, *block_draws(sampler, state, generator, steps))

    step.steps = steps  # type: ignore[attr-defined]
    return step


class _AutoCompile:
    """``compile="auto"``: time eager steps, compile when the rest of the run is long, keep it if faster.

    The loop calls :meth:`update` after step ``next_check``; each call times the mode just run and
    returns the step function to use next and the next step to check at (-1: never again).
    """

    PROBE = 16  # steps timed per mode, at least
    MIN_PROBE_SECONDS = 0.02  # and at least this long (the number of steps doubles until it is)
    MIN_GAIN = 0.9  # the compiled step is kept if it takes at most this fraction of the eager step's time

    def __init__(self, sampler: Any, energy: Any, generator: torch.Generator | None, eager_step: Callable,
                 state: State, num_steps: int, steps: int, collect: bool) -> None:
        self.sampler, self.energy, self.generator, self.eager_step = sampler, energy, generator, eager_step
        self.num_steps, self.steps, self.collect = num_steps, steps, collect
        self.key = (tuple(state.x.shape), state.x.dtype, state.x.device)
        self.verdict = _verdicts(sampler, energy).get(self.key)
        self.compiled_from: int | None = None
        self.phase, self.next_check, self.t0, self.timed_from, self.eager_seconds = "start", 0, 0.0, 0, 0.0

    def first_step(self) -> Callable:
        if self.verdict:  # compiled before and found faster: compiled from the first step
            self.phase, self.compiled_from, self.next_check = "compiled", 0, -1
            return self._guarded()
        if self.verdict is False or self.num_steps <= 2 * self.PROBE + 2:
            self.next_check = -1
        return self.eager_step

    def update(self, t: int, step: Callable) -> tuple[Callable, int]:
        now = time.perf_counter()
        if self.phase == "start":  # step 0 paid for first-call allocations: time from here
            self.phase, self.t0, self.timed_from = "eager", now, t
            return step, t + self.PROBE
        if self.phase == "compiling":  # the step just run compiled the graph: time the next ones
            if self.compiled_from is None:  # compilation failed: eager from now on
                return self.eager_step, -1
            self.phase, self.t0, self.timed_from = "compiled", now, t
            return step, t + self.PROBE
        n = t - self.timed_from
        if now - self.t0 < self.MIN_PROBE_SECONDS:  # too short to time reliably: twice as many steps,
            return step, (t + n if t + n < self.num_steps - 1 else -1)  # unless the run ends first
        per_step = (now - self.t0) / n
        if self.phase == "eager":
            self.eager_seconds = per_step
            if per_step * (self.num_steps - t - 1) < AUTO_COMPILE_SECONDS:
                return step, -1
            self.phase, self.compiled_from = "compiling", t + 1
            return self._guarded(), t + 1
        faster = per_step <= self.MIN_GAIN * self.eager_seconds
        _verdicts(self.sampler, self.energy)[self.key] = faster
        return (step, -1) if faster else (self.eager_step, -1)

    def _guarded(self) -> Callable:
        """The compiled step, falling back to the eager transition (with a warning) when torch.compile fails."""
        sampler, energy, generator, outer, steps = self.sampler, self.energy, self.generator, self, self.steps
        transition = _compiled(sampler, energy, steps, self.collect)
        eager = uncompiled_transition(sampler, energy, steps, self.collect)
        broken = ran = False

        def step(state: State) -> tuple:
            nonlocal broken, ran
            draws = block_draws(sampler, state, generator, steps)
            if not broken:
                try:
                    out = transition(state, *draws)
                    ran = True
                    return out
                except Exception as err:  # noqa: BLE001 -- torch.compile's failures share no base class
                    import warnings

                    broken = True
                    first = str(err).splitlines()[0] if str(err) else ""
                    warnings.warn(f"compile='auto': torch.compile failed on {type(sampler).__name__}'s step with "
                                  f"this energy ({type(err).__name__}: {first}); running eagerly (pass "
                                  "compile=False to skip the attempt)", RuntimeWarning, stacklevel=3)
                    _verdicts(sampler, energy)[outer.key] = False
                    if not ran:  # no step ran compiled
                        outer.compiled_from = None
            return eager(state, *draws)  # the same draws: the chains do not notice

        step.steps = steps  # type: ignore[attr-defined]
        return step


class _Pending:
    """Draws, energies and acceptance flags of recent steps, written into the trace's tensors in one op each."""

    #: Pending steps' points and energies, at most: while they are still in the cache, one stack of them is
    #: cheaper than a copy per step; past it, the stack reads them back from memory. Measured (banana ULA,
    #: eager, one core), ebmlab's time per step against a hand-written loop's: 1,000 chains 1.14x with 8 or
    #: 32 steps per write, 1.27x with one; 10,000 chains 1.13-1.16x with one, 1.20-1.24x with 3 to 6,
    #: 1.33x with 32 (the cap was 16 MB then).
    MAX_BYTES = 1 << 17

    def __init__(self, samples: Tensor, energies: Tensor, accepted: Tensor, x: Tensor, *, deferred: bool) -> None:
        self.samples, self.energies, self.accepted = samples, energies, accepted
        per_step = x.numel() * x.element_size() + x.shape[0] * energies.element_size()
        self.cap = max(1, min(32, self.MAX_BYTES // max(per_step, 1))) if deferred else 1
        self.k = 0
        self.accepted_steps = 0  # steps without flags (every chain accepted), added by close()
        self.x: list[Tensor] = []
        self.e: list[Tensor] = []
        self.acc: list[Tensor] = []

    def add(self, state: State | None, accepted: Tensor | None) -> None:
        """One step: its state to keep (``None``: not kept) and acceptance flags (``None``: every chain moved)."""
        if state is not None:
            self.x.append(state.x)
            self.e.append(state.energy)
        if accepted is None:
            self.accepted_steps += 1
        else:
            self.acc.append(accepted)
        if len(self.x) >= self.cap or len(self.acc) >= self.cap:
            self.flush()

    def add_block(self, t: int, k: int, xs: Tensor | list[Tensor] | None, es: Tensor | list[Tensor] | None,
                  accepted: Tensor | None, burn_in: int, thin: int, reservoir: _Reservoir | None,
                  moments: _Moments | None) -> None:
        """Steps ``t .. t + k - 1`` of a block: their acceptance flags after burn-in (``None``: all accepted), the
        draws ``thin`` keeps (``thin`` 0: none), or the reservoir's and running moments' share. ``xs`` and ``es``
        are stacked (a compiled block) or lists of the steps' tensors (an eager one)."""
        self.flush()  # earlier steps first: the trace's draws stay in step order
        i0 = max(0, burn_in - t)
        if accepted is None:
            self.accepted_steps += k - i0
        else:
            self.accepted += accepted[i0:].sum(0, dtype=torch.int32)
        if thin:
            kept = _kept(t, k, burn_in, thin)
            if kept:
                sel, m = slice(kept.start, k, thin), len(kept)
                if xs is None:  # written by the block (sink)
                    pass
                elif isinstance(xs, list):
                    torch.stack(xs[sel], out=self.samples[self.k: self.k + m])
                    torch.stack(es[sel], out=self.energies[self.k: self.k + m])
                else:
                    self.samples[self.k: self.k + m] = xs[sel]
                    self.energies[self.k: self.k + m] = es[sel]
                self.k += m
        elif reservoir is not None:
            for i in range(i0, k):
                reservoir.offer(t + i - burn_in, State(x=xs[i], energy=es[i]))
            moments.update((torch.stack(xs[i0:]) if isinstance(xs, list) else xs[i0:]).flatten(0, 1))

    def sink(self, t: int, k: int, burn_in: int, thin: int) -> list:
        """Where steps ``t .. t + k - 1`` go in the trace: ``(samples row, energies row)`` per kept step, ``None``
        for the others. :meth:`add_block` then counts them as written (it gets no ``xs``)."""
        self.flush()  # earlier steps first: the trace's draws stay in step order
        dest: list = [None] * k
        kept = _kept(t, k, burn_in, thin)
        if kept:  # the kept steps fill the next trace rows in order
            rows = zip(self.samples[self.k: self.k + len(kept)].unbind(0),
                       self.energies[self.k: self.k + len(kept)].unbind(0))
            for i, row in zip(kept, rows):
                dest[i] = row
        return dest

    def flush(self) -> None:
        if self.x:
            m = len(self.x)
            if m == 1:
                self.samples[self.k].copy_(self.x[0])
                self.energies[self.k].copy_(self.e[0])
            else:
                torch.stack(self.x, out=self.samples[self.k: self.k + m])
                torch.stack(self.e, out=self.energies[self.k: self.k + m])
            self.k += m
            self.x.clear()
            self.e.clear()
        if self.acc:
            if len(self.acc) == 1:
                self.accepted += self.acc[0]
            else:
                self.accepted += torch.stack(self.acc).sum(0, dtype=torch.int32)
            self.acc.clear()

    def close(self) -> None:
        """Write everything pending, at the end of the run."""
        self.flush()
        if self.accepted_steps:
            self.accepted += self.accepted_steps
            self.accepted_steps = 0


def _kept(t: int, k: int, burn_in: int, thin: int) -> range:
    """The positions in a block of steps ``t .. t + k - 1`` of the steps a trace keeps (after ``burn_in``, every
    ``thin``-th)."""
    first = max(t, burn_in)
    first += -(first - burn_in) % thin  # the first kept step in the block, if any
    return range(first - t, k, thin)


class _Reservoir:
    """At most ``cap`` evenly spaced draws: when full, every other one is dropped and the spacing doubles."""

    def __init__(self, cap: int, state: State, thin: int) -> None:
        self.cap, self.stride, self.k = cap, thin, 0
        self.x = torch.empty((cap, *state.x.shape), dtype=state.x.dtype, device=state.x.device)
        self.e = torch.empty((cap, state.x.shape[0]), dtype=state.energy.dtype, device=state.x.device)

    def offer(self, i: int, state: State) -> None:
        """Draw ``i`` (0-based, after burn-in); kept if ``i`` is a multiple of the current spacing."""
        if i % self.stride:
            return
        if self.k == self.cap:  # kept draws j * stride with j even are the multiples of the doubled stride
            self.x[: self.cap // 2] = self.x[0::2].clone()
            self.e[: self.cap // 2] = self.e[0::2].clone()
            self.k, self.stride = self.cap // 2, 2 * self.stride
            if i % self.stride:
                return
        self.x[self.k] = state.x
        self.e[self.k] = state.energy
        self.k += 1


class _Moments:
    """Running mean and (co)variance over draws and chains, merged one step at a time (Chan et al. 1979)."""

    MAX_COV = 64  # coordinates up to which the full covariance is kept

    def __init__(self, x: Tensor) -> None:
        dim = x[0].numel()
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=x.device)
        self.full = dim <= self.MAX_COV
        self.m2 = torch.zeros((dim, dim) if self.full else dim, dtype=torch.float64, device=x.device)

    def update(self, x: Tensor) -> None:
        b = x.reshape(x.shape[0], -1).to(torch.float64)
        nb = b.shape[0]
        mb = b.mean(0)
        c = b - mb
        m2b = c.T @ c if self.full else (c * c).sum(0)
        delta = mb - self.mean
        n = self.n + nb
        corr = torch.outer(delta, delta) if self.full else delta * delta
        self.m2 += m2b + corr * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    def result(self, event: torch.Size) -> dict[str, Any]:
        cov = self.m2 / max(self.n - 1, 1)
        var = cov.diagonal() if self.full else cov
        return {"mean": self.mean.reshape(event), "var": var.reshape(event), "cov": cov if self.full else None,
                "count": self.n}
