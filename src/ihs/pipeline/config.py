"""The configuration of ``ihs run``: a dataclass with one section per registered step.

:func:`config_class` builds :class:`RunConfig` from the fixed sections (models, data, limit,
analyses, model, format, report) and each registered step's options dataclass, so a new analysis
gets its config section, its YAML keys and its ``--print-config`` comments from its options
alone. YAML is checked against the field types: unknown keys and wrong types are one-line errors,
missing keys take the defaults.
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ihs.data.classes import check_class_names
from ihs.errors import IhsError
from ihs.models.handle import ModelOptions
from ihs.workflows import steps
from ihs.workflows.base import FormatOptions, opt

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_DATA = {"normal": "builtin:normal", "malicious": "builtin:malicious",
                "contrast": "builtin:contrast", "jailbreak": "builtin:jailbreak"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(kw_only=True)
class ReportOptions:
    title: str | None = opt(None, "Report title (null: from the models).")
    examples: int = opt(4, "Example prompts shown per section.")


_FIXED_HELP = {
    "models": "Models to analyse: zoo names (ihs models list), local folders, GGUF files or Hugging Face ids. "
              "Two or more add a comparison section.",
    "data": "Prompt sets, NAME: SPEC (builtin:normal, file.csv[:column], file.jsonl[:field], file.txt, "
            "hf:org/name:split:field). The names are the classes; normal and malicious train the probes, "
            "contrast and jailbreak are scored as transfer sets.",
    "limit": "Distinct prompts kept per class for extraction, probes and the lens (null: all).",
    "analyses": "Analyses to run after extraction (null: the default ones; 'all': every one).",
    "model": "How models load: dtype, device, remote code, CPU threads.",
    "format": "Prompt formatting: chat (null: the chat template when the tokenizer has one), system_prompt.",
    "report": "Report title and example prompts shown per section.",
}


def analyses_all() -> list[str]:
    return [s.name for s in steps() if s.name != "extract"]


def analyses_default() -> list[str]:
    return [s.name for s in steps() if s.name != "extract" and s.default]


@cache
def config_class() -> type:
    """The RunConfig dataclass for the registered steps (built once; ``config_class.cache_clear()`` after
    changing the registry)."""
    fields: list[tuple[str, Any, Any]] = [
        ("models", list[str], dataclasses.field(default_factory=lambda: [DEFAULT_MODEL])),
        ("data", dict[str, str], dataclasses.field(default_factory=lambda: dict(DEFAULT_DATA))),
        ("limit", int | None, dataclasses.field(default=100)),
        ("analyses", list[str] | None, dataclasses.field(default=None)),
        ("model", ModelOptions, dataclasses.field(default_factory=ModelOptions)),
        ("format", FormatOptions, dataclasses.field(default_factory=FormatOptions)),
    ]
    for step in steps():
        if step.options is not None:
            fields.append((step.name, step.options, dataclasses.field(default_factory=step.options)))
    fields.append(("report", ReportOptions, dataclasses.field(default_factory=ReportOptions)))
    return dataclasses.make_dataclass("RunConfig", fields, bases=(_RunConfigMethods,), kw_only=True)


class _RunConfigMethods:
    """Methods of the generated RunConfig."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @property
    def wanted(self) -> list[str]:
        """The analyses this config asks for (``analyses`` resolved: null = defaults, 'all' = every one)."""
        if self.analyses is None:  # type: ignore[attr-defined]
            return analyses_default()
        if self.analyses == ["all"]:  # type: ignore[attr-defined]
            return analyses_all()
        return list(self.analyses)  # type: ignore[attr-defined]

    def validate(self) -> None:
        """Check the whole config before any work (one-line errors)."""
        if not self.models:  # type: ignore[attr-defined]
            raise IhsError("config: 'models' is empty; name at least one model")
        if not self.data:  # type: ignore[attr-defined]
            raise IhsError("config: 'data' is empty; name at least one NAME: SPEC prompt set")
        known = analyses_all()
        unknown = [a for a in self.wanted if a not in known]
        if unknown:
            raise IhsError(f"config: unknown analysis {unknown[0]!r}; choose from {', '.join(known)} or all")
        if self.limit is not None and self.limit <= 0:  # type: ignore[attr-defined]
            raise IhsError(f"config: limit must be positive, got {self.limit}")  # type: ignore[attr-defined]
        if self.model.dtype not in DTYPES:  # type: ignore[attr-defined]
            raise IhsError(f"config: model.dtype must be one of {', '.join(DTYPES)}, "
                           f"got {self.model.dtype!r}")  # type: ignore[attr-defined]
        check_class_names(list(self.data), where="config: data")  # type: ignore[attr-defined]
        for step in steps():
            section = getattr(self, step.name, None)
            if section is not None and hasattr(section, "validate"):
                try:
                    section.validate()
                except IhsError as exc:
                    raise IhsError(f"config: {step.name}: {exc}") from None

    def to_yaml(self) -> str:
        return config_yaml(self)


def default_config() -> Any:
    return config_class()()


def from_dict(data: dict[str, Any] | None) -> Any:
    """A RunConfig from a (partial) dict; unknown keys and wrong types are errors, missing keys take defaults."""
    config = _from_dict(config_class(), data or {}, "config")
    config.validate()
    return config


def load(path: str | Path) -> Any:
    """A RunConfig from a YAML file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_keys_loader())  # noqa: S506 - safe loader
    except FileNotFoundError:
        raise IhsError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise IhsError(f"config {path} is a folder; give a YAML file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise IhsError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise IhsError(f"config {path} must be a mapping of keys (models, data, limit, ...)")
    return from_dict(data)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise IhsError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise IhsError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = coerce(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML value against a field's type hint (the shapes option dataclasses use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except IhsError as exc:
                errors.append(str(exc))
        raise IhsError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise IhsError(f"{where} must be a list, got {value!r}")
        return [coerce(v, args[0], f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise IhsError(f"{where} must be a mapping NAME: SPEC, got {value!r}")
        return {str(k): coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    checks = {bool: (bool,), int: (int,), float: (int, float), str: (str, int, float)}
    if hint in checks:
        if (isinstance(value, bool) and hint is not bool) or not isinstance(value, checks[hint]):
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
            raise IhsError(f"{where} must be {kind}, got {value!r}")
        return float(value) if hint is float else str(value) if hint is str else value
    return value


def _section_help(name: str) -> str:
    if name in _FIXED_HELP:
        return _FIXED_HELP[name]
    step = next((s for s in steps() if s.name == name), None)
    return step.help if step is not None else ""


def config_yaml(config: Any | None = None) -> str:
    """The config as YAML, every section and option commented from its help text (``--print-config``)."""
    import yaml

    config = config if config is not None else default_config()
    lines = ["# ihs run configuration. Every key is optional: missing keys take these defaults.",
             "# Use with: ihs run --config run.yaml --out DIR", ""]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        lines.extend(f"# {line}" for line in textwrap.wrap(_section_help(f.name), width=100))
        if dataclasses.is_dataclass(value):
            lines.append(f"{f.name}:")
            for sub in dataclasses.fields(value):
                doc = sub.metadata.get("help", "")
                dumped = yaml.safe_dump([getattr(value, sub.name)], default_flow_style=True, allow_unicode=True,
                                        width=1000).strip()[1:-1]  # one flow item, without the list's brackets
                lines.append(f"  {sub.name}: {dumped}" + (f"  # {doc}" if doc else ""))
        else:
            lines.append(yaml.safe_dump({f.name: value}, sort_keys=False, default_flow_style=False,
                                        allow_unicode=True).rstrip())
        lines.append("")
    return "\n".join(lines)


def _unique_keys_loader() -> type:
    """yaml's SafeLoader refusing a key given twice in one mapping (two prompt sets under one name would
    otherwise keep only the last, silently)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
            if repeated:
                raise IhsError(f"config: key {repeated[0]!r} is given twice (line {node.start_mark.line + 1}); "
                               "give each entry once")
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys
