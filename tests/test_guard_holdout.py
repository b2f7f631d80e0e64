"""Leave-group-out for the guard: no group or goal on both sides, a planted shortcut fails and a real signal holds,
the threshold meets its target on every benign kind, and bad input gives one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ihs.analysis.group_splits import goal_components
from ihs.cli import app
from ihs.errors import IhsError
from ihs.guard.bank import FeatureBank
from ihs.guard.features import Features, FeatureSpec
from ihs.guard.fit_pooled import PooledFitOptions, fit_pooled_guard, goal_split, usable_rows
from ihs.guard.grouping import binary_y, group_of, with_class_labels
from ihs.guard.heads import Recipe
from ihs.guard.holdout import (
    bow_method,
    holdout_eval,
    holdout_splits,
    random_folds_eval,
    recipe_method,
    run_splits,
)
from ihs.guard.inputs import data_records
from ihs.guard.metrics import calibrate_by_kind
from ihs.guard.select import SelectOptions, grouped_folds, select_recipe

BUILTIN = ["normal=builtin:normal", "malicious=builtin:malicious", "contrast=builtin:contrast",
           "jailbreak=builtin:jailbreak", "wrapped=builtin:wrapped", "reformulated=builtin:reformulated",
           "alarming=builtin:alarming", "buried=builtin:buried"]


@pytest.fixture(scope="module")
def records():
    return data_records(BUILTIN)


def test_builtin_sets_take_their_class(records):
    y = binary_y(records)
    by_set = {}
    for r, v in zip(records, y, strict=True):
        by_set.setdefault(r["dataset"], set()).add(bool(v))
    assert by_set["builtin:wrapped"] == {False} and by_set["builtin:alarming"] == {False}
    assert by_set["builtin:reformulated"] == {True} and by_set["builtin:buried"] == {False, True}
    with pytest.raises(IhsError, match="neither benign"):
        binary_y(with_class_labels([{"label": "advbench", "dataset": "x.csv", "tags": {}}]))


@pytest.mark.parametrize("key", ["family", "category:malicious", "kind", "reformulation", "dataset", "benign-kind"])
def test_no_group_or_goal_on_both_sides(records, key):
    y = binary_y(records)
    values = group_of(records, key, y)
    comp = goal_components(records)
    for name, train, test, evaluate, _info in holdout_splits(records, y, values, seed=1):
        held = np.flatnonzero(values == name)
        assert not np.isin(values[train], [name]).any()  # the group never trains
        assert not np.isin(comp[train], comp[held]).any()  # nor any goal it touches
        assert not np.intersect1d(train, test).size and np.isin(evaluate, test).all()
        assert set(held) <= set(evaluate)
    # the guard's own selection folds and its fit split keep goals whole too
    for fold in grouped_folds(records, y, "auto", 4, seed=2):
        scored = np.concatenate(list(fold.groups.values()))
        assert not np.isin(comp[fold.train], comp[scored]).any()
    split = goal_split(records, y, 0.2, 0.25, seed=3)
    sides = [set(comp[v].tolist()) for v in split.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert not y[split["calibration"]].any()


def test_every_split_calibrates_on_training_rows_only(records):
    """run_splits: the threshold's rows are training-side rows the method was not fitted on."""
    y = binary_y(records)
    seen = []

    def factory(train, y_train):
        seen.append(set(train.tolist()))
        return lambda rows: np.zeros(len(rows))

    from ihs.guard.holdout import Method

    values = group_of(records, "kind", y)
    splits = holdout_splits(records, y, values)
    run_splits(splits, [Method("spy", factory)], y, records, progress=False)
    comp = goal_components(records)
    for fitted, (_, train, test, _, _) in zip(seen, splits, strict=True):
        assert fitted < set(train.tolist()) and not fitted & set(test.tolist())
        calib = set(train.tolist()) - fitted
        assert calib and not np.isin(comp[list(calib)], comp[list(fitted)]).any()


def synthetic(n_groups: int = 8, per: int = 24, d: int = 12, seed: int = 0):
    """Records in ``n_groups`` families, each half benign half malicious, and features at three layers:
    layer 0 noise, layer 1 a planted shortcut (each family separates its classes along its *own* direction,
    strongly), layer 2 a real signal (one direction shared by every family, weaker)."""
    rng = np.random.default_rng(seed)
    recs, X = [], np.zeros((n_groups * per, 3, d))
    dirs = np.linalg.qr(rng.normal(size=(d, d)))[0]
    for g in range(n_groups):
        for i in range(per):
            mal = i % 2 == 1
            row = g * per + i
            recs.append({"id": f"g{g}-{i}", "text": f"prompt {g} {i} " + ("bad" if mal else "good") * (i % 3),
                         "label": "malicious" if mal else "normal", "dataset": f"set{g % 2}",
                         "tags": {"family": f"f{g}", "goal_id": f"goal-{g}-{i}"}})
            X[row] = rng.normal(size=(3, d))
            sign = 1.0 if mal else -1.0
            X[row, 1] += 4.0 * sign * dirs[g % (d - 1)]
            X[row, 2] += 1.2 * sign * dirs[d - 1]
    return recs, Features({"last": X}, {"last": [0, 1, 2]})


def test_a_planted_shortcut_fails_leave_group_out_and_a_real_signal_holds():
    recs, feats = synthetic()
    shortcut, real = Recipe(layers=(1,)), Recipe(layers=(2,))
    methods = [recipe_method(feats, shortcut, "shortcut"), recipe_method(feats, real, "real")]
    rand = random_folds_eval(recs, methods, folds=4, target_fpr=0.05, progress=False)["summary"]
    logo = holdout_eval(recs, "family", methods, target_fpr=0.05, progress=False)["summary"]
    assert rand["shortcut"]["mean_auroc"] > 0.97 and rand["real"]["mean_auroc"] > 0.85
    assert logo["shortcut"]["worst_auroc"] < 0.75  # the check catches it
    assert logo["real"]["worst_auroc"] > 0.8
    # and the guard's selection, which holds families out, picks the real signal despite the shortcut's CV score
    y = binary_y(recs)
    chosen = select_recipe(feats, recs, y, SelectOptions(poolings=["last"], heads=["logreg"], refusal=False,
                                                         key="family", folds=4))
    assert chosen["chosen"]["layers"] == [2], chosen["candidates"]
    # shuffled labels find nothing under the same protocol
    rng = np.random.default_rng(1)
    shuffled = [dict(r, label=lab) for r, lab in zip(recs, rng.permutation([r["label"] for r in recs]), strict=True)]
    s = holdout_eval(shuffled, "family", [recipe_method(feats, real, "real")], progress=False)["summary"]["real"]
    assert s["mean_auroc"] < 0.7


def test_bag_of_words_runs_under_the_same_splits():
    recs, feats = synthetic()
    res = holdout_eval(recs, "family", [recipe_method(feats, Recipe(layers=(2,)), "real"),
                                        bow_method([r["text"] for r in recs])], progress=False)
    for entry in res["groups"].values():
        assert entry["real"]["n_benign"] == entry["bag-of-words"]["n_benign"]
        assert entry["real"]["n_malicious"] == entry["bag-of-words"]["n_malicious"]


def test_calibration_meets_its_target_on_every_benign_kind():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 1, 200), rng.normal(2, 1, 60), rng.normal(-1, 1, 90)])
    kinds = ["a"] * 200 + ["b"] * 60 + ["c"] * 90
    t, per = calibrate_by_kind(scores, kinds, 0.02)
    for k, v in per.items():
        assert v["fpr"] <= 0.02 and v["n"] == kinds.count(k)
    assert max(v["threshold"] for v in per.values()) < t < max(v["threshold"] for v in per.values()) + 1e-3
    # the pooled rule would miss the target on kind b
    from ihs.guard.metrics import calibrate_threshold

    pooled = calibrate_threshold(scores, 0.02)
    assert np.mean(scores[200:260] > pooled) > 0.02


def bank_of(recs, feats, model=None):
    return FeatureBank(recs, feats, model or {"name": "synthetic", "num_layers": 2, "hidden_size": 12},
                       FeatureSpec(pooled={"last": [0, 1, 2]}))


def test_fitted_guard_holds_its_target_per_kind_on_the_calibration_split():
    recs, feats = synthetic(n_groups=8, per=40)
    for r in recs:
        if r["label"] == "normal":
            r["dataset"] = ["normal", "contrast", "wrapped"][int(r["id"].split("-")[1]) % 3]
    guard = fit_pooled_guard(bank_of(recs, feats), PooledFitOptions(
        select=SelectOptions(poolings=["last"], heads=["logreg"], refusal=False, key="family", folds=4),
        target_fpr=0.02))
    per = guard.card["calibration_by_kind"]
    assert set(per) == {"normal", "contrast", "wrapped"}
    rows, y = usable_rows(recs, ("normal",), ("malicious",))
    ids = set(guard.card["splits"]["ids"]["calibration"])
    cal = [i for i, r in enumerate(recs) if r["id"] in ids]
    logits = guard.decision_features(feats.subset(cal))
    kinds = np.array([recs[i]["dataset"] for i in cal])
    for k in per:
        assert np.mean(logits[kinds == k] > guard.threshold_logit) <= 0.02
        assert per[k]["fpr"] <= 0.02
    assert guard.layer == 2 and guard.card["test"]["overall"]["auroc"] > 0.8


def test_bad_input_is_a_one_line_error(records):
    y = binary_y(records)
    with pytest.raises(IhsError, match="unknown group key 'nonsense'"):
        group_of(records, "nonsense", y)
    with pytest.raises(IhsError, match="only one prompt"):
        holdout_eval([dict(r, tags={**r["tags"], "odd": "x" if i == 0 else "y"}) for i, r in enumerate(records[::20])],
                     "odd", [], progress=False)
    recs, feats = synthetic()
    with pytest.raises(IhsError, match="needs benign and malicious"):
        holdout_eval([r for r in recs if r["label"] == "malicious"], "family", [], progress=False)


def test_cli_eval_errors_and_holdout(tmp_path):
    recs, feats = synthetic(per=30)
    bank = bank_of(recs, feats)
    bank.save(tmp_path / "bank")
    runner = CliRunner()
    r = runner.invoke(app, ["guard", "fit", "--bank", str(tmp_path / "bank"), "--kind", "last@2/logreg",
                            "--out", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["guard", "eval", str(tmp_path / "g"), "--holdout", "family", "--random-folds", "3",
                            "--compare", "shortcut=last@1/logreg", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    summary = ev["holdout"]["keys"]["family"]["summary"]
    assert summary["guard"]["worst_auroc"] > summary["shortcut"]["worst_auroc"]
    assert "Leave-one-family-out" in (tmp_path / "ev" / "eval.md").read_text()
    for argv, message in [
        (["--holdout", "nonsense"], "unknown group key"),
        (["--holdout", "goal_id"], "only one prompt"),
        (["--holdout", "family", "--benign-policy", "sometimes"], "unknown benign policy"),
    ]:
        r = runner.invoke(app, ["guard", "eval", str(tmp_path / "g"), *argv])
        assert r.exit_code == 2 and message in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1
