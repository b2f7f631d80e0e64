"""Where ``ihs run`` writes, spelled once: the steps write through it and the report reads through it.

::

    OUT/
      run.json                     the index: config, data counts, models, each step's status and key
      run.log                      the log of every run into OUT (tracebacks of failed steps go here)
      report.html                  the self-contained report
      <model>/                     one folder per model (a slug of its name)
        <step>/                    one folder per step (extract, probe, lens, ...)
          step.json                the step's key, inputs, status, seconds, summary, outputs
          <outputs>                what the step's workflow saves (probe.json, lens.json, ...)
        extract/store/             the activation store (see ihs.store)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STEP_FILE = "step.json"


def slug(text: str) -> str:
    """A folder name for a model: letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "model"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    out: Path

    def __init__(self, out: str | Path) -> None:
        object.__setattr__(self, "out", Path(out))

    @property
    def run_json(self) -> Path:
        return self.out / "run.json"

    @property
    def run_log(self) -> Path:
        return self.out / "run.log"

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    def model_dir(self, model: str) -> Path:
        return self.out / model

    def step_dir(self, model: str, step: str) -> Path:
        return self.out / model / step

    def step_file(self, model: str, step: str) -> Path:
        return self.step_dir(model, step) / STEP_FILE

    def store_dir(self, model: str) -> Path:
        return self.step_dir(model, "extract") / "store"
