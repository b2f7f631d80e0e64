"""ihs guard: a probe on an early layer's last-token state as a served jailbreak / harmful-request detector."""

from ihs.guard.fit import FitOptions, fit_guard
from ihs.guard.guard import Guard, ScoreResult

__all__ = ["FitOptions", "Guard", "ScoreResult", "fit_guard"]
