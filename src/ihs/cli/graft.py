"""``ihs graft``: logit grafting, a donor state put into the targets' last prompt position at each layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ihs.cli import common
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.base import FormatOptions, help_of
from ihs.workflows.graft import GraftConfig, GraftResult, command_line, graft_sets, run_graft

H = GraftConfig
SET_HELP = "A prompt set: SPEC (builtin:malicious, file.csv:goal, ...) or NAME=SPEC to name its class."


def load_set(spec: str, default_label: str, limit: int | None) -> list[Any]:
    """The prompts of one set given as ``SPEC`` or ``NAME=SPEC`` (a builtin set is named after itself)."""
    from ihs.data.prepare import prepare

    if "=" in spec.split(":", 1)[0]:
        name, body = (part.strip() for part in spec.split("=", 1))
    else:
        name, body = (spec.split(":", 1)[1] if spec.startswith("builtin:") else default_label), spec
    records, _ = prepare([(name, body)], limit=limit)
    return records


def graft_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    model: common.Model = "smollm2-135m-instruct",
    target: Annotated[str, typer.Option(help="Targets (grafted into). " + SET_HELP)] = "builtin:malicious",
    donor: Annotated[str, typer.Option(help="Donors (states taken from). " + SET_HELP)] = "builtin:normal",
    layers: Annotated[str, typer.Option(help=common.LAYERS_HELP)] = "0:L",
    limit: Annotated[int, typer.Option(help="Target prompts (the first N of the target set).")] = 40,
    donor_limit: Annotated[int, typer.Option(
        help="Donor prompts, taken after the first --limit of the donor set (so reverse targets never donate).")] = 100,
    per_pair: Annotated[bool, typer.Option("--per-pair/--mean", help=help_of(H, "per_pair"))] = False,
    jailbreak: Annotated[str | None, typer.Option(
        help="Real jailbreak set for the reference ASR ('none' to skip); prompts wrapping the targets' goals "
             "are used when the set tags goal_id.")] = "builtin:jailbreak",
    reverse: Annotated[bool, typer.Option(
        "--reverse/--no-reverse", help="Also graft target-set states into donor-set prompts.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help=help_of(H, "max_new_tokens"))] = 32,
    batch_size: Annotated[int, typer.Option(help=help_of(H, "batch_size"))] = 16,
    judge: Annotated[str, typer.Option(help=help_of(H, "judge"))] = "phrases",
    examples: Annotated[int, typer.Option(help=help_of(H, "examples"))] = 3,
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    device_map: common.DeviceMap = None,
    max_memory: common.MaxMemory = None,
    trust_remote_code: common.TrustRemoteCode = False,
) -> None:
    """Logit grafting: replace the targets' last-position state at each layer with a donor state, generate, judge."""
    if limit <= 0 or donor_limit <= 0:
        raise IhsError("--limit and --donor-limit must be positive")
    options = GraftConfig(layers=layers, targets=limit, donors=donor_limit, per_pair=per_pair, reverse=reverse,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, judge=judge, examples=examples)
    options.validate()
    fmt = FormatOptions(chat=chat, system_prompt=system_prompt)
    reference_spec = jailbreak if jailbreak and jailbreak.lower() != "none" else None
    sets = graft_sets(load_set(target, "target", limit + donor_limit), load_set(donor, "donor", limit + donor_limit),
                      options, reference=load_set(reference_spec, "jailbreak", None) if reference_spec else None)
    out = common.out_dir(out)
    command = command_line(model, target, donor, options, out, jailbreak=reference_spec, fmt=fmt)
    lm = common.load_model(model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                           trust_remote_code=trust_remote_code)
    console.print(f"graft: {len(sets.targets)} targets, {len(sets.donors)} donors, layers {layers}"
                  + (f"; reverse: {len(sets.reverse_targets)} targets, {len(sets.reverse_donors)} donors"
                     if reverse else ""))
    result = run_graft(lm, sets.targets, sets.donors, options, reference=sets.reference,
                       reverse_targets=sets.reverse_targets, reverse_donors=sets.reverse_donors, fmt=fmt,
                       command=command)
    result.save(out)
    print_summary(result, out)


def print_summary(result: GraftResult, out: Path) -> None:
    fwd = result.forward
    best = max(fwd["layers"], key=lambda e: e["asr"])
    ref = fwd.get("reference")
    console.print(f"ASR no graft {fwd['baseline']['asr']:.2f}; best graft layer {best['layer']}: {best['asr']:.2f}"
                  + (f"; real jailbreaks {ref['asr']:.2f}" if ref else ""))
    console.print(f"wrote {out}/graft.json, generations.jsonl, graft_asr.png ({result.data['seconds']} s)")
