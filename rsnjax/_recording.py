"""Recording a circuit's neurons inside `rsnjax.sample` (the ``record_*`` and ``private_noise``
arguments).

What is recorded: every ``record_every`` steps after burn-in, the state of the chosen neurons
(r for a `ReservoirSampler`'s N reservoir units, x for a `SamplerOnly` circuit's d units) in the
chosen chains, and on request their rates: φ(W_rec r + I) = φ(W_in x + I) for a reservoir (through
the rank-d factors, W_rec is never formed), φ(W x + b) for SO-FR, φ(x) for SO-SC. A conditional
circuit driven by ``inputs`` (`rsnjax._driven`) is recorded the same way; its rates add the input
current of the input in force at the record (W_cond c_t, C c_t for SO-FR), read from the driven
loop's state (`_Driven.loop_input`).

Memory. `sample` simulates chains in G blocks of equal size (over all devices). The recorded
chains are placed in the first slots of the blocks, M = ⌈R / G⌉ per block (chain j of
``record_chains`` in block ⌊j / M⌋, slot j mod M; chains are independent, so where a chain is
simulated does not change its law, and its noise is a function of its index only), and each
block's scan carries out only its first M slots of the chosen neurons. The recording therefore stores

    G · M · num_records · K · itemsize  ≤  (R + G − 1) · num_records · K · itemsize

bytes (R recorded chains, K recorded neurons, K doubled with ``record_rates``), never the full
(num_chains, N) state trajectory; `recording_bytes` computes the bound. The blocks' records are
stacked as ``(G, M, num_records, K)`` and the recorded chains picked out inside the compiled
program by a reshape (no copy) and a cut at R (a copy unless R = G·M), so the process's peak
memory grows by about 1.3–1.6 times the stored bytes plus some tens of MB for the compiled program:
`benchmarks/recording_memory.py` measures it (e.g. +135 MiB for a 98 MiB recording, against
781 MiB for the full trajectory; it was 3.2–3.6 times when the chains were gathered on the host).

Private noise (``private_noise = s``, reservoirs only). The reservoir SDE gets a second noise
term in the null space of W_out = A:

    dr = drift dt + √(2/τ) [A⁺ dB  +  s (I − A⁺A) dB'],     B' an N-dimensional Brownian motion,

i.e. σ_r = √(2/τ)·[A⁺, s(I − A⁺A)]. Since A(I − A⁺A) = 0 the readout x = A r and therefore the
rates φ(W_in x + I) never see it: r = r₀ + p with p an Ornstein–Uhlenbeck process in the null
space, dp = −p/τ dt + s√(2/τ)(I − A⁺A) dB', stationary covariance s²(I − A⁺A) (each neuron's
variance s²(1 − (A⁺A)ᵢᵢ) ≈ s² for N ≫ d). The sampler carries p only for the recorded neurons of
the recorded chains, from its own random stream (chain c's N-dimensional noise at step t from the
key ``fold_in(key, PRIVATE_STREAM)``): the readout path is bit-identical with and without it, and
(I − A⁺A)ξ is applied as ξ − A⁺(Aξ), never as a dense N × N matrix.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validation import check_int, check_positive
from .conditional import ConditionalSamplerOnly
from .networks import SamplerOnly, get_activation
from .sde import CircuitSDE, OutputLangevin, ReservoirLangevin

__all__ = ["RecordingPlan", "plan_recording", "recording_bytes", "PRIVATE_STREAM", "RECORD_BYTES_LIMIT"]

#: The private noise's stream: chain c's private key is ``fold_in(fold_in(key, PRIVATE_STREAM), c)``.
PRIVATE_STREAM = 0x70726976  # "priv"

#: `sample` refuses a recording whose stored arrays would exceed this many bytes (change it here
#: to allow more); the full state of 10 000 chains × N = 1000 every step is tens of GB.
RECORD_BYTES_LIMIT = 4 * 2**30


def recording_bytes(num_records: int, num_recorded_chains: int, num_recorded_neurons: int, *,
                    num_blocks: int = 1, rates: bool = False, itemsize: int = 4) -> int:
    """The bytes a recording stores: G·M·num_records·K·itemsize with M = ⌈R/G⌉ (G blocks of
    chains, R recorded chains, K neurons, doubled with rates). See the module docstring."""
    slots = -(-num_recorded_chains // num_blocks)
    return num_blocks * slots * num_records * num_recorded_neurons * (2 if rates else 1) * itemsize


class _Recorder(eqx.Module):
    """What the recording loop needs besides the SDE (arrays: inputs of the compiled program)."""

    rate_w: Float[Array, "k dim"] | None  # rows of the rate's input weights for the recorded neurons
    rate_b: Float[Array, " k"] | None
    rate_c: Float[Array, "k cond_dim"] | None  # their input weights, for a circuit driven by inputs
    out_w: Float[Array, "dim hidden"] | None  # W_out, for the private noise's projection
    pinv_k: Float[Array, "k dim"] | None  # A⁺ rows of the recorded neurons
    private_root: Any
    neurons: tuple[int, ...] = eqx.field(static=True)
    num_recorded: int = eqx.field(static=True)  # R: it shapes the compiled program's output
    slots: int = eqx.field(static=True)
    every: int = eqx.field(static=True)
    rate_kind: str | None = eqx.field(static=True)  # "input" φ(x W.T + b), "state" φ(x), or None
    activation: str = eqx.field(static=True)
    private_scale: float | None = eqx.field(static=True)
    tau: float = eqx.field(static=True)


class RecordingSDE(CircuitSDE):
    """The sampler's stepper together with its `_Recorder` (one pytree, so that the compiled
    program takes the recorder's arrays as inputs and its settings as static parts)."""

    inner: CircuitSDE
    recorder: _Recorder

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def state_dim(self) -> int:
        return self.inner.state_dim


class RecordingPlan(NamedTuple):
    """The checked recording settings of one `sample` call (built by `plan_recording`)."""

    every: int
    neurons: np.ndarray  # (K,)
    chains: np.ndarray  # (R,)
    rates: bool
    private_noise: float | None
    kind: str  # "reservoir" or "sampler-only"
    model: Any  # the ReservoirSampler or SamplerOnly

    def wrap(self, stepper: CircuitSDE, key, num_blocks: int, dtype) -> RecordingSDE:
        """The stepper with its recorder, for G = `num_blocks` blocks of chains."""
        idx = self.neurons
        slots = -(-len(self.chains) // num_blocks)
        cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
        rate_w = rate_b = rate_c = out_w = pinv_k = None
        rate_kind = None
        if self.kind == "reservoir":
            res = self.model
            activation, tau = res.activation, res.tau
            if self.rates:
                rate_w, rate_b, rate_kind = res.W_in[idx], res.I[idx], "input"
                rate_c = None if res.W_cond is None else res.W_cond[idx]
            if self.private_noise is not None:
                from .reservoir import _pseudo_inverse_full_row_rank

                out_w = res.W_out
                pinv_k = _pseudo_inverse_full_row_rank(np.asarray(res.W_out), "W_out")[idx]
        else:
            so = self.model
            activation, tau = so.activation, 1.0
            if self.rates and so.dynamics == "firing_rate":
                rate_w, rate_b, rate_kind = so.W[idx], so.b[idx], "input"
                rate_c = None if getattr(so, "C", None) is None else so.C[idx]
            elif self.rates:
                rate_kind = "state"
        private_root = (jax.random.fold_in(key, PRIVATE_STREAM) if self.private_noise is not None
                        else None)
        recorder = _Recorder(cast(rate_w), cast(rate_b), cast(rate_c), cast(out_w), cast(pinv_k), private_root,
                             tuple(int(i) for i in idx), len(self.chains), slots, self.every, rate_kind, activation,
                             self.private_noise, float(tau))
        return RecordingSDE(stepper, recorder)

    def layout(self, padded: int, num_blocks: int) -> np.ndarray:
        """``order`` ``(padded,)``: the chain simulated at each position (positions block-major),
        with recorded chain j at block ⌊j/M⌋, slot j mod M (M = ⌈R/G⌉) and the others in their order."""
        block = padded // num_blocks
        slots = -(-len(self.chains) // num_blocks)
        order = np.full(padded, -1, np.int64)
        j = np.arange(len(self.chains))
        order[(j // slots) * block + j % slots] = self.chains
        rest = np.setdiff1d(np.arange(padded), self.chains, assume_unique=True)
        order[order < 0] = rest
        return order

    def gather(self, records, num_blocks: int):
        """``(activity, rates)``, each ``(R, num_records, K)`` (rates None unless asked), from
        the blocks' records, a tuple of one or two ``(G, M, num_records, K)`` (inside the
        compiled program: the result is then its output, with no copy on the host). Position
        (block g, slot m) holds recorded chain g·M + m, so the chains in order are the records
        with the block and slot axes flattened (no copy), cut at R."""
        r = len(self.chains)

        def pick(a):
            g, m, t, k = a.shape
            return a.reshape(g * m, t, k)[:r]

        activity = pick(records[0])
        return activity, (pick(records[1]) if self.rates else None)

    def gathering(self, runner, num_blocks: int):
        """``runner`` (see `rsnjax.sampling`) with its last output, the blocks' records, replaced
        by ``(activity, rates)`` (`gather`), for use inside the compiled program."""
        def run(*args):
            *outputs, records = runner(*args)
            return (*outputs, self.gather(records, num_blocks))

        return run


def _index_array(value, name: str, size: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001
        raise TypeError(f"`{name}` must be a 1-D array of integer indices, got {type(value).__name__}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0 and arr.ndim == 1:
        raise ValueError(f"`{name}` must name at least one {what}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise TypeError(f"`{name}` must be a 1-D array of integer indices, got dtype {arr.dtype} "
                        f"and shape {arr.shape}")
    bad = arr[(arr < 0) | (arr >= size)]
    if bad.size:
        raise ValueError(f"`{name}` must hold {what} indices in [0, {size}), got {bad[:5].tolist()}")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"`{name}` must not repeat an index")
    return arr.astype(np.int64)


def plan_recording(model, sde: CircuitSDE, *, record_every, record_neurons, record_chains, record_rates,
                   private_noise, num_chains: int, num_steps: int, save_every, backend: str,
                   return_state: bool, itemsize: int) -> RecordingPlan | None:
    """Check `sample`'s recording arguments; None when nothing is recorded."""
    if record_every is None:
        for name, value in [("record_neurons", record_neurons), ("record_chains", record_chains),
                            ("private_noise", private_noise)]:
            if value is not None:
                raise ValueError(f"`{name}` needs `record_every` (the neurons' activity is only "
                                 "returned when it is recorded)")
        if record_rates:
            raise ValueError("`record_rates` needs `record_every`")
        return None
    every = check_int(record_every, "record_every")
    if num_steps % every:
        raise ValueError(f"`record_every` ({every}) must divide `num_steps` ({num_steps})")
    if save_every is not None and save_every % every and every % save_every:
        raise ValueError(f"`record_every` ({every}) and `save_every` ({save_every}) must divide one another")
    if backend != "scan":
        raise ValueError("recording (`record_every`) needs backend='scan', got backend="
                         f"{backend!r}: the diffrax backend is a cross-check of the readout path (the "
                         "same SDE and noise, the same samples up to rounding); record the same run "
                         "with backend='scan'")
    if not isinstance(record_rates, bool):
        raise TypeError(f"`record_rates` must be a bool, got {record_rates!r}")
    from ._driven import _DrivenOutput, _DrivenReservoir  # a conditional circuit driven by `inputs`

    if isinstance(sde, ReservoirLangevin):
        kind, neural = "reservoir", sde.reservoir
    elif isinstance(sde, _DrivenReservoir):
        kind, neural = "reservoir", sde.neurons()
    elif isinstance(sde, OutputLangevin) and isinstance(sde.score_fn, SamplerOnly):
        kind, neural = "sampler-only", sde.score_fn
    elif isinstance(sde, _DrivenOutput) and isinstance(sde.model, ConditionalSamplerOnly):
        kind, neural = "sampler-only", sde.model
    else:
        inner = getattr(sde, "score_fn", getattr(sde, "model", model))
        raise TypeError(
            "recording (`record_every`) needs a circuit with neurons: a ReservoirSampler (its N "
            "reservoir units) or a SamplerOnly circuit (its d units); got "
            f"{type(inner).__name__}. Map a ScoreNetwork onto a circuit with "
            "ReservoirSampler.from_score_network.")
    size = neural.W_out.shape[1] if kind == "reservoir" else neural.dim
    neurons = np.arange(size) if record_neurons is None else _index_array(record_neurons, "record_neurons", size, "neuron")
    chains = np.arange(num_chains) if record_chains is None else _index_array(record_chains, "record_chains", num_chains, "chain")
    if private_noise is not None:
        if kind != "reservoir":
            raise ValueError("`private_noise` needs a ReservoirSampler: a sampler-only circuit's "
                             "neurons are its outputs, so it has no null space to put noise in")
        private_noise = check_positive(private_noise, "private_noise", allow_zero=True)
        if return_state:
            raise ValueError("`private_noise` is simulated for the recorded neurons and chains only; "
                             "`return_state=True` would return states without it")
    num_records = num_steps // every
    nbytes = recording_bytes(num_records, len(chains), len(neurons), rates=record_rates, itemsize=itemsize)
    if nbytes > RECORD_BYTES_LIMIT:
        raise ValueError(
            f"the recording would store {nbytes / 2**30:.1f} GiB ({len(chains)} chains × {num_records} "
            f"records × {len(neurons)} neurons{' × 2 (rates)' if record_rates else ''}), more than "
            f"rsnjax._recording.RECORD_BYTES_LIMIT = {RECORD_BYTES_LIMIT / 2**30:.0f} GiB: record fewer "
            "`record_chains` or `record_neurons`, or a larger `record_every`")
    return RecordingPlan(every, neurons, chains, record_rates, private_noise, kind, neural)


def simulate_block(sde: RecordingSDE, r0, ids, root, step_size, *, burn_in, num_steps, save_every,
                   unroll, dtype):
    """The scan backend's block simulation with recording: ``((state, bad), traj, x, records)``,
    records ``(num_records, M, K or 2K)`` of the block's first M chains. The readout path is the
    same computation as without recording (`rsnjax.sampling`'s ``em_block``); ``step_size`` is a
    scalar array (an input of the compiled program)."""
    from .sampling import chain_key_words, scan_steps, step_noise

    inner, rec = sde.inner, sde.recorder
    h = jnp.asarray(step_size, dtype)
    idx = np.asarray(rec.neurons)
    m = rec.slots
    keys = chain_key_words(root, ids)
    private = rec.private_scale is not None
    if private:
        pkeys = chain_key_words(rec.private_root, ids[:m])
        decay = 1.0 - h / rec.tau
        gain = jnp.sqrt(h) * (rec.private_scale * math.sqrt(2.0 / rec.tau))
        hidden = rec.out_w.shape[1]

    def private_step(p, t):
        xi = step_noise(pkeys, t, hidden, dtype)  # (M, N), the private stream
        projected = xi[:, idx] - (xi @ rec.out_w.T) @ rec.pinv_k.T  # ((I − A⁺A) ξ)[idx]
        return decay * p + gain * projected

    # the carry is (state, bad, p), p empty without private noise (then passed through unchanged)
    run = scan_steps(inner, keys, h, dtype, unroll, also=private_step if private else None)

    def record(carry):
        state, _, p = carry
        head = jax.tree_util.tree_map(lambda a: a[:m] if a.ndim else a, state)  # (a driven loop's step count)
        r = inner.state_from_loop(head)[:, idx]
        if private:
            r = r + p
        if rec.rate_kind is None:
            return (r,)
        phi = get_activation(rec.activation)
        x = inner.loop_readout(head)
        if rec.rate_kind == "input":
            current = x @ rec.rate_w.T + rec.rate_b
            if rec.rate_c is not None:  # driven by inputs: the input in force now
                current = current + inner.loop_input(head) @ rec.rate_c.T
            rates = phi(current)
        else:
            rates = phi(x[:, idx])
        return r, rates

    def readout(carry):
        return inner.loop_readout(carry[0])

    carry = (inner.loop_state(r0), jnp.full(r0.shape[:1], -1, jnp.int32),
             jnp.zeros((m, len(idx)) if private else (0,), dtype))
    if burn_in:
        carry = run(carry, 0, burn_in)
    every = rec.every
    if save_every is None or save_every == every:
        def segment(c, s):
            c = run(c, burn_in + s * every, every)
            return c, (record(c), readout(c) if save_every is not None else None)
        carry, (records, traj) = jax.lax.scan(segment, carry, jnp.arange(num_steps // every, dtype=jnp.uint32))
    else:
        outer, inner_len = max(save_every, every), min(save_every, every)
        records_inner = every < save_every  # records every inner segment, readouts every outer one

        def segment(c, s):
            def sub(c2, q):
                c2 = run(c2, burn_in + s * outer + q * inner_len, inner_len)
                return c2, (record(c2) if records_inner else readout(c2))
            c, many = jax.lax.scan(sub, c, jnp.arange(outer // inner_len, dtype=jnp.uint32))
            once = readout(c) if records_inner else record(c)
            return c, (many, once) if records_inner else (once, many)
        carry, (records, traj) = jax.lax.scan(segment, carry, jnp.arange(num_steps // outer, dtype=jnp.uint32))
        flat = lambda a: jax.tree_util.tree_map(lambda b: b.reshape((-1,) + b.shape[2:]), a)  # noqa: E731
        records = flat(records) if records_inner else records
        traj = traj if records_inner else flat(traj)
    if traj is None:
        traj = jnp.zeros((0,), dtype)
    records = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 1, 0), records)  # (M, num_records, K)
    return (inner.state_from_loop(carry[0]), carry[1]), traj, inner.loop_readout(carry[0]), records
