"""Hidden Markov models with neural transitions and emissions, solved by the chain DP.

A discrete latent chain ``z`` with ``C`` states generates observations ``x_t``; the model
follows the convention of Pyro's :class:`~pyro.distributions.DiscreteHMM` (so the two take
the same arguments and give the same log-likelihood)::

    z_{-1} ~ Categorical(initial_logits)
    z_t | z_{t-1} ~ Categorical(transition_logits[t, z_{t-1}])     t = 0 .. T-1
    x_t | z_t ~ observation_dist[t, z_t]

:class:`ChainHMM` is that distribution over the observation sequence (``event_shape =
(T, *obs_event)``); it folds the factors into the edges of a chain and hands them to the one
dynamic programme of :mod:`pyrocg.structured.chain`: the exact marginal likelihood (forward
algorithm, O(T C²)), posterior marginals (its gradient), the Viterbi path and exact posterior
samples (forward filtering, backward sampling). Unlike ``DiscreteHMM`` it takes ragged
``lengths``.

:class:`NeuralHMM` produces a :class:`ChainHMM` from pyrocg networks: an emission network
maps each step's input ``u_t`` to ``C`` observation distributions (an input-output HMM when
the inputs are data, e.g. images whose labels are the observations), and an optional
transition network maps ``u_t`` to ``C x C`` transition logits (else one learned, shared
matrix). The networks run under a mode handler (feed-forward by default), so the HMM is an
ordinary Pyro distribution inside any SVI model.

>>> import torch
>>> import pyro.distributions as dist
>>> _ = torch.manual_seed(0)
>>> init, trans = torch.randn(3), torch.randn(5, 3, 3)           # C = 3 states, T = 5
>>> obs = dist.Normal(torch.randn(5, 3), 1.0)                      # (T, C) emissions
>>> hmm = ChainHMM(init, trans, obs)
>>> x = torch.randn(5)
>>> bool(torch.allclose(hmm.log_prob(x), dist.DiscreteHMM(init, trans, obs).log_prob(x)))
True
>>> hmm.posterior_marginals(x).sum(-1)
tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.0000])
>>> hmm.viterbi(x)[1].shape, hmm.sample_posterior(x, 4).shape
(torch.Size([5]), torch.Size([4, 5]))
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution

from .. import handlers
from . import chain

__all__ = ["ChainHMM", "NeuralHMM", "EMISSIONS"]

#: Emission families of :class:`NeuralHMM`, by name.
EMISSIONS = ("categorical", "gaussian", "bernoulli")


def _check_logits(name: str, value: object, min_dim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape "
                         f"{tuple(value.shape)}")
    return value


class ChainHMM(TorchDistribution):
    """Discrete-state HMM over observation sequences, exact inference by the chain DP.

    :param initial_logits: ``(*batch, C)`` logits of the state ``z_{-1}`` before the first
        step (as in ``DiscreteHMM``; give ``transition_logits[..., 0, :, :]`` equal rows to
        make it the state of step 0 instead).
    :param transition_logits: ``(*batch, T, C, C)`` logits ``[old, new]`` of each step's
        transition (``T`` may be 1: time-homogeneous, or the matrix alone ``(C, C)``).
    :param observation_dist: a distribution with batch shape ``(*batch, T, C)`` (``T`` may
        be 1) and any event shape: the emission of each step given each state.
    :param lengths: optional ``(*batch,)`` integer number of valid steps in ``[1, T]``;
        observations past a sequence's end are ignored (not scored, zero marginals).
    :param validate_args: passed to :class:`~torch.distributions.Distribution`.

    ``batch_shape = *batch``, ``event_shape = (T, *obs_event)``. Every method takes the
    observed sequence ``value`` ``(*sample, *batch, T, *obs_event)`` and costs O(T C²) per
    sequence: :meth:`log_prob` (forward algorithm), :meth:`posterior_marginals` (one
    backward pass more), :meth:`viterbi`, :meth:`sample_posterior` (FFBS); :meth:`sample`
    draws states and observations ancestrally.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        initial_logits: torch.Tensor,
        transition_logits: torch.Tensor,
        observation_dist: Distribution,
        lengths: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ):
        _check_logits("initial_logits", initial_logits, 1)
        _check_logits("transition_logits", transition_logits, 2)
        if not isinstance(observation_dist, Distribution):
            raise TypeError(f"observation_dist must be a torch Distribution, got "
                            f"{type(observation_dist).__name__}")
        c = initial_logits.shape[-1]
        if transition_logits.shape[-2:] != (c, c):
            raise ValueError(f"transition_logits must end in ({c}, {c}) for {c} states "
                             f"(initial_logits {tuple(initial_logits.shape)}), got "
                             f"{tuple(transition_logits.shape)}")
        obs_batch = observation_dist.batch_shape
        if len(obs_batch) < 2 or obs_batch[-1] != c:
            raise ValueError(f"observation_dist must have batch shape (*batch, T, {c}), got "
                             f"{tuple(obs_batch)}")
        if transition_logits.dim() == 2:
            transition_logits = transition_logits.unsqueeze(0)
        try:
            shape = torch.broadcast_shapes(initial_logits.shape[:-1] + (1,),
                                           transition_logits.shape[:-2], obs_batch[:-1])
        except RuntimeError:
            raise ValueError(
                f"shapes do not broadcast: initial_logits {tuple(initial_logits.shape)}, "
                f"transition_logits {tuple(transition_logits.shape)}, observation_dist batch "
                f"{tuple(obs_batch)}") from None
        batch_shape, steps = shape[:-1], shape[-1]
        self.initial_logits = initial_logits - initial_logits.logsumexp(-1, True)
        self.transition_logits = transition_logits - transition_logits.logsumexp(-1, True)
        self.observation_dist = observation_dist
        self.num_states = c
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor) or lengths.is_floating_point() or (
                    lengths.dtype == torch.bool):
                raise TypeError("lengths must be an integer tensor")
            if lengths.shape != batch_shape:
                raise ValueError(f"lengths must have the batch shape {tuple(batch_shape)}, got "
                                 f"{tuple(lengths.shape)}")
            if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
                raise ValueError(f"lengths must lie in [1, {steps}], got values in "
                                 f"[{int(lengths.min())}, {int(lengths.max())}]")
        self.lengths = lengths
        super().__init__(batch_shape, torch.Size((steps,)) + observation_dist.event_shape,
                         validate_args=validate_args)

    @constraints.dependent_property(event_dim=2)
    def support(self):
        return constraints.independent(self.observation_dist.support, 1)

    def expand(self, batch_shape, _instance=None) -> ChainHMM:
        new = self._get_checked_instance(ChainHMM, _instance)
        batch_shape = torch.Size(batch_shape)
        new.initial_logits = self.initial_logits.expand(batch_shape + (-1,))
        new.transition_logits = self.transition_logits
        new.observation_dist = self.observation_dist
        new.num_states = self.num_states
        new.lengths = None if self.lengths is None else self.lengths.expand(batch_shape)
        super(ChainHMM, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self.__dict__.get("_validate_args")
        return new

    # -- the chain ----------------------------------------------------------------------------
    def _chain(self, value: torch.Tensor, validate: bool = False):
        """The chain of ``value``: ``init`` ``(B, C)``, ``edges`` ``(B, T-1, C, C)``, lengths
        ``(B,)`` or None, and the leading shape ``(*sample, *batch)`` that ``B`` flattens.
        Padding past each sequence's end is replaced by its first step before scoring, so
        it may hold anything (NaN included)."""
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"value must be a torch.Tensor, got {type(value).__name__}")
        obs_event = len(self.observation_dist.event_shape)
        if value.dim() < 1 + obs_event:
            raise ValueError(f"value must have shape (..., T, *{tuple(self.event_shape[1:])}), "
                             f"got {tuple(value.shape)}")
        steps = value.shape[value.dim() - obs_event - 1]
        if self.event_shape[0] not in (1, steps):
            raise ValueError(f"value has {steps} steps, this HMM has {self.event_shape[0]}")
        valid = None
        if self.lengths is not None:
            time_dim = value.dim() - obs_event - 1
            lead = torch.broadcast_shapes(value.shape[:time_dim], self.batch_shape)
            value = value.expand(lead + value.shape[time_dim:])
            valid = torch.arange(steps, device=value.device) < self.lengths.expand(
                lead).unsqueeze(-1)
            mask = valid.reshape(valid.shape + (1,) * obs_event)
            value = torch.where(mask, value, value.narrow(time_dim, 0, 1))
        if validate:  # the support only: a homogeneous HMM scores any number of steps
            if not bool(self.support.check(value).all()):
                raise ValueError(f"value is outside the support {self.support} of the "
                                 f"observations")
        obs_logp = self.observation_dist.log_prob(value.unsqueeze(-1 - obs_event))
        lead = torch.broadcast_shapes(obs_logp.shape[:-2], self.batch_shape)
        c = self.num_states
        obs_logp = obs_logp.expand(lead + (steps, c))
        trans = self.transition_logits.expand(lead + (steps, c, c))
        lengths = None
        if valid is not None:
            lengths = self.lengths.expand(lead).reshape(-1)
            obs_logp = obs_logp.masked_fill(~valid.unsqueeze(-1), 0.0)
        init = torch.logsumexp(self.initial_logits.expand(lead + (c,)).unsqueeze(-1)
                               + trans[..., 0, :, :], dim=-2) + obs_logp[..., 0, :]
        edges = trans[..., 1:, :, :] + obs_logp[..., 1:, None, :]
        flat = init.reshape(-1, c)
        return flat, edges.reshape((flat.shape[0], steps - 1, c, c)), lengths, lead

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_{1:T})`` ``(*sample, *batch)`` by the forward algorithm."""
        init, edges, lengths, lead = self._chain(value, self._validate_args)
        if edges.shape[1] == 0:
            return init.logsumexp(-1).reshape(lead)
        return chain.log_partition(edges, lengths, init).reshape(lead)

    def posterior_marginals(self, value: torch.Tensor) -> torch.Tensor:
        """``p(z_t = c | x)`` ``(*sample, *batch, T, C)`` (zero past each sequence's end),
        as the gradient of the log-likelihood."""
        init, edges, lengths, lead = self._chain(value)
        c = self.num_states
        if edges.shape[1] == 0:
            return init.softmax(-1).reshape(lead + (1, c))
        _, init_m, edge_m = chain.marginals(edges, lengths, init)
        nodes = torch.cat([init_m.unsqueeze(1), edge_m.sum(-2)], dim=1)
        return nodes.reshape(lead + (edges.shape[1] + 1, c))

    def viterbi(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The most probable state path given ``value``.

        :returns: ``log p(x, z*)`` ``(*sample, *batch)`` and ``z*`` ``(*sample, *batch, T)``
            (long; past a sequence's end its last state repeats).
        """
        init, edges, lengths, lead = self._chain(value)
        score, path = chain.viterbi(edges, lengths, init)
        return score.reshape(lead), path.reshape(lead + (edges.shape[1] + 1,))

    def sample_posterior(self, value: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Exact draws of the state path from ``p(z | x)`` by forward filtering, backward
        sampling: ``(num_samples, *sample, *batch, T)`` long."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        init, edges, lengths, lead = self._chain(value)
        paths = chain.sample(edges, lengths, init, num_samples)
        return paths.reshape((num_samples,) + lead + (edges.shape[1] + 1,))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Ancestral draws of observation sequences ``(*sample_shape, *batch, T, *obs_event)``
        (states by the chain, then each step's emission)."""
        return self.sample_with_states(sample_shape)[1]

    def sample_with_states(self, sample_shape: torch.Size = torch.Size()
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral draws of states ``(*sample_shape, *batch, T)`` and observations."""
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            steps, c = self.event_shape[0], self.num_states
            trans = self.transition_logits.expand(self.batch_shape + (steps, c, c))
            state = dist.Categorical(logits=self.initial_logits).sample(sample_shape)
            states = []
            for t in range(steps):
                rows = trans[..., t, :, :].expand(shape + (c, c))
                logits = rows.gather(-2, state[..., None, None].expand(shape + (1, c)))
                state = dist.Categorical(logits=logits.squeeze(-2)).sample()
                states.append(state)
            states_t = torch.stack(states, -1)  # (*shape, T)
            obs = self.observation_dist.expand(self.batch_shape + (steps, c)).sample(
                sample_shape)  # (*shape, T, C, *event)
            event = self.observation_dist.event_shape
            index = states_t.reshape(states_t.shape + (1,) * (1 + len(event)))
            index = index.expand(shape + (steps, 1) + event)
            return states_t, obs.gather(len(shape) + 1, index).squeeze(len(shape) + 1)


class NeuralHMM(PyroModule):
    """An HMM whose emissions (and optionally transitions) are pyrocg networks of the
    step inputs ``u_t``: ``p(x | u) = sum_z p(z_{-1}) prod_t p(z_t | z_{t-1}, u_t)
    p(x_t | z_t, u_t)``.

    :param num_states: ``C``.
    :param emission_net: network ``(*batch, T, d) -> (*batch, T, C * k)``: for each state,
        the ``k`` parameters of the emission (``"categorical"``: ``k`` class logits;
        ``"bernoulli"``: ``k`` logits; ``"gaussian"``: ``k/2`` means then ``k/2`` scales
        through softplus).
    :param emission: ``"categorical"``, ``"bernoulli"`` or ``"gaussian"``.
    :param transition_net: network ``(*batch, T, d) -> (*batch, T, C * C)`` of transition
        logits ``[old, new]``, or ``None`` for one learned matrix shared by all steps.
    :param handler: a zero-argument factory of the mode handler the networks run under
        (default :func:`pyrocg.handlers.feedforward`; e.g. ``lambda: handlers.pcff(0.3)``
        while training), so no node site is left latent.

    :meth:`forward` ``(inputs, lengths=None)`` returns the :class:`ChainHMM`, to use as
    ``pyro.sample("x", hmm(u), obs=x)`` inside a data plate of the batch dimension.

    >>> import torch, pyro
    >>> from pyrocg import models
    >>> hmm = NeuralHMM(2, models.mlp(4, [8], 2 * 3))                 # 3 classes per state
    >>> u, y = torch.randn(5, 7, 4), torch.randint(0, 3, (5, 7))     # 5 sequences, T = 7
    >>> d = hmm(u)
    >>> d.batch_shape, d.event_shape, d.log_prob(y).shape
    (torch.Size([5]), torch.Size([7]), torch.Size([5]))
    """

    def __init__(
        self,
        num_states: int,
        emission_net: nn.Module,
        emission: str = "categorical",
        transition_net: nn.Module | None = None,
        handler: Callable[[], object] = handlers.feedforward,
    ):
        super().__init__()
        if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 1:
            raise ValueError(f"num_states must be a positive int, got {num_states!r}")
        if emission not in EMISSIONS:
            raise ValueError(f"emission must be one of {EMISSIONS}, got {emission!r}")
        for name, net in (("emission_net", emission_net), ("transition_net", transition_net)):
            if net is not None and not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        if not callable(handler):
            raise TypeError("handler must be a zero-argument factory of a mode handler")
        self.num_states, self.emission = num_states, emission
        self.emission_net, self.transition_net = emission_net, transition_net
        self.handler = handler
        self.initial_logits = nn.Parameter(torch.zeros(num_states))
        if transition_net is None:
            self.transition_logits = nn.Parameter(torch.zeros(num_states, num_states))

    def _emission(self, out: torch.Tensor) -> Distribution:
        c = self.num_states
        if out.shape[-1] % c:
            raise ValueError(f"emission_net gives {out.shape[-1]} outputs per step, not a "
                             f"multiple of num_states={c}")
        params = out.reshape(out.shape[:-1] + (c, out.shape[-1] // c))
        if self.emission == "categorical":
            return dist.Categorical(logits=params)
        if self.emission == "bernoulli":
            return dist.Bernoulli(logits=params).to_event(1)
        if params.shape[-1] % 2:
            raise ValueError(f"a gaussian emission_net gives 2 * k outputs per state (k means, "
                             f"k raw scales), got {params.shape[-1]}")
        loc, raw = params.chunk(2, -1)
        return dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4).to_event(1)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> ChainHMM:
        """The HMM of the step inputs ``inputs`` ``(*batch, T, *input_shape)``."""
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got "
                            f"{getattr(inputs, 'dtype', type(inputs).__name__)}")
        if inputs.dim() < 2:
            raise ValueError(f"inputs must have shape (*batch, T, ...), got "
                             f"{tuple(inputs.shape)}")
        c = self.num_states
        with self.handler():
            out = self.emission_net(inputs)
            trans = None if self.transition_net is None else self.transition_net(inputs)
        if trans is None:
            trans = self.transition_logits
        else:
            if trans.shape[-1] != c * c:
                raise ValueError(f"transition_net must give {c * c} = num_states**2 outputs "
                                 f"per step, got {trans.shape[-1]}")
            trans = trans.reshape(trans.shape[:-1] + (c, c))
        return ChainHMM(self.initial_logits, trans, self._emission(out), lengths)
