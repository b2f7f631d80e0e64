"""Context managers that hold for the length of a run: its log file and torch's CPU threads."""

from __future__ import annotations

import logging
from pathlib import Path


class RunLog:
    """Log records of ``ihs.*`` into OUT/run.log for the duration of a run (warnings also reach the console)."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("ihs")
        self.old_level = self.logger.level

    def __enter__(self) -> RunLog:
        self.old_propagate = self.logger.propagate
        self.forward = _ForwardWarnings()
        self.logger.addHandler(self.handler)
        self.logger.addHandler(self.forward)
        self.logger.propagate = False
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.removeHandler(self.forward)
        self.logger.propagate = self.old_propagate
        self.logger.setLevel(self.old_level)
        self.handler.close()


class _ForwardWarnings(logging.Handler):
    """Pass warnings and errors on to the root logger's handlers (INFO, and records logged with
    ``extra={"console": False}``, go to run.log only)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING or not getattr(record, "console", True):
            return
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


class torch_threads:
    """Set torch's CPU threads for the duration of a run; ``as`` gives the number before."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> int:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self.before

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)
