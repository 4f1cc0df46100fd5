"""rsnjax: train recurrent reservoir-sampler networks (RSNs) to sample from complex distributions.

The data flows one way: target or data → `fit` → score model → circuit → `sample` → metrics.
"""

from ._version import __version__

from . import activity, checkpoint, distributed, metrics, posterior, targets
from .checkpoint import CheckpointError, load, save
from .conditional import (ConditionalSamplerOnly, ConditionalScoreNetwork, conditional_dsm_loss_with_noise,
                          conditional_dsm_value_and_grad)
from .dsm import (default_sigmas, dsm_loss, dsm_loss_with_noise, dsm_value_and_grad, geometric_sigmas,
                  stable_target)
from .extent import DataExtent, data_extent
from .interop import (CircuitInfo, CircuitState, LogDensityTarget, SamplingAlgorithm, as_blackjax,
                      score_from_logdensity, to_arviz)
from .networks import ACTIVATIONS, SamplerOnly, ScoreNetwork
from .reservoir import RankDeficientReadoutError, ReservoirSampler
from .sampling import (SampleResult, SamplingWarning, SimulationDivergedError, as_sde, configure_cpu, sample,
                       skew_symmetric, stable_step_size)
from .sde import CircuitSDE, OutputLangevin, ReservoirLangevin
from .training import History, TrainingDivergedError, cosine_optimizer, default_optimizer, default_steps, fit

__all__ = [
    "__version__",
    "targets",
    "posterior",
    "activity",
    "metrics",
    "checkpoint",
    "distributed",
    "ScoreNetwork",
    "SamplerOnly",
    "ConditionalScoreNetwork",
    "ConditionalSamplerOnly",
    "ACTIVATIONS",
    "ReservoirSampler",
    "RankDeficientReadoutError",
    "fit",
    "History",
    "TrainingDivergedError",
    "geometric_sigmas",
    "default_sigmas",
    "default_optimizer",
    "cosine_optimizer",
    "default_steps",
    "DataExtent",
    "data_extent",
    "dsm_loss",
    "dsm_loss_with_noise",
    "dsm_value_and_grad",
    "stable_target",
    "conditional_dsm_loss_with_noise",
    "conditional_dsm_value_and_grad",
    "sample",
    "stable_step_size",
    "SampleResult",
    "SimulationDivergedError",
    "SamplingWarning",
    "as_sde",
    "skew_symmetric",
    "configure_cpu",
    "CircuitSDE",
    "OutputLangevin",
    "ReservoirLangevin",
    "as_blackjax",
    "SamplingAlgorithm",
    "CircuitState",
    "CircuitInfo",
    "score_from_logdensity",
    "LogDensityTarget",
    "to_arviz",
    "save",
    "load",
    "CheckpointError",
]
