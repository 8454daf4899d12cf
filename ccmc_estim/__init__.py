"""ccmc_estim: estimation of context-conditioned Markov chains, the exact model of one-layer
self-attention with a tied output head."""

from ._stats import in_prompt
from .attention import attention_forward
from .datasets import Vocabulary, load_python_tokens, make_ccmc_data, prompts_from_sequences
from .diagnostics import (
    IdentifiabilityReport,
    IdentifiabilityWarning,
    ModelComparison,
    compare_models,
    identifiability_report,
    likelihood_ratio_test,
)
from .estimator import CCMCEstimator, PositionalCCMCEstimator
from .generation import (
    CollapseProfile,
    TrajectoryLearning,
    WinnerAnalysis,
    collapse_profile,
    generate,
    generate_batch,
    learn_from_trajectory,
    trajectory_pairs,
    winner_analysis,
)
from .model import CCMC, PositionalCCMC

__version__ = "0.1.0"

__all__ = [
    "CCMC",
    "CCMCEstimator",
    "CollapseProfile",
    "IdentifiabilityReport",
    "IdentifiabilityWarning",
    "ModelComparison",
    "PositionalCCMC",
    "PositionalCCMCEstimator",
    "TrajectoryLearning",
    "Vocabulary",
    "WinnerAnalysis",
    "attention_forward",
    "collapse_profile",
    "compare_models",
    "generate",
    "generate_batch",
    "identifiability_report",
    "in_prompt",
    "learn_from_trajectory",
    "likelihood_ratio_test",
    "load_python_tokens",
    "make_ccmc_data",
    "prompts_from_sequences",
    "trajectory_pairs",
    "winner_analysis",
]
