"""Worked examples for docs/EXPLAIN.md: a guard's real verdicts on held-out prompts, explained token by token and
layer by layer.

Usage (from the repo root; the guard is a linear last-token guard made by `ihs guard fit`)::

    nice -n 10 .venv/bin/python scripts/explain_examples.py --model smollm2-135m-instruct \
        --guard runs/guardgen/smollm2/guard-old4 --out runs/explain-zoo/examples

Candidates are prompts the guard was neither fitted nor calibrated on (not in its card's ``splits.ids.train``
or ``calibration``; jailbreaks only from ``splits.ids.test``, where whole goals with all their wrappings were
held out), in file order:

1. benign requests in a role-play wrapper (``builtin:wrapped``, wrapper ``roleplay_persona``): the first the
   guard flags;
2. harmful requests in the past tense (``builtin:reformulated``, ``past_tense``): the first it misses;
3. jailbreak prompts (``builtin:jailbreak``, a seeded sample of ``--jailbreaks`` of at most ``--max-tokens``
   tokens): the model answers greedily (``--max-new-tokens``) and ihs's phrase judge says refused or complied;
   the first refused and the first complied.

For each chosen prompt: the guard's probability, logit and verdict (the guard's own ``score``), integrated
gradients of the guard's logit (``--steps`` nodes; the attributed logit is checked against the guard's), for
the jailbreaks also of the refusal margin, and the layer-by-layer story (:mod:`ihs.explain.story`: position
on the malicious-vs-normal axis set by 32 + 32 reference prompts from the guard's training split, the
logit-lens refusal margin, the last token's attention on the request inside the wrapper). Writes
``examples.json``, ``examples.html`` (heat maps and stories, escaped, no scripts) and ``explain_examples.png``
(the stories by layer) into ``--out``, with the counts of each kind of verdict among the candidates.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--guard", required=True)
    parser.add_argument("--out", default="runs/explain-zoo/examples")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--jailbreaks", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--reference", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pathlib import Path

    import numpy as np

    from ihs.data import load_builtin
    from ihs.explain import AttributionOptions, attribute, find_span, refusal_target, tokenize_prompts
    from ihs.explain.guard import guard_target
    from ihs.explain.story import StoryOptions, layer_stories, tell
    from ihs.generation import GenerateOptions, generate
    from ihs.guard import Guard
    from ihs.io import read_json, write_json
    from ihs.models.loading import load_model
    from ihs.plots.explain import examples_page, plot_stories

    started = time.perf_counter()
    load_before = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    guard = Guard.load(args.guard, lm=lm)
    card = read_json(Path(args.guard) / "guard.json")
    held = set(card["splits"]["ids"]["test"])
    train = set(card["splits"]["ids"]["train"])
    fmt = {"chat": bool(guard.model.get("chat", False)), "system_prompt": guard.model.get("system_prompt")}
    target = guard_target(guard)
    malicious_all = load_builtin("malicious")
    goals = {r.id: r.text for r in malicious_all}
    goals.update({r.tags["source_id"]: r.text for name in ("normal", "contrast") for r in load_builtin(name)})
    goals.update({r.tags["source_id"]: r.text for r in malicious_all})

    def scored(records):
        res = guard.score([r.text for r in records])
        return [{"record": r, "probability": float(p), "flagged": bool(m)}
                for r, p, m in zip(records, res.probability, res.malicious, strict=True)]

    seen = train | set(card["splits"]["ids"].get("calibration", []))
    wrapped = [r for r in load_builtin("wrapped") if r.tags.get("wrapper") == "roleplay_persona" and r.id not in seen]
    past = [r for r in load_builtin("reformulated") if r.tags.get("reformulation") == "past_tense"
            and r.id not in seen]
    jb_pool = [r for r in load_builtin("jailbreak") if r.id in held]
    rng = np.random.default_rng(args.seed)
    jb_pool = [jb_pool[i] for i in rng.permutation(len(jb_pool))]
    jb_pool = [r for r in jb_pool if len(tokenize_prompts(lm, [r.text], **fmt)[0]) <= args.max_tokens]
    jb = sorted(jb_pool[: args.jailbreaks], key=lambda r: r.id)
    s_wrapped, s_past, s_jb = scored(wrapped), scored(past), scored(jb)
    gen = generate(lm, jb, GenerateOptions(max_new_tokens=args.max_new_tokens, **fmt), judge="phrases",
                   progress=False)
    for row, g in zip(s_jb, gen.rows, strict=True):
        row["answer"], row["refused"] = g["answer"], bool(g["refused"])
    counts = {"rule": "wrapped and past-tense: not in the guard's train or calibration split; jailbreaks: its test split",
              "roleplay_wrapped_held_out": len(s_wrapped), "roleplay_wrapped_flagged": sum(r["flagged"] for r in s_wrapped),
              "past_tense_held_out": len(s_past), "past_tense_missed": sum(not r["flagged"] for r in s_past),
              "jailbreaks_generated": len(s_jb), "jailbreaks_refused": sum(r["refused"] for r in s_jb),
              "jailbreaks_flagged": sum(r["flagged"] for r in s_jb)}
    picks = []
    for kind, rows, test in (("benign request in a role-play wrapper, flagged", s_wrapped, lambda r: r["flagged"]),
                             ("harmful request in the past tense, missed", s_past, lambda r: not r["flagged"]),
                             ("jailbreak the model refused", s_jb, lambda r: r["refused"]),
                             ("jailbreak the model complied with", s_jb, lambda r: not r["refused"])):
        chosen = next((r for r in rows if test(r)), None)
        if chosen is not None:
            picks.append({"kind": kind, **chosen})
    if not picks:
        raise SystemExit("no candidate matched")
    texts = [p["record"].text for p in picks]
    spans = []
    for p in picks:
        goal = goals.get(p["record"].tags.get("goal_id"))
        spans.append(find_span(p["record"].text, goal) if goal and goal in p["record"].text else None)
    aopts = AttributionOptions(steps=args.steps, progress=False, **fmt)
    g_attr = attribute(lm, texts, target, options=aopts)
    refusal = refusal_target(lm)
    r_attr = attribute(lm, texts, refusal, options=aopts)
    normal_ref = [r.text for r in load_builtin("normal") if r.id in train]
    mal_ref = [r.text for r in malicious_all if r.id in train]
    pick = np.random.default_rng(args.seed + 1)
    normal_ref = [normal_ref[i] for i in sorted(pick.permutation(len(normal_ref))[: args.reference])]
    mal_ref = [mal_ref[i] for i in sorted(pick.permutation(len(mal_ref))[: args.reference])]
    stories = layer_stories(lm, texts, malicious=mal_ref, normal=normal_ref, spans=spans, refusal=refusal,
                            options=StoryOptions(progress=False, **fmt))
    examples = []
    for p, ga, ra, story, span in zip(picks, g_attr.items, r_attr.items, stories, spans, strict=True):
        rec = p["record"]
        if abs(1 / (1 + np.exp(-ga.target)) - p["probability"]) > 1e-3:
            raise SystemExit(f"the attributed logit {ga.target} is not the guard's (p = {p['probability']})")
        examples.append({
            "kind": p["kind"], "id": rec.id, "label": rec.label, "tags": dict(rec.tags or {}), "text": rec.text,
            "span": span, "guard": {"probability": p["probability"], "flagged": p["flagged"], "logit": ga.target,
                                    "threshold": float(guard.threshold), "threshold_logit": float(guard.threshold_logit),
                                    "layer": int(guard.layer), "kind": guard.kind},
            "answer": p.get("answer"), "refused": p.get("refused"),
            "guard_attribution": ga.to_dict(), "refusal_attribution": ra.to_dict(),
            "guard_top": ga.top(6), "guard_bottom": sorted(
                [{"position": i, "token": ga.tokens[i], "score": ga.scores[i]} for i in range(len(ga.tokens))
                 if ga.user[i]], key=lambda t: t["score"])[:6],
            "story": story, "story_text": tell(story)})
    command = ("scripts/explain_examples.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))
    data = {"format": "ihs-explain-examples", "model": args.model, "guard": args.guard, "counts": counts,
            "candidates": {"jailbreaks": [{"id": r["record"].id, "family": r["record"].tags.get("family"),
                                           "refused": r["refused"], "flagged": r["flagged"],
                                           "probability": r["probability"], "answer": r["answer"]} for r in s_jb]},
            "examples": examples, "command": command, "seconds": time.perf_counter() - started,
            "load_before": load_before, "load_after": os.getloadavg()}
    write_json(out / "examples.json", data)
    (out / "examples.html").write_text(examples_page(data), encoding="utf-8")
    plot_stories(data, out, caption=command)
    print(f"{len(examples)} examples, counts {counts}; {data['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
