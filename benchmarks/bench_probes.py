"""How long do per-layer probes take? (issue: 31 layers x 1,000 prompts should take seconds)

Times ``ihs.analysis.probes.probe_store`` per classifier in cv mode with 5 folds: the probe alone
(5 fits per layer) and with the shuffled-label control (10 fits per layer), with 1 and 2 worker
processes; wall and CPU seconds, since the 2-core machine is shared. Then compares the SVM that ihs
uses (the paper's ``SVC(kernel="linear")``, on standardised inputs) with ``LinearSVC(loss="hinge")``
on the same splits, for real and for shuffled labels: time and agreement of test predictions.

Data: a real store (``--store runs/smollm2-paper``) or a synthetic one shaped like SmolLM2
(1,000 prompts, 31 layer indices, d=576) whose class signal grows with depth and whose
coordinates have a few large-scale "massive activation" dimensions, as real residual streams do.

    .venv/bin/python benchmarks/bench_probes.py --mlp-jobs 1,2 --out benchmarks/results/probes.json \\
        --figure docs/figures/probes_bench.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def synthetic(n: int = 1000, layers: int = 31, dim: int = 576, seed: int = 0):
    from ihs.store import ActivationStore

    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    scale = np.ones(dim)
    scale[rng.choice(dim, 4, replace=False)] = 30.0  # a few massive-activation dimensions
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    H = np.empty((n, layers, dim), np.float32)
    shared = rng.normal(size=(n, dim))
    for layer in range(layers):
        strength = 3.0 * min(1.0, layer / 6)  # chance at layer 0, separable from ~layer 3
        noise = 0.6 * shared + 0.8 * rng.normal(size=(n, dim))
        H[:, layer] = (noise * scale + strength * np.where(y == 1, 1, -1)[:, None] * direction).astype(np.float32)
    labels = np.where(y == 1, "malicious", "normal")
    return ActivationStore.from_arrays(H, labels, [f"prompt {i}" for i in range(n)])


def svm_agreement(store, layers, folds: int = 5, seed: int = 42, shuffle: bool = False) -> dict:
    """LinearSVC(hinge) vs SVC(kernel='linear') on the same standardised 5-fold splits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    from threadpoolctl import threadpool_limits

    from ihs.analysis.probes import make_classifier

    y = (np.asarray(store.labels) == "malicious").astype(int)
    if shuffle:
        y = np.random.default_rng(seed).permutation(y)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    t_lin = t_svc = 0.0
    same, acc_lin, acc_svc = [], [], []
    used = []
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # LinearSVC often stops at max_iter here
        for layer in layers:
            X = store.hidden[:, layer]
            if np.ptp(X, axis=0).max() == 0:  # one state for every prompt (chat layer 0): nothing to compare
                continue
            used.append(layer)
            for tr, te in splits:
                t = time.perf_counter()
                a = make_pipeline(StandardScaler(), LinearSVC(loss="hinge", max_iter=5000)).fit(X[tr], y[tr]).predict(X[te])
                t_lin += time.perf_counter() - t
                t = time.perf_counter()
                b = make_classifier("svm", "cv", seed).fit(X[tr], y[tr]).predict(X[te])
                t_svc += time.perf_counter() - t
                same.append(float(np.mean(a == b)))
                acc_lin.append(float(np.mean(a == y[te])))
                acc_svc.append(float(np.mean(b == y[te])))
    return {"layers": used, "fits": len(used) * folds, "linearsvc_seconds": t_lin, "svc_seconds": t_svc,
            "prediction_agreement": float(np.mean(same)), "min_fold_agreement": float(np.min(same)),
            "mean_accuracy_linearsvc": float(np.mean(acc_lin)), "mean_accuracy_svc": float(np.mean(acc_svc))}


def main() -> None:
    from ihs.analysis.probes import probe_store
    from ihs.store import ActivationStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="a real store directory (default: synthetic)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=31, help="layer indices (L+1) of the synthetic store")
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--classifiers", default="diffmean,logreg,svm,mlp")
    ap.add_argument("--jobs", default="1,2", help="worker counts to time")
    ap.add_argument("--mlp-jobs", default="2", help="worker counts for the (slow) MLP")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args()

    store = ActivationStore.load(args.store) if args.store else synthetic(args.n, args.layers, args.dim)
    shape = tuple(int(v) for v in store.hidden.shape)
    print(f"data: {args.store or 'synthetic'} shape {shape} (N, L+1, d); cpu cores: {os.cpu_count()}", flush=True)
    rows = []
    plan = []
    for clf in args.classifiers.split(","):
        plan.append((clf, 1, False))  # the probe alone: 5 fits per layer
        plan.extend((clf, int(j), True) for j in (args.mlp_jobs if clf == "mlp" else args.jobs).split(","))
    for clf, jobs, control in plan:
        load = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        res = probe_store(store, [clf], mode="cv", folds=5, control=control, bow=False, n_jobs=jobs)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        entry = res["classifiers"][clf]
        rows.append({"classifier": clf, "n_jobs": jobs, "control": control, "seconds": wall,
                     "cpu_seconds": cpu if jobs == 1 else None, "load_average_before": load,
                     "fits": (5 * (1 + control) + int(bool(res["sets"]))) * len(res["layers"]),
                     "first_layer_95": entry["first_layer_95"], "best_accuracy": entry["best_accuracy"],
                     "mean_control": float(np.mean(entry["control_accuracy"])) if control else None,
                     "not_converged_fits": entry["not_converged_fits"]})
        print(f"{clf:9s} n_jobs={jobs} control={'on ' if control else 'off'}: {wall:6.1f} s wall"
              + (f", {cpu:6.1f} s CPU" if jobs == 1 else "") + f" for {rows[-1]['fits']} fits (load {load:.1f}) "
              f"(first >=0.95 at layer {entry['first_layer_95']}, best {entry['best_accuracy']:.3f}"
              + (f", control {rows[-1]['mean_control']:.3f}" if control else "")
              + f", {entry['not_converged_fits']} fits not converged)", flush=True)
    sample = list(range(0, shape[1], max(1, shape[1] // 6)))
    agree = {}
    for kind, shuffle in (("real labels", False), ("shuffled labels", True)):
        a = agree[kind] = svm_agreement(store, sample, shuffle=shuffle)
        print(f"svm, {kind}: SVC(kernel='linear') {a['svc_seconds']:.2f} s vs LinearSVC(hinge) "
              f"{a['linearsvc_seconds']:.2f} s for {a['fits']} fits; predictions agree on "
              f"{a['prediction_agreement']:.4f} (worst fold {a['min_fold_agreement']:.3f}); mean accuracy "
              f"{a['mean_accuracy_svc']:.4f} vs {a['mean_accuracy_linearsvc']:.4f}", flush=True)
    result = {"command": shlex.join(["python", *sys.argv]), "data": args.store or "synthetic", "shape": shape, "cpu_count": os.cpu_count(),
              "machine": platform.platform(), "protocol": "cv, 5 folds, shuffled-label control",
              "timings": rows, "svm_agreement": agree}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    if args.figure:
        figure(result, args.figure)


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["timings"]
    labels = [f"{r['classifier']}\n{'+control' if r['control'] else 'probe only'}\nn_jobs={r['n_jobs']}" for r in rows]
    fig, ax = plt.subplots(figsize=(0.8 * len(rows) + 2, 3.8))
    x = np.arange(len(rows))
    wall = ax.bar(x - 0.2, [r["seconds"] for r in rows], 0.4, color="tab:blue", label="wall")
    ax.bar(x + 0.2, [r["cpu_seconds"] or 0 for r in rows], 0.4, color="tab:orange", label="CPU (n_jobs=1 only)")
    for bar, r in zip(wall, rows, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['seconds']:.0f}", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("seconds, all layers")
    ax.legend(fontsize=8)
    n, layers, d = result["shape"]
    loads = [r["load_average_before"] for r in rows]
    ax.set_title(f"probe fitting: {n} prompts x {layers} layers x d={d}, 5-fold CV "
                 f"({result['cpu_count']} cores, load average {min(loads):.1f}-{max(loads):.1f})", fontsize=9)
    fig.text(0.01, -0.01, result.get("command", "python benchmarks/bench_probes.py"), fontsize=7, color="0.35",
             va="top", family="monospace")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")


if __name__ == "__main__":
    main()
