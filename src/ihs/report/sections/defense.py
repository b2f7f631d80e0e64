"""Defense: steering conditioned on the guard's flag, chosen on the tune split, reported on the eval split."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, pct, png, table
from ihs.report.html import section as section_html
from ihs.workflows.defense import DefenseResult

RESULT = DefenseResult
TITLE = "Defense"
LEAD = ("A guard reads an early layer; when it flags the prompt, the middle layers are steered towards refusal. The "
        "steered layers and strength were chosen on the tune side of a split by goal; the numbers below are from the "
        "disjoint eval side, against the undefended model, refusing whenever the guard flags, and steering every "
        "prompt with the same setting.")
ROWS = (("undefended", "no defense"), ("refuse", "refuse when flagged"), ("best", "chosen setting, when flagged"),
        ("always", "chosen setting, every prompt"))


def _setting(v: dict[str, Any]) -> str:
    if v.get("layers") is None:
        return ""
    return f"layers {', '.join(str(x) for x in v['layers'])}, alpha {v.get('alpha')}"


def _per_class(v: dict[str, Any], label: str, key: str) -> str:
    c = (v.get("per_class") or {}).get(label)
    return pct(c.get(key)) if c else "-"


def _table(n: dict[str, Any]) -> str:
    rows = []
    for key, label in ROWS:
        v = n.get(key)
        if v is None:
            continue
        rows.append([label, _setting(v), pct(v.get("asr_attack")), pct(v.get("refusal_benign")),
                     _per_class(v, "malicious", "asr"), _per_class(v, "jailbreak", "asr"),
                     _per_class(v, "normal", "refusal_rate"), _per_class(v, "contrast", "refusal_rate"),
                     num(v.get("normal_ppl_ratio"), 3)])
    return table(["defense", "setting", "attack ASR", "benign refusal", "malicious ASR", "jailbreak ASR",
                  "normal refused", "contrast refused", "normal-answer perplexity ratio"], rows,
                 numeric=[2, 3, 4, 5, 6, 7, 8])


def _headline(n: dict[str, Any]) -> str:
    base, best = n.get("undefended"), n.get("best")
    if not base or not best:
        return "No conditional setting was kept on the eval side."
    return (f"With the chosen setting the attack success rate goes from {pct(base['asr_attack'])} to "
            f"{pct(best['asr_attack'])}, and benign prompts are refused {pct(best['refusal_benign'])} of the time "
            f"(undefended: {pct(base['refusal_benign'])}).")


def _body(m: ModelResults, result: Any) -> str:
    n = result.numbers()
    if n is None:
        return m.notice("defense")
    data = result.data
    guard = n.get("guard") or {}
    text = (f"{n.get('n')} prompts of the {n.get('split') or 'eval'} split; setting chosen on the tune split: "
            f"{data.get('tuned_best') or 'none'} (rule: {n.get('best_rule')}); guard at layer {guard.get('layer')}, "
            f"threshold {num(guard.get('threshold'), 3)}; '{n.get('judge')}' judge. Attack ASR: share of malicious "
            "and jailbreak prompts answered; benign refusal: share of normal and contrast prompts refused.")
    figure = png(m.folder("defense") / "tradeoff.png", "attack ASR vs benign refusal per setting")
    return f'<p class="lead">{esc(text)}</p><p>{esc(_headline(n))}</p>{_table(n)}{figure}'


def section(ctx: ReportContext) -> str:
    """Attack ASR and benign refusal with and without the chosen setting, on the eval split."""
    return section_html("defense", "Defense: guard-conditioned steering", ctx.per_model("defense", "defense", _body),
                        LEAD)
