"""ihs guard: probes on a model's hidden states (one layer's last token, or pooled states at several layers with a
linear or MLP head) as a served harmful-request and jailbreak detector, measured on prompt families it never saw."""

from ihs.guard.bank import FeatureBank
from ihs.guard.fit import FitOptions, fit_guard
from ihs.guard.fit_pooled import PooledFitOptions, fit_pooled_guard
from ihs.guard.guard import Guard, ScoreResult
from ihs.guard.heads import Recipe, parse_kind

__all__ = ["FeatureBank", "FitOptions", "Guard", "PooledFitOptions", "Recipe", "ScoreResult", "fit_guard",
           "fit_pooled_guard", "parse_kind"]
