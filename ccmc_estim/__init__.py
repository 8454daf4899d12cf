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
from .io import ModelFile, load_model, save_model
from .mixture import BaseChain, MixtureCCMC, MixtureCCMCEstimator
from .model import CCMC, PositionalCCMC
from .plotting import (
    CollapseProfileDisplay,
    IdentifiabilityDisplay,
    ModelComparisonDisplay,
    PositionBiasDisplay,
    SampleComplexityDisplay,
    WinnerDisplay,
)

__version__ = "0.1.0"

__all__ = [
    "CCMC",
    "BaseChain",
    "CCMCEstimator",
    "CollapseProfile",
    "CollapseProfileDisplay",
    "IdentifiabilityDisplay",
    "IdentifiabilityReport",
    "IdentifiabilityWarning",
    "MixtureCCMC",
    "MixtureCCMCEstimator",
    "ModelComparison",
    "ModelComparisonDisplay",
    "ModelFile",
    "PositionBiasDisplay",
    "PositionalCCMC",
    "PositionalCCMCEstimator",
    "SampleComplexityDisplay",
    "TrajectoryLearning",
    "Vocabulary",
    "WinnerAnalysis",
    "WinnerDisplay",
    "attention_forward",
    "collapse_profile",
    "compare_models",
    "generate",
    "generate_batch",
    "identifiability_report",
    "in_prompt",
    "learn_from_trajectory",
    "likelihood_ratio_test",
    "load_model",
    "load_python_tokens",
    "make_ccmc_data",
    "prompts_from_sequences",
    "save_model",
    "trajectory_pairs",
    "winner_analysis",
]
