"""Command-line flags generated from dataclasses, so that every option is written down once.

A dataclass field's `metadata["help"]` becomes its `--help` text, `metadata["choices"]` its choices and
`metadata["aliases"]` extra flag names (we use them for the original code's flag names, such as
`--covarience_weight`). Parsing is transformers' `HfArgumentParser`.

The options several commands share are written here once (`base_model_option` and its revision and
dtype), so that a flag means the same in every command: `--base_model` is always the language model
the dictionaries read, `--base_model_revision` its revision, `--base_model_dtype` its dtype, and
`--dictionary` always a trained dictionary. The spellings commands used before are kept as aliases.
"""

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser

from .configuration import option, own_fields

# Old spellings of the shared options, still accepted (the command lines of earlier releases and of the
# original code keep working). `hf-bae space --model` was the dictionary, so it is not among them.
BASE_MODEL_ALIASES = ("--model", "--model_name_or_path", "--LM_name")
BASE_MODEL_REVISION_ALIASES = ("--revision", "--model_revision")
BASE_MODEL_DTYPE_ALIASES = ("--model_dtype", "--lm_dtype")


def base_model_option(default: str | None = "embedded", note: str = "", aliases: Sequence[str] = BASE_MODEL_ALIASES) -> Any:
    """The `--base_model` field: the language model whose hidden states the dictionaries read."""
    return option(default, "Language model whose hidden states the dictionaries read: 'embedded' (SmolLM2-135M-Instruct, "
                  "offline), a Hub id or a local folder." + (f" {note}" if note else "")
                  + f" Old names: {', '.join(aliases)}.", aliases=list(aliases))


def base_model_revision_option() -> Any:
    """The `--base_model_revision` field."""
    return option(None, "Revision (branch, tag or commit) of --base_model. Old names: "
                  f"{', '.join(BASE_MODEL_REVISION_ALIASES)}.", aliases=list(BASE_MODEL_REVISION_ALIASES))


def base_model_dtype_option(aliases: Sequence[str] = BASE_MODEL_DTYPE_ALIASES) -> Any:
    """The `--base_model_dtype` field (None: float32 on CPU, the accelerator's default dtype on GPU)."""
    return option(None, "dtype of --base_model: float32, bfloat16, float16 or auto; default: float32 on CPU, the "
                  "checkpoint's own dtype (auto) on an accelerator. On a CPU with bf16 instructions (avx512_bf16 or "
                  "amx_bf16 in /proc/cpuinfo) bfloat16 runs the LM about 2x faster, activations within about 1 percent; without "
                  f"them it is emulated and ~5x slower. Old names: {', '.join(aliases)}.", aliases=list(aliases))


def config_arguments(config_class: type, exclude: Sequence[str] = ()) -> type:
    """A plain dataclass holding the hf_bae fields of `config_class` (not transformers' generic ones).

    `HfArgumentParser` turns it into flags; `config_class(**asdict(parsed))` turns the parsed values
    back into a config.
    """
    specs = []
    for f in own_fields(config_class):
        if f.name in exclude:
            continue
        clone = dataclasses.field(default=f.default, metadata=dict(f.metadata))
        specs.append((f.name, f.type, clone))
    return dataclasses.make_dataclass(f"{config_class.__name__}Arguments", specs)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps a command's description as written (usage examples stay readable) and shows defaults."""


def build_parser(dataclass_types: Sequence[type], prog: str, description: str) -> HfArgumentParser:
    """An argparse parser whose flags come from the given dataclasses (one argument group each)."""
    parser = HfArgumentParser(
        [], prog=prog, description=description, formatter_class=_HelpFormatter
    )
    for dtype in dataclass_types:
        group_name = getattr(dtype, "_argument_group_name", None)
        if group_name is None:
            # HfArgumentParser puts a dataclass in its own group when it names one.
            dtype._argument_group_name = dtype.__name__.removesuffix("Arguments") + " options"
        parser.dataclass_types.append(dtype)
        parser._add_dataclass_arguments(dtype)
    return parser


def parse(dataclass_types: Sequence[type], argv: Sequence[str] | None, prog: str, description: str,
          presets: dict[str, dict[str, Any]] | None = None) -> tuple[Any, ...]:
    """Parse `argv` into one instance of each dataclass; unknown flags are an error that names them.

    With `presets` (name → field values), a `--preset NAME` flag applies those values as defaults, so
    that flags given explicitly still win.
    """
    parser = build_parser(dataclass_types, prog, description)
    argv = list(argv) if argv is not None else None
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help="Start from a named set of option values (flags given explicitly still win): "
                                 + "; ".join(f"{n}: {', '.join(f'{k}={v}' for k, v in p.items()) or 'the defaults'}"
                                             for n, p in presets.items()) + ".")
        known, _ = parser.parse_known_args(argv)
        if known.preset:
            fields = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
            parser.set_defaults(**{k: v for k, v in presets[known.preset].items() if k in fields})
    outputs = parser.parse_args_into_dataclasses(args=argv)
    return tuple(o for o in outputs if not isinstance(o, argparse.Namespace))
