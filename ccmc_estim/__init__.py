"""ccmc_estim: estimation of context-conditioned Markov chains, the exact model of one-layer
self-attention with a tied output head."""

from .datasets import Vocabulary, make_ccmc_data, prompts_from_sequences
from .diagnostics import (
    IdentifiabilityReport,
    IdentifiabilityWarning,
    ModelComparison,
    compare_models,
    identifiability_report,
)
from .estimator import CCMCEstimator
from .model import CCMC, attention_forward

__version__ = "0.1.0"

__all__ = [
    "CCMC",
    "CCMCEstimator",
    "IdentifiabilityReport",
    "IdentifiabilityWarning",
    "ModelComparison",
    "Vocabulary",
    "attention_forward",
    "compare_models",
    "identifiability_report",
    "make_ccmc_data",
    "prompts_from_sequences",
]
