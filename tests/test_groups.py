"""Leave-group-out protocol: splits never share a group or a goal, a planted shortcut fails the check
while a real planted signal passes it, the threshold comes from the training side, bad input errors."""

from __future__ import annotations

import numpy as np
import pytest

from ihs.analysis import groups as G
from ihs.data.builtin import load_builtin
from ihs.errors import IhsError

FAMILIES = ("alpha", "beta", "gamma", "delta", "epsilon")


def _records(n_per_class: int = 20, families: tuple[str, ...] = FAMILIES, seed: int = 0) -> list[dict]:
    """Each family holds n benign and n malicious rows; rows i of two neighbouring families share a goal."""
    rng = np.random.default_rng(seed)
    words = ["river", "cloud", "lamp", "table", "garden", "violin", "pencil", "harbour", "meadow", "kettle"]
    recs = []
    for f_i, fam in enumerate(families):
        for cls in ("normal", "malicious"):
            for i in range(n_per_class):
                goal = f"{cls}-{(f_i // 2) * 100 + i}"  # families 0-1, 2-3 share goals; 4 has its own
                text = " ".join(rng.choice(words, size=6)) + f" {fam} {cls[0]}{f_i}{i}"
                recs.append({"id": f"{fam}-{cls}-{i}", "text": text, "label": cls, "dataset": "synthetic",
                             "tags": {"family": fam, "goal_id": goal}})
    return recs


def _goal_of(records: list, idx: np.ndarray) -> set[str]:
    out = set()
    for i in idx:
        r = records[i]
        tags = r["tags"] if isinstance(r, dict) else r.tags
        for t in ("goal_id", "goal_source_id", "src_id"):
            if tags.get(t):
                out.add(str(tags[t]))
        dataset = r["dataset"] if isinstance(r, dict) else r.dataset
        if tags.get("source_id") and str(dataset).startswith("builtin:"):
            out.add(str(tags["source_id"]))
    return out


# -- splits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("benign", ["pool", "own"])
def test_splits_never_put_a_group_or_goal_on_both_sides(benign: str) -> None:
    recs = _records()
    values = G.group_values(recs, "family")
    comp = G.goal_components(recs)
    splits = G.group_splits(recs, "family", benign=benign, seed=3)
    assert [s.group for s in splits] == sorted(FAMILIES)
    for s in splits:
        assert len(np.intersect1d(s.train, s.test)) == 0
        assert len(s.train) + len(s.test) == len(recs)
        assert s.group not in set(values[s.train])
        assert set(s.held) <= set(s.test) and set(s.moved) <= set(s.test) and set(s.evaluate) <= set(s.test)
        assert not set(comp[s.train]) & set(comp[s.test])
        assert not _goal_of(recs, s.train) & _goal_of(recs, s.test)
        partner = {"alpha": "beta", "beta": "alpha", "gamma": "delta", "delta": "gamma"}.get(s.group)
        moved_fams = set(values[s.moved])
        assert moved_fams == ({partner} if partner else set()), (s.group, moved_fams)
    if benign == "pool":  # one fixed pool (a pool row of the held group counts as held), never trained on
        pool_rows = set().union(*(set(s.pool) for s in splits))
        assert pool_rows
        for s in splits:
            assert set(s.pool) == pool_rows - set(s.held)
            assert not pool_rows & set(s.train), "a pool row trained"
    else:
        assert all(len(s.pool) == 0 and np.array_equal(s.evaluate, s.held) for s in splits)
    pairs = list(G.leave_one_group_out(recs, "family", benign=benign, seed=3))
    assert all(np.array_equal(a, s.train) and np.array_equal(b, s.test) for (a, b), s in zip(pairs, splits, strict=True))


def test_goal_links_cover_ids_texts_and_builtin_source_ids() -> None:
    recs = [
        {"id": "a", "text": "Same prompt", "label": "normal", "dataset": "x.csv", "tags": {"source_id": "1"}},
        {"id": "b", "text": "same   PROMPT", "label": "normal", "dataset": "y.csv", "tags": {"source_id": "1"}},
        {"id": "c", "text": "other", "label": "malicious", "dataset": "builtin:malicious",
         "tags": {"source_id": "malicious-0001"}},
        {"id": "d", "text": "wrapped other", "label": "jailbreak", "dataset": "builtin:jailbreak",
         "tags": {"goal_id": "c", "goal_source_id": "malicious-0001"}},
        {"id": "e", "text": "third", "label": "malicious", "dataset": "builtin:reformulated",
         "tags": {"goal_id": "malicious-0001"}},
        {"id": "f", "text": "unrelated", "label": "normal", "dataset": "z.csv", "tags": {"source_id": "1"}},
        {"id": "g", "text": "autre", "label": "malicious", "dataset": "builtin:multilingual",
         "tags": {"src_id": "malicious-0001", "source_id": "fr-malicious-0001", "lang": "fr"}},
    ]
    comp = G.goal_components(recs)
    assert comp[0] == comp[1]  # duplicate text, although the user files' row ids differ in meaning
    assert comp[2] == comp[3] == comp[4] == comp[6]
    assert comp[5] != comp[0] and comp[5] != comp[2]  # "1" in z.csv is not "1" in x.csv


def test_real_sets_keep_every_goal_on_one_side() -> None:
    recs = [r for n in ("normal", "malicious", "contrast", "jailbreak", "wrapped", "reformulated", "buried")
            for r in load_builtin(n)]
    for key in ("family", "reformulation", "category", "dataset"):
        for s in G.group_splits(recs, key, seed=0):
            assert not _goal_of(recs, s.train) & _goal_of(recs, s.test), (key, s.group)
            assert s.group not in set(G.group_values(recs, key)[s.train])


def test_pool_gives_single_class_groups_the_other_class() -> None:
    recs = _records()
    # malicious rows grouped by family, benign rows ungrouped
    for r in recs:
        if r["label"] == "normal":
            del r["tags"]["family"]
    y = G.binary_labels(recs)
    for s in G.group_splits(recs, "family", benign="pool", pool_fraction=0.25, seed=1):
        assert y[s.held].all()
        ev = s.evaluate
        assert (~y[ev]).sum() > 0 and set(ev[~y[ev]]) <= set(s.pool)
    for s in G.group_splits(recs, "family", benign="own"):
        assert y[s.evaluate].all()
    X = np.random.default_rng(0).normal(size=(len(recs), 3))
    X[:, 0] += 3 * y
    own = G.evaluate_groups(recs, G.features_scorer(X), "family", benign="own", baseline=False, progress=False)
    assert all(m["auroc"] is None and m["fpr"] is None and m["tpr"] is not None for m in own["groups"].values())
    pool = G.evaluate_groups(recs, G.features_scorer(X), "family", baseline=False, progress=False)
    assert all(m["auroc"] > 0.9 and m["n_benign"] > 0 for m in pool["groups"].values())


# -- the check itself -------------------------------------------------------------------------------


def _planted(kind: str, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    recs = _records(n_per_class=24, seed=seed)
    y = G.binary_labels(recs)
    fam = G.group_values(recs, "family")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(recs), 12))
    if kind == "real":  # one direction marks malicious in every family
        X[:, 0] += 2.5 * np.where(y, 1.0, -1.0)
    elif kind == "shortcut":  # each family's own feature marks malicious only inside that family
        for f_i, f in enumerate(FAMILIES):
            m = fam == f
            X[m, 1 + f_i] += 4.0 * np.where(y[m], 1.0, -1.0)
    return recs, X


def test_planted_shortcut_fails_leave_group_out_and_real_signal_passes() -> None:
    recs, X = _planted("shortcut")
    short = G.shortcut_check(recs, G.features_scorer(X), "family", baseline=False, progress=False)
    assert short["auroc_random"] > 0.95
    assert short["auroc_groups_worst"] < 0.75 and short["auroc_groups_mean"] < 0.75
    assert not short["passes"]
    recs, X = _planted("real")
    real = G.shortcut_check(recs, G.features_scorer(X), "family", baseline=False, progress=False)
    assert real["auroc_random"] > 0.95 and real["auroc_groups_worst"] > 0.9
    assert real["passes"]
    # rates at the training-side threshold hold for the real signal
    summary = real["groups"]["summary"]
    assert summary["mean_tpr"] > 0.8 and summary["mean_fpr"] < 0.25
    recs, X = _planted("none")
    null = G.shortcut_check(recs, G.features_scorer(X), "family", baseline=False, progress=False)
    assert null["auroc_random"] < 0.7


def test_bag_of_words_baseline_runs_under_the_same_splits_and_falls_for_a_token_shortcut() -> None:
    recs, X = _planted("real", seed=1)
    y = G.binary_labels(recs)
    for r, mal in zip(recs, y, strict=True):  # a token that marks malicious rows, different in each family
        if mal:
            r["text"] += f" zz{r['tags']['family']}"
    res = G.evaluate_groups(recs, G.features_scorer(X), "family", progress=False)
    base = res["baseline"]
    assert base is not None and set(base["groups"]) == set(res["groups"])
    for g, m in res["groups"].items():
        assert base["groups"][g]["n_held"] == m["n_held"] and base["groups"][g]["n_train"] == m["n_train"]
    assert res["summary"]["worst_auroc"] > 0.9
    assert base["summary"]["mean_auroc"] < 0.75
    rand = G.evaluate_random(recs, G.bow_scorer([r["text"] for r in recs]), progress=False)
    assert rand["summary"]["mean_auroc"] > 0.95


def test_threshold_is_chosen_on_the_training_side_only() -> None:
    recs, X = _planted("real")
    calls: list[tuple[str, np.ndarray]] = []
    inner = G.features_scorer(X)

    def spy(train: np.ndarray, y_train: np.ndarray):
        calls.append(("fit", train.copy()))
        score = inner(train, y_train)

        def scored(idx: np.ndarray) -> np.ndarray:
            calls.append(("score", idx.copy()))
            return score(idx)

        return scored

    res = G.evaluate_groups(recs, spy, "family", target_fpr=0.1, baseline=False, progress=False)
    splits = G.group_splits(recs, "family")
    assert [c[0] for c in calls] == ["fit", "score", "score"] * len(splits)
    y = G.binary_labels(recs)
    for n, s in enumerate(splits):
        fit, cal, test = calls[3 * n][1], calls[3 * n + 1][1], calls[3 * n + 2][1]
        assert set(fit) | set(cal) == set(s.train) and not set(fit) & set(cal)
        assert np.array_equal(test, s.test)
        cal_scores = inner(fit, y[fit])(cal)
        assert res["groups"][s.group]["threshold"] == pytest.approx(
            G.calibrate_threshold(cal_scores[~y[cal]], 0.1))
        assert res["groups"][s.group]["n_calibration"] == len(cal)


# -- bad input --------------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_raise_one_line_errors() -> None:
    recs = _records(n_per_class=3)
    benign_only = [r for r in recs if r["label"] == "normal"]
    with pytest.raises(IhsError, match="benign and malicious") as e:
        G.group_splits(benign_only, "family")
    _one_line(e)
    with pytest.raises(IhsError, match="0 benign"):
        list(G.leave_one_group_out([r for r in recs if r["label"] == "malicious"], "family"))
    lone = [dict(r, tags=dict(r["tags"])) for r in recs]
    lone[0]["tags"]["family"] = "solo"
    with pytest.raises(IhsError, match="'solo'.*only one row") as e:
        G.group_splits(lone, "family")
    _one_line(e)
    with pytest.raises(IhsError, match="unknown group key 'famly'") as e:
        G.group_splits(recs, "famly")
    _one_line(e)
    with pytest.raises(IhsError, match="unknown benign policy"):
        G.group_splits(recs, "family", benign="rest")
    with pytest.raises(IhsError, match="labels for"):
        G.group_splits(recs, "family", y=np.ones(3, dtype=bool))
    assert len(G.group_splits(recs, "label")) == 2
    with pytest.raises(IhsError, match="1 group"):
        G.group_splits(recs, "dataset")
    with pytest.raises(IhsError, match="neither malicious"):
        G.binary_labels([{"label": "spam"}])
    with pytest.raises(IhsError, match="pool fraction"):
        G.group_splits(recs, "family", pool_fraction=1.5)


def test_group_keys_dataset_label_and_fallbacks() -> None:
    recs = _records(n_per_class=2)
    assert set(G.group_values(recs, "dataset")) == {"synthetic"}
    assert set(G.group_values(recs, "label")) == {"normal", "malicious"}
    recs[0]["tags"]["kind"] = "special"
    del recs[0]["tags"]["family"]
    vals = G.group_values(recs, "family,kind")
    assert vals[0] == "special" and vals[1] == "alpha"
    assert G.group_values(recs, "kind")[1] is None
