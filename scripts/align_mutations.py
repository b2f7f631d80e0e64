"""Check that the alignment tests can fail: break ihs.align on purpose, one way at a time, and run the test
that should notice.

Usage (from the repo root; tiny models only, a few minutes on 2 cores)::

    .venv/bin/python scripts/align_mutations.py --out benchmarks/results/align_mutations.md

Each mutation edits one line of a copy of ``src/`` in a temporary folder (the working tree is not
touched) and runs one test against the copy (``PYTHONPATH``). A mutation is *caught* when that test
fails. The table (mutation, test, caught, first error line) is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (name, what it breaks, file under src/, text, replacement, test)
MUTATIONS = [
    ("rows", "the association term also acts on benign rows", "ihs/align/association.py",
     "idx = flags.nonzero().flatten()", "idx = torch.arange(len(flags), device=flags.device)",
     "tests/test_align.py::test_association_gradient_reaches_only_chosen_layers_and_malicious_rows"),
    ("layer", "the term reads the block above the chosen layer", "ihs/align/association.py",
     "blocks[layer - 1].register_forward_hook", "blocks[min(layer, len(blocks) - 1)].register_forward_hook",
     "tests/test_align.py::test_association_gradient_reaches_only_chosen_layers_and_malicious_rows"),
    ("resume", "a rerun ignores the last trainer checkpoint", "ihs/align/train.py",
     "    if not folder.is_dir():\n        return None", "    if True:\n        return None",
     "tests/test_align.py::test_resume_continues_from_the_last_checkpoint"),
    ("split", "the split goes by prompt, not by goal (wrappings leave their goal)", "ihs/align/data.py",
     "(held if is_eval_goal(goal_key(rec), split=split) else train).append(rec)",
     "(held if is_eval_goal(rec.id, split=split) else train).append(rec)",
     "tests/test_align.py::test_training_and_evaluation_goals_are_disjoint"),
    ("eval-check", "train() no longer refuses evaluation goals", "ihs/align/train.py",
     "    _check_not_eval(examples, split)\n", "",
     "tests/test_align.py::test_training_on_evaluation_goals_is_refused"),
    ("sft-lr", "SFT does not learn (learning rate x 1e-9)", "ihs/align/train.py",
     "learning_rate=options.learning_rate,", "learning_rate=options.learning_rate * 1e-9,",
     "tests/test_align.py::test_sft_lowers_loss_and_writes_loadable_checkpoints"),
    ("merge", "checkpoints are saved as adapters, not merged model folders", "ihs/align/checkpoints.py",
     "copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model", "model",
     "tests/test_align.py::test_sft_lowers_loss_and_writes_loadable_checkpoints"),
    ("dpo-lr", "DPO does not learn", "ihs/align/train.py",
     "args = DPOConfig(**common, beta=options.beta)",
     "args = DPOConfig(**{**common, 'learning_rate': 1e-12}, beta=options.beta)",
     "tests/test_align.py::test_dpo_on_a_base_model_with_association"),
    ("template", "a base model without a template is accepted with chat_template='model'",
     "ihs/align/encoding.py", "    if not has_own:\n        raise", "    if False:\n        raise",
     "tests/test_align.py::test_base_model_template"),
    ("no-answer", "an SFT file without answers is not refused", "ihs/align/files.py",
     "        if completion is None:\n            raise", "        if False:\n            raise",
     "tests/test_align.py::test_bad_files_give_one_line_errors"),
    ("no-rejected", "a DPO file without rejected answers is not refused", "ihs/align/files.py",
     "        if rejected is None:\n            raise", "        if False:\n            raise",
     "tests/test_align.py::test_bad_files_give_one_line_errors"),
    ("reuse", "tracking reuses another run's row whatever its weights", "ihs/workflows/align.py",
     "                if weights == digest:", "                if True:",
     "tests/test_align_workflow.py::test_track_reuses_rows_only_for_identical_weights"),
    ("segments", "a resumed run forgets its earlier segments", "ihs/workflows/align.py",
     "    if not resumed_from or not path.is_file():", "    if True:",
     "tests/test_align_workflow.py::test_resumed_run_records_every_segment"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="Markdown file for the table")
    parser.add_argument("--only", nargs="*", default=None, help="names of mutations to run")
    args = parser.parse_args()
    rows = []
    for name, what, rel, old, new, test in MUTATIONS:
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="ihs-mut-") as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
            path = src / rel
            text = path.read_text(encoding="utf-8")
            if old not in text:
                rows.append((name, what, test, "NOT APPLIED", f"text not found in {rel}"))
                continue
            path.write_text(text.replace(old, new, 1), encoding="utf-8")
            env = {**os.environ, "PYTHONPATH": str(src)}
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            first = next((line.strip() for line in proc.stdout.splitlines() if line.startswith("E ")), "")
            rows.append((name, what, test, "caught" if proc.returncode != 0 else "SURVIVED", first[:140]))
        print(" | ".join(rows[-1][:4]), flush=True)
    lines = ["<!-- written by: .venv/bin/python scripts/align_mutations.py"
             + (f" --out {args.out}" if args.out else "") + " -->", "",
             "| mutation | what it breaks | test | result | first error line |", "|---|---|---|---|---|"]
    for name, what, test, result, first in rows:
        lines.append(f"| {name} | {what} | `{test.split('::')[1]}` | {result} | `{first.replace('|', '/')}` |")
    caught = sum(r[3] == "caught" for r in rows)
    lines += ["", f"{caught} of {len(rows)} mutations caught."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    sys.exit(0 if caught == len(rows) else 1)


if __name__ == "__main__":
    main()
