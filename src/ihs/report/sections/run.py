"""Run details: what ran, with which options and versions, and what was reused from the cache."""

from __future__ import annotations

import json
import platform
from typing import Any

from ihs.report.context import DONE, ReportContext
from ihs.report.html import Raw, esc, fmt_seconds, table
from ihs.report.html import section as section_html

TITLE = "Run details"
LEAD = "What ran, with which options, and what was reused from the cache."


def _steps(index: dict[str, Any]) -> str:
    rows = []
    for m in index["models"]:
        for step, s in m["steps"].items():
            status = s.get("status", "")
            rows.append([m["name"], step, Raw(f'<span class="status-{esc(status)}">{esc(status)}</span>'),
                         fmt_seconds(s.get("seconds")) if status in ("done", "cached", "failed") else "",
                         s.get("key", ""), s.get("message", "")])
    return table(["model", "step", "status", "time (when computed)", "cache key", "note"], rows)


def _config_text(config: dict[str, Any]) -> str:
    try:
        import yaml

        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    except Exception:  # noqa: BLE001
        return json.dumps(config, indent=2)


def versions() -> str:
    """The versions of ihs, Python and the main libraries, as one sentence."""
    import ihs

    parts = [f"ihs {ihs.__version__}", f"Python {platform.python_version()}"]
    for name in ("torch", "transformers", "sklearn"):
        try:
            mod = __import__(name)
            parts.append(f"{name} {mod.__version__}")
        except Exception:  # noqa: BLE001
            continue
    return "Versions: " + ", ".join(parts) + "."


def section(ctx: ReportContext) -> str:
    """The command, folders, timings, every model and step with its status and key, the config."""
    index = ctx.index
    models = table(["model", "reference", "fingerprint", "dtype"],
                   [[m["name"], m["ref"], m["fingerprint"], m["dtype"]] for m in index["models"]])
    compute = sum(s.get("seconds") or 0 for m in index["models"] for s in m["steps"].values()
                  if s.get("status") in DONE)
    body = (f"<p>Command: <code>{esc(index.get('command', ''))}</code>. Output folder: "
            f"<code>{esc(str(ctx.layout.out))}</code>; log: <code>{esc(index.get('log', 'run.log'))}</code>. This "
            f"invocation took {esc(fmt_seconds(index.get('wall_seconds')))}; the steps took "
            f"{esc(fmt_seconds(compute))} when they were computed (steps marked cached were reused from an earlier "
            f"run).</p>{models}{_steps(index)}"
            f"<h4>Configuration</h4><pre class=\"txt\">{esc(_config_text(index.get('config', {})))}</pre>"
            f"<p class=\"lead\">{esc(versions())}</p>")
    return section_html("run", "Run details", body, LEAD)
