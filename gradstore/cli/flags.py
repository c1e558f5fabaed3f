"""Command-line options generated from ``BuildConfig``: one flag per field, never copied.

``--lora-r`` sets ``lora.r``, ``--max-seq-len`` sets ``max_seq_len``: the section name and
the field name joined by dashes (a field that already starts with its section's name is not
prefixed twice: ``warmup.warmup_ratio`` is ``--warmup-ratio``). Help texts, choices and
defaults come from the model, so the CLI cannot drift from the API. A flag that is not
given leaves the field to the config file (``--config``) or to the model's default.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gradstore.config import BuildConfig, config_flag

# Flags of gradstore build before they were generated; kept working as aliases.
ALIASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("lora", "target_modules"): ("--lora-target",),
    ("warmup", "epochs"): ("--epochs",),
    ("warmup", "learning_rate"): ("--learning-rate",),
    ("warmup", "seed"): ("--seed",),
    ("warmup", "gradient_accumulation"): ("--gradient-accumulation",),
}
CONFIG_PARAM = "config_file"


@dataclass(frozen=True)
class ConfigOption:
    """One leaf field of the configuration model and the CLI option that sets it."""

    path: tuple[str, ...]
    flag: str
    annotation: Any
    help: str
    default_text: str

    @property
    def param(self) -> str:
        return "cfg__" + "__".join(self.path)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _cli_type(annotation: Any, name: str) -> Any:
    """The type typer parses: a Literal becomes a str Enum (choices), lists stay lists."""
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is list:
        return list[_cli_type(typing.get_args(annotation)[0], name)]  # type: ignore[misc]
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        return enum.Enum(name, {str(v): str(v) for v in values}, type=str)  # type: ignore[misc]
    return annotation


def _default_text(field: FieldInfo) -> str:
    factory = field.default_factory
    default = factory() if factory is not None else field.default  # type: ignore[call-arg]
    if default is None:
        return ""
    if isinstance(default, list):
        return ", ".join(map(str, default))
    return str(default)


def config_options(model: type[BaseModel] = BuildConfig) -> list[ConfigOption]:
    """Every leaf field of ``model`` as an option, depth first in declaration order."""

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[ConfigOption]:
        for name, field in model.model_fields.items():
            path = (*prefix, name)
            annotation = _unwrap_optional(field.annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from walk(annotation, path)
                continue
            yield ConfigOption(
                path=path,
                flag=config_flag(path),
                annotation=_cli_type(field.annotation, "_".join(path)),
                help=(field.description or name.replace("_", " ").capitalize()).strip(),
                default_text=_default_text(field),
            )

    options = list(walk(model, ()))
    flags = [o.flag for o in options] + [a for o in options for a in ALIASES.get(o.path, ())]
    duplicated = {f for f in flags if flags.count(f) > 1}
    if duplicated:
        raise ValueError(f"configuration fields map to the same flag: {sorted(duplicated)}")
    return options


def _parameter(option: ConfigOption) -> inspect.Parameter:
    is_list = typing.get_origin(option.annotation) is list
    help_text = option.help + (" (repeat for several)" if is_list else "")
    if option.default_text:  # the parameter's own default is None: an unset flag
        help_text += f"  [default: {option.default_text}]"
    typer_option = typer.Option(
        option.flag,
        *ALIASES.get(option.path, ()),
        help=help_text,
        show_default=False,
        rich_help_panel="Build configuration",
    )
    return inspect.Parameter(
        option.param,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[option.annotation | None, typer_option],
    )


def _config_file_parameter() -> inspect.Parameter:
    help_text = (
        "A build configuration as JSON (a file, or the object itself): the fields of "
        "BuildConfig, as a datastore's config.json stores them. Flags override it."
    )
    return inspect.Parameter(
        CONFIG_PARAM,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option("--config", help=help_text, rich_help_panel="Build configuration"),
        ],
    )


def read_config_file(value: str | None) -> dict[str, Any]:
    """``--config``: inline JSON when it starts with ``{``, else a JSON file."""
    if not value:
        return {}
    inline = value.lstrip().startswith("{")
    where = "the JSON given" if inline else value
    try:
        text = value if inline else Path(value).read_text(encoding="utf-8-sig")
        data = json.loads(text)
    except OSError as exc:
        raise typer.BadParameter(f"{value}: {exc.strerror}", param_hint="--config") from None
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{value} is not UTF-8 text", param_hint="--config") from None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"{where}, line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})",
            param_hint="--config",
        ) from None
    if not isinstance(data, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--config")
    options = data.pop("options", None) or {}  # the API's old request shape
    if set(options) & set(data):
        raise typer.BadParameter(
            "a field is both in options and at the top level", param_hint="--config"
        )
    return {**data, **options}


def merge_config(base: dict[str, Any], values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """``base`` with each given flag's value set at its path (sections merged, not replaced)."""
    merged = json.loads(json.dumps(base))
    for path, value in values.items():
        node = merged
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"--config: {key} must be an object")
        node[path[-1]] = value
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value] or None  # no values given: the default
    return value


def build_config_from(
    options: list[ConfigOption], kwargs: dict[str, Any], model: type[BaseModel] = BuildConfig
) -> BaseModel:
    """Validate flags over ``--config`` into the model; errors name the flag."""
    values = {o.path: _plain(kwargs.pop(o.param)) for o in options}
    given = {path: value for path, value in values.items() if value is not None}
    data = merge_config(read_config_file(kwargs.pop(CONFIG_PARAM, None)), given)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        by_path = {o.path: o.flag for o in options}
        error = exc.errors()[0]
        location = tuple(str(p) for p in error["loc"])
        flag = next(
            (by_path[location[:n]] for n in range(len(location), 0, -1) if location[:n] in by_path),
            "--config",
        )
        raise typer.BadParameter(error["msg"], param_hint=flag) from None


def with_build_config(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` one option per BuildConfig field (plus ``--config``); it receives
    the validated ``config: BuildConfig`` instead of them."""
    options = config_options()
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)  # resolves string annotations
    own = [
        p.replace(annotation=hints.get(name, p.annotation))
        for name, p in signature.parameters.items()
        if name != "config"
    ]
    params = [*own, _config_file_parameter(), *(_parameter(o) for o in options)]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        config = build_config_from(options, kwargs)
        return command(config=config, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
