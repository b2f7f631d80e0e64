"""ihs guard: a probe on an early layer's last-token state as a served jailbreak / harmful-request detector."""

from ihs.guard.guard import FitOptions, Guard, ScoreResult, fit_guard

__all__ = ["FitOptions", "Guard", "ScoreResult", "fit_guard"]
