"""Align models ourselves and keep checkpoints ihs can analyse.

The paper infers how alignment works by comparing released models; ``ihs.align`` tests it causally:
build refusal / helpful-answer data split by goal (:mod:`ihs.align.data`), train with SFT or DPO on
trl + peft, optionally with an auxiliary term that builds the middle-layer association on purpose
(:mod:`ihs.align.association`), and export a model folder every few steps (:mod:`ihs.align.train`)
that every ihs analysis loads like any other model. trl and peft are imported only when training
starts. The data card is ``ihs/align/DATA.md``.
"""

from ihs.align.association import AssociationOptions
from ihs.align.checkpoints import list_checkpoints
from ihs.align.data import (
    AlignData,
    DataOptions,
    DPOPair,
    SFTExample,
    SplitOptions,
    build_data,
    evaluation_split,
    goal_key,
    is_eval_goal,
    split_records,
    training_split,
)
from ihs.align.files import load_dpo, load_sft
from ihs.align.train import LoraOptions, TrainOptions, TrainResult, train

__all__ = [
    "AlignData",
    "AssociationOptions",
    "DPOPair",
    "DataOptions",
    "LoraOptions",
    "SFTExample",
    "SplitOptions",
    "TrainOptions",
    "TrainResult",
    "build_data",
    "evaluation_split",
    "goal_key",
    "is_eval_goal",
    "list_checkpoints",
    "load_dpo",
    "load_sft",
    "split_records",
    "train",
    "training_split",
]
