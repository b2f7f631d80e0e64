"""A tuned lens: one learned affine map per layer into the final layer's space (Belrose et al. 2023).

The logit lens decodes layer l's residual state h_l with the final norm and unembedding as if it
were the last layer's; early layers live in another basis, so their decodings are biased towards
the input token and read as noise. The tuned lens learns, per layer l < L, a translator

    T_l(h) = h + W_l h + b_l        (W_l, b_l start at zero, so training starts at the logit lens)

that minimises KL(p_L || p_l), where p_L is the model's own output distribution at that position
(the lens of the last layer) and p_l the lens of T_l(h_l). The model stays frozen; only the
translators train, on hidden states gathered at positions across text sequences (not only the last
one). Layer L needs no translator. The ``tuned-lens`` package implements the same idea but targets
transformers 4 and loads models itself; this module reuses ihs's loader and anatomy, so it works
on any model ihs can load.

A trained lens is saved inside the store it belongs to, ``STORE/tuned_lens/`` (safetensors weights
plus a JSON of model identity, training data and per-layer KL), and refuses to load for another model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ihs.errors import StoreError
from ihs.hooks import Edit, run_with_hooks
from ihs.models.devices import execution_device
from ihs.models.loading import LoadedModel
from ihs.progress import progress_bar

TUNED_DIR = "tuned_lens"
WEIGHTS = "tuned_lens.safetensors"
META = "tuned_lens.json"


@dataclass
class TunedLens:
    """Translators for layers 0..L-1 (layer L is the identity): ``T_l(h) = h + h W_l^T + b_l``."""

    weight: torch.Tensor  # (L, d, d)
    bias: torch.Tensor  # (L, d)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, num_layers: int, hidden_size: int, meta: dict[str, Any] | None = None) -> TunedLens:
        return cls(torch.zeros(num_layers, hidden_size, hidden_size), torch.zeros(num_layers, hidden_size), dict(meta or {}))

    @property
    def num_layers(self) -> int:
        return int(self.weight.shape[0])

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Map states of layer ``layer`` (any leading shape, last dim d) into the last layer's space."""
        if layer >= self.num_layers:
            return hidden
        w = self.weight[layer].to(hidden.device, hidden.dtype)
        b = self.bias[layer].to(hidden.device, hidden.dtype)
        return hidden + hidden @ w.T + b

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.detach().float().contiguous(), "bias": self.bias.detach().float().contiguous()},
                  str(folder / WEIGHTS))
        (folder / META).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, fingerprint: str | None = None) -> TunedLens:
        """Read a saved lens; with ``fingerprint``, refuse one trained on another model."""
        folder = Path(folder)
        if not (folder / WEIGHTS).exists():
            raise StoreError(f"no tuned lens in {folder} (train one with `ihs lens STORE --tuned`)")
        meta = json.loads((folder / META).read_text(encoding="utf-8")) if (folder / META).exists() else {}
        if fingerprint is not None and meta.get("model_fingerprint") not in (None, fingerprint):
            raise StoreError(f"the tuned lens in {folder} was trained on another model "
                             f"({meta.get('model_fingerprint')}, not {fingerprint}); delete it to retrain")
        tensors = load_file(str(folder / WEIGHTS))
        return cls(tensors["weight"], tensors["bias"], meta)


def tuned_lens_dir(store_path: str | Path) -> Path:
    return Path(store_path) / TUNED_DIR


# -- gathering training states -------------------------------------------------------------------

@torch.inference_mode()
def _continue(lm: LoadedModel, sequences: list[list[int]], new_tokens: int, batch_size: int) -> list[list[int]]:
    """Greedy continuations of each sequence (the model's own answers: in-distribution generic text)."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[list[int]] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):  # left padding for generation
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        gen = lm.model.generate(input_ids=ids.to(lm.input_device), attention_mask=mask.to(lm.input_device),
                                max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        for r, s in enumerate(batch):
            extra = gen[r, width:].tolist()
            eos = tok.eos_token_id
            if eos is not None and eos in extra:
                extra = extra[: extra.index(eos)]
            out.append(list(s) + extra)
    return out


@torch.inference_mode()
def collect_states(
    lm: LoadedModel,
    texts: Sequence[str],
    chat: bool | None = None,
    positions_per_sequence: int = 16,
    max_length: int = 160,
    continue_tokens: int = 0,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Residual states at positions across ``texts``: a tensor (T, L+1, d), float32 on the CPU.

    Each text is formatted as the analyses format it (chat template when the model has one,
    unless ``chat`` says otherwise); with ``continue_tokens`` the model's greedy continuation is
    appended, so answers are covered too. From each sequence up to ``positions_per_sequence``
    positions are drawn at random, never position 0 (the first token's state is an outlier that
    every position attends to, not a prediction).
    """
    from ihs.formatting import format_prompt, uses_chat

    use_chat = uses_chat(lm.tokenizer, chat)
    sequences = [format_prompt(lm.tokenizer, t, use_chat, max_length=max_length).ids for t in texts]
    if continue_tokens > 0:
        with progress_bar("continue", total=1, unit="sets", enabled=progress) as advance:
            sequences = _continue(lm, sequences, continue_tokens, batch_size)
            advance(1)
    rng = np.random.default_rng(seed)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    chunks: list[torch.Tensor] = []
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    with progress_bar("states", total=len(sequences), enabled=progress) as advance:
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start:start + batch_size]]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            picked = torch.zeros((len(batch), width), dtype=torch.bool)  # row-major: rows, then sorted positions
            for r, s in enumerate(batch):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
                candidates = np.arange(1, len(s))
                if len(candidates) == 0:
                    continue
                take = rng.choice(candidates, size=min(positions_per_sequence, len(candidates)), replace=False)
                picked[r, torch.from_numpy(take)] = True
            if not picked.any():
                advance(len(batch))
                continue
            edits = [Edit(layer, "record", positions=picked) for layer in range(lm.num_layers + 1)]
            _, hooks = run_with_hooks(lm, edits, input_ids=ids.to(lm.input_device),
                                      attention_mask=mask.to(lm.input_device), use_cache=False)
            chunks.append(hooks.stacked("cpu").float())
            advance(len(batch))
    if not chunks:
        raise StoreError("no positions to train a tuned lens on (all texts are one token long?)")
    return torch.cat(chunks)


# -- training and evaluation -----------------------------------------------------------------------

def _log_probs(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    device = execution_device(lm.anatomy.final_norm)
    return F.log_softmax(lm.anatomy.lens(hidden.to(device)).float(), dim=-1)


def _kl(target_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(target || pred) per row, in nats."""
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


@torch.no_grad()
def lens_kl(lm: LoadedModel, states: torch.Tensor | np.ndarray, tuned: TunedLens | None = None,
            batch: int = 256) -> np.ndarray:
    """Mean KL(final layer || lens at layer l) over rows of ``states`` (T, L+1, d), per layer (L+1,).

    The final layer's distribution is the lens of index L (the model's own output). With
    ``tuned=None`` this is the logit lens.
    """
    states = torch.as_tensor(states, dtype=torch.float32)
    n_layers = states.shape[1]
    total = torch.zeros(n_layers, dtype=torch.float64)
    for start in range(0, states.shape[0], batch):
        chunk = states[start:start + batch]
        target = _log_probs(lm, chunk[:, -1])
        for layer in range(n_layers):
            h = chunk[:, layer] if tuned is None else tuned.translate(chunk[:, layer], layer)
            total[layer] += _kl(target, _log_probs(lm, h)).double().sum().cpu()
    return (total / max(1, states.shape[0])).numpy()


@torch.no_grad()
def tuned_topk(lm: LoadedModel, tuned: TunedLens, hidden: np.ndarray | torch.Tensor, k: int,
               batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Top-k token ids and logits of the tuned lens for stored states (N, L+1, d): (N, L+1, k) each."""
    hidden = torch.as_tensor(hidden, dtype=torch.float32)
    ids = np.zeros((hidden.shape[0], hidden.shape[1], k), dtype=np.int64)
    vals = np.zeros((hidden.shape[0], hidden.shape[1], k), dtype=np.float32)
    device = execution_device(lm.anatomy.final_norm)
    for start in range(0, hidden.shape[0], batch):
        chunk = hidden[start:start + batch]
        for layer in range(hidden.shape[1]):
            logits = lm.anatomy.lens(tuned.translate(chunk[:, layer], layer).to(device)).float()
            top = torch.topk(logits, k, dim=-1)
            ids[start:start + batch, layer] = top.indices.cpu().numpy()
            vals[start:start + batch, layer] = top.values.cpu().numpy()
    return ids, vals


def train_tuned_lens(
    lm: LoadedModel,
    states: torch.Tensor,
    epochs: int = 3,
    lr: float = 2e-3,
    batch: int = 128,
    warmup: float = 0.1,
    val_fraction: float = 0.1,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> tuple[TunedLens, dict[str, Any]]:
    """Train translators on ``states`` (T, L+1, d) with the model frozen; returns the lens and a report.

    Adam with a linear warm-up over the first ``warmup`` fraction of steps and a linear decay to zero
    after it (residual states are large, so the first steps overshoot without warm-up); all layers
    train on the same minibatches
    but independently (one backward pass per layer keeps memory at one batch of logits). The report
    holds the training time and, on the held-out ``val_fraction`` of positions, the per-layer KL of
    the logit lens and of the tuned lens.
    """
    states = torch.as_tensor(states, dtype=torch.float32)
    n, n_layers, d = states.shape
    num_layers = n_layers - 1
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if len(train_idx) == 0:
        raise StoreError("too few positions to train a tuned lens")
    for p in lm.model.parameters():
        p.requires_grad_(False)
    lens = TunedLens.identity(num_layers, d)
    weight = torch.nn.Parameter(lens.weight.clone())
    bias = torch.nn.Parameter(lens.bias.clone())
    optim = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(train_idx) // batch))
    total_steps = epochs * steps_per_epoch
    warm = max(1, int(round(warmup * total_steps)))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
    train_curve: list[float] = []
    started = time.perf_counter()
    device = execution_device(lm.anatomy.final_norm)
    with progress_bar("tuned lens", total=total_steps, unit="steps", enabled=progress) as advance:
        for _ in range(epochs):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            epoch_loss = 0.0
            for start in range(0, len(order), batch):
                chunk = states[order[start:start + batch]].to(device)
                with torch.no_grad():
                    target = _log_probs(lm, chunk[:, -1])
                optim.zero_grad(set_to_none=True)
                step_loss = 0.0
                for layer in range(num_layers):
                    h = chunk[:, layer]
                    translated = h + h @ weight[layer].T + bias[layer]
                    loss = _kl(target, _log_probs(lm, translated)).mean()
                    loss.backward()
                    step_loss += loss.item()
                optim.step()
                sched.step()
                epoch_loss += step_loss / num_layers * len(chunk)
                advance(1)
            train_curve.append(round(epoch_loss / len(order), 4))
    seconds = time.perf_counter() - started
    tuned = TunedLens(weight.detach().cpu(), bias.detach().cpu(), {})
    val = states[val_idx] if n_val else states[train_idx[:batch]]
    kl_logit = lens_kl(lm, val)
    kl_tuned = lens_kl(lm, val, tuned)
    report = {
        "positions": int(n), "train_positions": int(len(train_idx)), "val_positions": int(n_val),
        "epochs": epochs, "lr": lr, "warmup": warmup, "batch": batch, "weight_decay": weight_decay, "seed": seed,
        "train_seconds": round(seconds, 1), "train_loss_by_epoch": train_curve,
        "val_kl": {"logit": [round(float(x), 4) for x in kl_logit], "tuned": [round(float(x), 4) for x in kl_tuned]},
    }
    tuned.meta = {**(meta or {}), "num_layers": num_layers, "hidden_size": d,
                  "model_fingerprint": lm.fingerprint(), "model": lm.name,
                  "translator": "T_l(h) = h + h W_l^T + b_l for l < L; identity at L", "training": report}
    return tuned, report
