"""The guard on the real SmolLM2: early-exit scores equal scores from a full extraction pass."""

from __future__ import annotations

import numpy as np
import pytest

from ihs.extraction import ExtractOptions, extract
from ihs.guard import Guard

pytestmark = pytest.mark.slow


def test_early_exit_score_equals_full_pass_on_smollm2():
    from ihs.data.prepare import prepare
    from ihs.models.loading import load_model

    lm = load_model("smollm2-135m-instruct")
    records, _ = prepare(["normal=builtin:normal", "malicious=builtin:malicious"], limit=12)
    store = extract(lm, records, None, ExtractOptions(batch_size=8), progress=False)
    y = (store.labels == "malicious").astype(int)
    for layer in (0, 5, lm.num_layers):
        guard = Guard.fit_states(store.hidden[:, layer], y, layer=layer, calibration=store.hidden[y == 0, layer],
                                 model=store.manifest, folds=3).attach(lm)
        early = guard.score(store.prompts, batch_size=8)
        full = guard.score_states(store.hidden[:, layer])
        np.testing.assert_allclose(early.probability, full, rtol=0, atol=1e-4)
        # verdicts agree except where float noise between batchings (~1e-6) meets a score at the threshold
        # (calibrated on these very rows, so the top benign score sits exactly on it)
        clear = np.abs(guard.decision_states(store.hidden[:, layer]) - guard.threshold_logit) > 1e-3
        np.testing.assert_array_equal(early.malicious[clear], guard.verdict_states(store.hidden[clear, layer]))
