"""Prompt sets: records, loaders for every spec, validation, the jailbreak builder, built-in sets."""

from ihs.data.builtin import BUILTIN_NAMES, list_builtin, load_builtin, load_templates
from ihs.data.jailbreak import build_jailbreak
from ihs.data.loaders import load_dataset_spec, load_many, parse_named_spec
from ihs.data.records import PromptRecord, prompt_id
from ihs.data.validate import clean, ensure_final_punct, require_min

__all__ = [
    "BUILTIN_NAMES",
    "PromptRecord",
    "build_jailbreak",
    "clean",
    "ensure_final_punct",
    "list_builtin",
    "load_builtin",
    "load_dataset_spec",
    "load_many",
    "load_templates",
    "parse_named_spec",
    "prompt_id",
    "require_min",
]
