"""How much bfloat16 extraction changes probe accuracy: per-layer table from `ihs probe` on two stores.

Usage: .venv/bin/python benchmarks/bf16_probe_table.py benchmarks/results/probes_bf16_vs_f32.json
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(path: str) -> None:
    data = json.load(open(path))
    stores = {s["name"]: s for s in data["stores"]}
    f32, bf16 = stores["float32"], stores["bfloat16"]
    for clf in f32["classifiers"]:
        a = np.array(f32["classifiers"][clf]["accuracy"])
        b = np.array(bf16["classifiers"][clf]["accuracy"])
        diff = b - a
        print(f"{clf}: first layer >= 0.95 float32 {f32['classifiers'][clf]['first_layer_95']}, "
              f"bfloat16 {bf16['classifiers'][clf]['first_layer_95']}; best {a.max():.3f} "
              f"(layer {int(a.argmax())}) vs {b.max():.3f} (layer {int(b.argmax())}); "
              f"per-layer difference mean {diff.mean():+.4f}, largest |diff| {np.abs(diff).max():.4f} "
              f"at layer {int(np.abs(diff).argmax())}, n={f32['n']}")
    layers = f32["layers"]
    print("\n| layer | " + " | ".join(f"{c} f32 | {c} bf16" for c in f32["classifiers"]) + " |")
    print("|---" * (1 + 2 * len(f32["classifiers"])) + "|")
    for i, layer in enumerate(layers):
        if layer % 5 and layer != layers[-1]:
            continue
        cells = []
        for clf in f32["classifiers"]:
            cells += [f"{f32['classifiers'][clf]['accuracy'][i]:.3f}", f"{bf16['classifiers'][clf]['accuracy'][i]:.3f}"]
        print(f"| {layer} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/probes_bf16_vs_f32.json")
