"""Per-layer probes: a planted signal is found exactly where it was planted, shuffled labels stay at
chance, paper mode equals an independent sklearn computation, controls and transfer add up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from typer.testing import CliRunner

from ihs.analysis.probes import (
    DiffMeanProbe,
    LayerwiseProbe,
    cross_store_transfer,
    dedupe_rows,
    default_classes,
    make_classifier,
    parse_classifiers,
    probe_store,
    probe_stores,
    wilson_interval,
)
from ihs.errors import IhsError, StoreError
from ihs.layers import parse_layers
from ihs.store import ActivationStore, StoreWriter

PLANTED = (3, 4, 5)
L, D = 7, 24  # layers 0..7


def planted(n_per: int = 60, layers=PLANTED, strength: float = 3.0, seed: int = 0, classes=("normal", "malicious"),
            extra: dict | None = None, model: str = "m1") -> ActivationStore:
    """Classes separated along one random direction in ``layers`` only; isotropic noise elsewhere.

    ``extra`` maps a transfer label to (n, side): side +1 puts its rows on the malicious side in the
    planted layers, -1 on the normal side, 0 leaves them as noise.
    """
    rng = np.random.default_rng(seed)
    k = len(classes)
    n = n_per * k
    labels = [c for c in classes for _ in range(n_per)]
    H = rng.normal(size=(n, L + 1, D)).astype(np.float32)
    dirs = rng.normal(size=(k, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), n_per)
    for layer in layers:
        if k == 2:
            H[:, layer] += (np.where(y == 1, 1, -1)[:, None] * strength * dirs[0]).astype(np.float32)
        else:
            H[:, layer] += (strength * 1.5 * dirs[y]).astype(np.float32)
    prompts = [f"prompt {i} of {labels[i][0]}" for i in range(n)]
    tags = [{} for _ in range(n)]
    for lab, (m, side) in (extra or {}).items():
        He = rng.normal(size=(m, L + 1, D)).astype(np.float32)
        for layer in layers:
            He[:, layer] += (side * strength * dirs[0]).astype(np.float32)
        H = np.concatenate([H, He])
        labels += [lab] * m
        prompts += [f"{lab} {i}" for i in range(m)]
        tags += [{"family": "a" if i % 2 else "b"} for i in range(m)]
    return ActivationStore.from_arrays(H, labels, prompts, tags=tags, manifest={"model": {"id": model}})


def write_store(store: ActivationStore, path: Path) -> Path:
    """Put an in-memory store on disk the way `ihs extract` does (for CLI tests)."""
    records = [{k: r[k] for k in ("id", "text", "label", "dataset", "tags")} for r in store.records]
    manifest = {"format_version": 1, "model": {"id": "tiny", "fingerprint": "f0"}, "num_layers": store.num_layers,
                "hidden_size": store.hidden_size, "chat": False}
    writer = StoreWriter(path, manifest, records).start()
    n, k = len(store), 2
    writer.put(np.arange(n), store.hidden, np.zeros((n, L + 1, k), np.int32), np.zeros((n, L + 1, k), np.float32),
               [{} for _ in range(n)])
    writer.close(lens_tokens={})
    return path


# -- the planted signal, chance, paper mode ----------------------------------------------------


@pytest.mark.parametrize("clf", ["svm", "logreg", "diffmean"])
def test_planted_signal_found_only_in_planted_layers(clf: str) -> None:
    res = probe_store(planted(), [clf], folds=5, bow=False)["classifiers"][clf]
    acc = np.array(res["accuracy"])
    inside = np.isin(np.arange(L + 1), PLANTED)
    assert acc[inside].min() >= 0.95, acc
    assert acc[~inside].max() <= 0.68, acc
    assert res["first_layer_95"] == PLANTED[0] and res["first_layer_95_depth"] == pytest.approx(PLANTED[0] / L)
    assert np.abs(np.array(res["control_accuracy"]) - 0.5).max() < 0.15
    assert min(np.array(res["selectivity"])[inside]) > 0.3
    assert all(lo <= a <= hi for lo, a, hi in zip(res["ci_low"], acc, res["ci_high"], strict=True))
    assert np.array(res["auroc"])[inside].min() > 0.97
    assert len(res["fold_accuracy"][0]) == 5


def test_mlp_finds_the_planted_layers_too() -> None:
    res = probe_store(planted(n_per=40), ["mlp"], folds=3, bow=False, control=False, layers=[0, 4])
    assert res["classifiers"]["mlp"]["accuracy"][1] >= 0.95 > res["classifiers"]["mlp"]["accuracy"][0]


def test_shuffled_labels_stay_at_chance() -> None:
    store = planted(n_per=100)
    rng = np.random.default_rng(1)
    shuffled = ActivationStore.from_arrays(store.hidden, rng.permutation(store.labels), store.prompts)
    res = probe_store(shuffled, ["logreg", "diffmean"], bow=False, control=False)
    for clf in ("logreg", "diffmean"):
        acc = np.array(res["classifiers"][clf]["accuracy"])
        assert np.abs(acc - 0.5).max() < 0.12, (clf, acc)
        assert res["classifiers"][clf]["first_layer_95"] is None


def test_paper_mode_equals_independent_sklearn_split() -> None:
    store = planted(n_per=50, strength=1.0)
    res = probe_store(store, ["svm", "mlp"], mode="paper", bow=False, control=False, layers=[0, 3, 6])
    y = (np.asarray(store.labels) == "malicious").astype(int)  # the paper's codes: normal 0, malicious 1
    for pos, layer in enumerate([0, 3, 6]):
        X_train, X_test, y_train, y_test = train_test_split(store.hidden[:, layer], y, test_size=0.3, random_state=42)
        svm = SVC(kernel="linear").fit(X_train, y_train)  # the paper's SVM: raw, unscaled states
        assert res["classifiers"]["svm"]["accuracy"][pos] == pytest.approx(svm.score(X_test, y_test))
        scaler = StandardScaler().fit(X_train)
        mlp = MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, alpha=0.01, solver="adam", random_state=42,
                            learning_rate_init=0.01).fit(scaler.transform(X_train), y_train)
        assert res["classifiers"]["mlp"]["accuracy"][pos] == pytest.approx(mlp.score(scaler.transform(X_test), y_test))
    assert res["classifiers"]["svm"]["n_test"] == 30


# -- multi-class, controls, transfer -----------------------------------------------------------


def test_multiclass_confusion_matrix_per_layer() -> None:
    store = planted(n_per=30, classes=("normal", "malicious", "jailbreak"))
    res = probe_store(store, ["logreg"], classes=["normal", "malicious", "jailbreak"], bow=False, control=False)
    cm = np.array(res["classifiers"]["logreg"]["confusion"])
    assert cm.shape == (L + 1, 3, 3)
    assert (cm.sum(axis=(1, 2)) == 90).all() and (cm.sum(axis=2) == 30).all()
    assert np.trace(cm[4]) >= 85 and res["positive"] is None
    assert res["classifiers"]["logreg"]["accuracy"][4] > 0.9 and res["classifiers"]["logreg"]["accuracy"][0] < 0.6


def test_contrast_fpr_and_jailbreak_share_on_crafted_sets() -> None:
    store = planted(extra={"contrast": (10, -1), "jailbreak": (8, 1)})
    # make 3 of the 10 contrast rows look malicious in the planted layers
    H = store.hidden.copy()
    rows = np.flatnonzero(store.labels == "contrast")[:3]
    mal_mean = H[store.labels == "malicious"].mean(axis=0)
    H[rows] = mal_mean[None]
    crafted = ActivationStore.from_arrays(H, store.labels, store.prompts, tags=[r["tags"] for r in store.records])
    res = probe_store(crafted, ["diffmean"], bow=True, control=False)
    entry = res["classifiers"]["diffmean"]
    for layer in PLANTED:
        assert entry["contrast_fpr"][layer] == pytest.approx(0.3)
        assert entry["jailbreak_called_malicious"][layer] == pytest.approx(1.0)
    fam = res["sets"]["jailbreak"]["classifiers"]["diffmean"]["by_family"]
    assert set(fam) == {"a", "b"} and fam["a"]["share_positive"][4] == 1.0
    assert res["sets"]["contrast"]["n"] == 10 and "contrast_fpr" in res["bow"]
    assert res["sets"]["jailbreak"]["classifiers"]["diffmean"]["at_first_95"]["malicious"] == 1.0


def test_cross_store_transfer_and_model_check() -> None:
    a, b = planted(seed=0), planted(seed=0)
    b = ActivationStore.from_arrays(b.hidden, b.labels, [p + " (b)" for p in b.prompts], manifest={"model": {"id": "m1"}})
    res = cross_store_transfer(a, b, ["normal", "malicious"], ["diffmean"])
    acc = res["classifiers"]["diffmean"]["accuracy"]
    assert min(acc[i] for i in PLANTED) > 0.95 and acc[0] < 0.7 and res["n_test"] == 120
    other = planted(model="m2")
    with pytest.raises(StoreError):
        cross_store_transfer(a, other, ["normal", "malicious"], ["diffmean"])
    both = probe_stores({"a": a, "b": b, "c": other}, ["diffmean"], bow=False, control=False)
    assert [(t["train"], t["test"]) for t in both["cross_transfer"]] == [("a", "b"), ("b", "a")]


def test_duplicates_removed_before_splitting() -> None:
    keep, info = dedupe_rows(["a b", "A  b", "c", "d", "d"], ["x", "x", "x", "x", "y"])
    assert keep.tolist() == [0, 2] and info["duplicates_dropped"] == 1 and info["conflicts_dropped"] == 2
    store = planted(n_per=30)
    H = np.concatenate([store.hidden, store.hidden[:10]])
    dup = ActivationStore.from_arrays(H, list(store.labels) + list(store.labels[:10]),
                                      store.prompts + store.prompts[:10])
    res = probe_store(dup, ["diffmean"], bow=False, control=False, layers=[4])
    assert res["n"] == {"normal": 30, "malicious": 30} and res["dedupe"]["duplicates_dropped"] == 10


def test_last_token_confound_is_flagged() -> None:
    store = planted(layers=(0, 4))
    texts = [p + ("." if lab == "normal" else "") for p, lab in zip(store.prompts, store.labels, strict=True)]
    res = probe_store(ActivationStore.from_arrays(store.hidden, store.labels, texts), ["diffmean"], bow=False,
                      control=False)
    conf = res["confound"]
    assert conf["warn"] and "--final-punct" in conf["message"] and res["warnings"]
    assert conf["ends_with_punct"] == {"normal": 1.0, "malicious": 0.0}
    clean = probe_store(planted(), ["diffmean"], bow=False, control=False)
    assert not clean["confound"]["warn"] and not clean["warnings"]
    # chat template: layer 0 identical for all prompts (blind), yet the prompts' endings differ by class
    H = store.hidden.copy()
    H[:, 0] = 1.0
    chat = probe_store(ActivationStore.from_arrays(H, store.labels, texts), ["diffmean"], bow=False, control=False)
    assert chat["confound"]["layer0_distinct_states"] == 1 and chat["classifiers"]["diffmean"]["accuracy"][0] == 0.5
    assert chat["confound"]["warn"] and "cannot show" in chat["confound"]["message"]


# -- estimators and helpers --------------------------------------------------------------------


def test_diffmean_probe_is_the_midpoint_rule() -> None:
    X = np.array([[0.0, 0], [0, 2], [4, 0], [4, 2]])
    y = np.array(["n", "n", "m", "m"])
    p = clone(DiffMeanProbe()).fit(X, y)
    assert p.classes_.tolist() == ["m", "n"]
    np.testing.assert_allclose(p.direction_, [-4, 0])
    assert p.predict(np.array([[1.0, 5], [3, -5]])).tolist() == ["n", "m"]
    X3 = np.array([[0.0, 0], [10, 0], [0, 10]])
    p3 = DiffMeanProbe().fit(X3, [0, 1, 2])
    assert p3.predict(np.array([[9.0, 1], [1, 8]])).tolist() == [1, 2]


def test_layerwise_probe_estimator_api() -> None:
    store = planted(n_per=30)
    probe = LayerwiseProbe("logreg", layers=[0, 4]).fit(store.hidden, store.labels)
    assert probe.predict(store.hidden).shape == (2, 60)
    score = probe.score(store.hidden, store.labels)
    assert score.shape == (2,) and score[1] == 1.0
    cv = LayerwiseProbe("diffmean").cross_validate(store.hidden, store.labels, folds=3)
    assert cv["first_layer_95"] == 3 and len(cv["accuracy"]) == L + 1


def test_helpers_and_errors() -> None:
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0
    assert parse_classifiers("SVM, diffmean,svm") == ["svm", "diffmean"]
    with pytest.raises(IhsError, match="unknown classifier"):
        parse_classifiers("svm,forest")
    with pytest.raises(IhsError):
        make_classifier("svm", mode="other")
    assert parse_layers("0-2,5", 7) == [0, 1, 2, 5]
    with pytest.raises(IhsError, match="outside 0..7"):
        parse_layers("9", 7)
    assert default_classes(["jailbreak", "malicious", "normal", "contrast"]) == ["normal", "malicious"]
    one = ActivationStore.from_arrays(np.zeros((6, 2, 3), np.float32), ["normal"] * 6)
    with pytest.raises(StoreError, match="only one class"):
        probe_store(one, ["svm"])


# -- command line ------------------------------------------------------------------------------


def test_cli_end_to_end_and_bad_input(tmp_path: Path) -> None:
    from ihs.cli import app

    runner = CliRunner()
    a = write_store(planted(n_per=30, extra={"contrast": (6, -1), "jailbreak": (6, 1)}), tmp_path / "a")
    out = tmp_path / "out"
    res = runner.invoke(app, ["probe", str(a), "--classifiers", "diffmean", "--folds", "3",
                              "--names", "$aligned$", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "probe.json").read_text())
    assert [s["name"] for s in data["stores"]] == ["$aligned$"]  # '$' would start matplotlib math text
    entry = data["stores"][0]["classifiers"]["diffmean"]
    for key in ("accuracy", "ci_low", "ci_high", "auroc", "control_accuracy", "first_layer_95"):
        assert key in entry
    assert entry["first_layer_95"] == 3 and data["command"].startswith("ihs probe")
    for fig in ("probe_accuracy.png", "probe_accuracy.svg", "probe_transfer.png"):
        assert (out / fig).stat().st_size > 1000

    one = write_store(ActivationStore.from_arrays(np.zeros((6, L + 1, D), np.float32), ["normal"] * 6), tmp_path / "one")
    for args, needle in (
        ([str(tmp_path / "missing")], "no activation store"),
        ([str(one)], "only one class"),
        ([str(a), "--classifiers", "svm,forest"], "unknown classifier"),
    ):
        res = runner.invoke(app, ["probe", *args, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2, res.output
        assert needle in res.output and res.output.strip().count("\n") == 0, res.output
