"""trl's SFT and DPO trainers with the association term added to their loss."""

from __future__ import annotations

from typing import Any

import torch

from ihs.align.association import AssociationLoss

_EXTRA = ("assoc_pos", "assoc_flag")


class Collate:
    """trl's collator plus the two association columns (prompt's last position, malicious flag)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base([{k: v for k, v in e.items() if k not in _EXTRA} for e in examples])
        batch["assoc_pos"] = torch.tensor([int(e["assoc_pos"]) for e in examples], dtype=torch.long)
        batch["assoc_flag"] = torch.tensor([int(e["assoc_flag"]) for e in examples], dtype=torch.long)
        return batch


def _loss_with_association(trainer: Any, parent_compute, model, inputs, return_outputs, num_items_in_batch):
    positions = inputs.pop("assoc_pos", None)
    flags = inputs.pop("assoc_flag", None)
    assoc: AssociationLoss | None = getattr(trainer, "association", None)
    if assoc is None or assoc.weight == 0 or positions is None or not model.training:
        return parent_compute(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
    with assoc.capture():
        result = parent_compute(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
    loss = result[0] if return_outputs else result
    # in a DPO batch the rows are [chosen..., rejected...]: the flags cover the first half, whose
    # prompt states equal the second half's (the same prompt, a causal model)
    term = assoc(positions, flags)
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
    if scaled is None:
        scaled = (getattr(trainer, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) or (
            getattr(trainer, "compute_loss_func", None) is not None)
    steps = trainer.current_gradient_accumulation_steps if scaled else 1
    loss = loss + assoc.weight * term / steps
    trainer._metrics["train"]["assoc_loss"].append(float(term.detach()))
    return (loss, *result[1:]) if return_outputs else loss


def trainer_classes():
    from trl import DPOTrainer, SFTTrainer

    class IhsSFTTrainer(SFTTrainer):
        association: AssociationLoss | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return _loss_with_association(self, super().compute_loss, model, inputs, return_outputs,
                                          num_items_in_batch)

    class IhsDPOTrainer(DPOTrainer):
        association: AssociationLoss | None = None

        def _prepare_dataset(self, dataset, *args, **kwargs):  # ihs tokenizes itself (formatting.format_prompt)
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return _loss_with_association(self, super().compute_loss, model, inputs, return_outputs,
                                          num_items_in_batch)

    return IhsSFTTrainer, IhsDPOTrainer
