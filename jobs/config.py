"""Option values from a TOML or YAML file (``--config``), ``KEY=VALUE`` option parsing, and
parsing a whole command line without running it (``submit`` checks what it sends).

Precedence, highest first (click's own order, which we rely on):
  1. flags on the command line
  2. environment variables (VIP2SCAN_CHECKPOINT for --checkpoint, VIP2SCAN_CONFIG for --config)
  3. the config file: the command's own section ``[scan]``, then top-level keys
  4. built-in defaults

File layout (TOML shown; YAML with the same keys works too)::

    out = "s3://bucket/vip2scan-out"          # top level: any command that has --out
    [storage_options]                          # becomes repeated --storage-option KEY=VALUE
    endpoint_url = "http://minio:9000"
    [scan]                                     # only `vip2scan scan`; unknown keys are errors
    checkpoint = "s3://bucket/ckpt/best"
    batch-size = 32
    maps = false                               # same as --no-maps (or: no-maps = true)
    include = ["*.png", "*.jpg"]               # repeatable flags take lists

Keys are the long flag names with or without dashes (``batch-size`` or ``batch_size``).
Relative paths are taken relative to the working directory, as on the command line.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, Sequence

import typer
from typer.core import TyperGroup

from vip2scan.jobs.errors import BadParameter, UsageError, click, is_secret_name, register_secret

SECTION_HELP = "TOML or YAML file of option values; flags win (docs/reference/configuration.md)."
PARSE_ONLY = "vip2scan.parse_only"  # ctx.meta key: parse the command line, run nothing


def read_config_file(uri: str) -> dict[str, Any]:
    """Parse a TOML or YAML config (local path or any fsspec URI) into a dict."""
    import fsspec
    import yaml

    try:
        with fsspec.open(uri, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise BadParameter(f"config file not found: {uri}", param_hint="'--config'") from None
    text = raw.decode("utf-8")
    lowered = uri.lower()
    try:
        if lowered.endswith((".yaml", ".yml")):
            data = yaml.safe_load(text) or {}
        elif lowered.endswith(".toml"):
            data = tomllib.loads(text)
        else:  # no telling suffix: TOML first, then YAML
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadParameter(f"cannot parse {uri}: {first}", param_hint="'--config'") from None
    if not isinstance(data, dict):
        raise BadParameter(f"{uri} must hold a table of options", param_hint="'--config'")
    return data


def _flag_names(command: click.Command) -> dict[str, tuple[str, bool]]:
    """Config key -> (parameter name, negate). Covers param names, long flags and --no-x forms."""
    names: dict[str, tuple[str, bool]] = {}
    for param in command.params:
        if param.name is None or param.name == "config":
            continue
        names[param.name] = (param.name, False)
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = (param.name, False)
        for opt in getattr(param, "secondary_opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = (param.name, True)
    return names


def _storage_options_as_flags(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


# Top-level tables that hold values rather than one command's options.
VALUE_SECTIONS = ("storage_options",)
_command_tree: Callable[[], click.Command] | None = None


def set_command_tree(provider: Callable[[], click.Command]) -> None:
    """Tell config files which commands exist (cli.py does, once its commands are registered),
    so that a key or section no command knows is an error even when a command is parsed alone."""
    global _command_tree
    _command_tree = provider


@dataclass(frozen=True)
class Catalog:
    """What a config file may name: every command (a section) and every command's options."""

    sections: frozenset[str]
    keys: frozenset[str]  # option names with underscores, as _flag_names gives them


def catalog_of(root: click.Command) -> Catalog:
    sections: set[str] = set()
    keys: set[str] = set()
    stack = [root]
    while stack:
        command = stack.pop()
        keys.update(_flag_names(command))
        for name, sub in (getattr(command, "commands", None) or {}).items():
            sections.add(name)
            stack.append(sub)
    return Catalog(frozenset(sections), frozenset(keys))


def did_you_mean(word: str, candidates: Sequence[str], shown: Callable[[str], str] = repr) -> str:
    """'; did you mean X?' for the closest candidate, or ''."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {shown(match[0])}?" if match else ""


def _option_spelling(norm: str) -> str:
    return repr(norm.replace("_", "-"))


def config_to_defaults(data: dict[str, Any], command: click.Command, section: str,
                       catalog: Catalog | None = None) -> dict[str, Any]:
    """Turn a parsed config file into click's ``default_map`` for ``command``.

    A section that names no command, a top-level key that is no command's option, or a key
    in this command's section that is not one of its options is a usage error (with the
    closest spelling), never silently ignored.
    """
    known = _flag_names(command)
    has_storage = "storage_option" in known
    catalog = catalog or Catalog(frozenset({section}), frozenset(known))
    defaults: dict[str, Any] = {}

    def put(key: str, value: Any, strict: bool) -> None:
        norm = key.replace("-", "_")
        if norm in ("storage_options", "storage_option") and has_storage:
            defaults["storage_option"] = defaults.get("storage_option", []) + _storage_options_as_flags(value)
            return
        if norm not in known:
            if strict:
                raise BadParameter(f"unknown option {key!r} in section [{section}]"
                                   f"{did_you_mean(norm, sorted(known), _option_spelling)}",
                                   param_hint="'--config'")
            if norm not in catalog.keys and norm not in VALUE_SECTIONS:
                raise BadParameter(f"unknown top-level option {key!r} (no command has it)"
                                   f"{did_you_mean(norm, sorted(catalog.keys), _option_spelling)}",
                                   param_hint="'--config'")
            return  # another command's option
        name, negate = known[norm]
        defaults[name] = (not value) if negate and isinstance(value, bool) else value

    for key, value in data.items():
        key = str(key)
        norm = key.replace("-", "_")
        if isinstance(value, dict) and norm not in known and norm not in VALUE_SECTIONS:
            if key != section and key not in catalog.sections:
                raise BadParameter(f"unknown section [{key}] (sections are command names)"
                                   f"{did_you_mean(key, sorted(catalog.sections), lambda s: f'[{s}]')}",
                                   param_hint="'--config'")
            continue
        put(key, value, strict=False)
    section_data = data.get(section) or {}
    if not isinstance(section_data, dict):
        raise BadParameter(f"[{section}] must be a table", param_hint="'--config'")
    for key, value in section_data.items():
        put(key, value, strict=True)
    return defaults


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """Eager callback: runs before the other options are parsed, so the file becomes their defaults."""
    if not value or ctx.resilient_parsing or ctx.meta.get(PARSE_ONLY):
        return value
    data = read_config_file(value)
    section = ctx.info_name or ""
    root = ctx.find_root().command
    if getattr(root, "commands", None) is None and _command_tree is not None:
        root = _command_tree()  # a command parsed on its own (tests, submit's checks)
    catalog = catalog_of(root) if getattr(root, "commands", None) is not None else None
    defaults = config_to_defaults(data, ctx.command, section, catalog)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = Annotated[
    Optional[str],
    typer.Option(
        "--config",
        envvar="VIP2SCAN_CONFIG",
        is_eager=True,
        callback=_load_config,
        metavar="FILE",
        help=SECTION_HELP,
        show_default=False,
    ),
]


def parse_key_values(items: list[str] | None, what: str = "--storage-option") -> dict[str, Any]:
    """``["endpoint_url=http://x", "anon=true"]`` -> dict, with true/false/ints made typed.

    s3fs wants booleans and numbers typed (``anon=True``), so obvious literals are converted.
    """
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        # The value is never echoed: a value without its key name may well be a secret.
        if not sep:
            raise BadParameter("expected KEY=VALUE, got a value without '=' (not shown)",
                               param_hint=f"'{what}'")
        if not key:
            raise BadParameter("expected KEY=VALUE, got '=' and a value without its key name",
                               param_hint=f"'{what}'")
        result[key] = _literal(raw.strip())
    return result


def _literal(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    return raw


# s3fs takes the access key id and its secret together: given half a pair, botocore signs with
# whatever else it finds (or nothing) and S3 answers "bucket does not exist".
CREDENTIAL_PAIRS = (("key", "secret"),)
STORAGE_FLAG = "'-s' / '--storage-option'"


def check_storage_options(items: list[str], options: dict[str, Any]) -> None:
    """Usage errors for -s values that cannot be what was meant: an empty value, or half of a
    credential pair (e.g. ``-s secret=VALUE`` without ``-s key=...``)."""
    for item in items:
        key, _, raw = item.partition("=")
        if not raw.strip():
            raise BadParameter(f"expected KEY=VALUE, got {key.strip() + '='!r} (no value)",
                               param_hint=STORAGE_FLAG)
    for first, second in CREDENTIAL_PAIRS:
        if (first in options) != (second in options):
            given, missing = (first, second) if first in options else (second, first)
            raise BadParameter(f"{given}=... needs {missing}=... too (the access key id and its "
                               "secret go together; or set neither and use the environment)",
                               param_hint=STORAGE_FLAG)


def storage_options_from_flags(items: list[str] | None) -> dict[str, Any]:
    """Parse --storage-option flags and remember secret-looking values so errors never show them."""
    options = parse_key_values(items, what="-s' / '--storage-option")
    check_storage_options(list(items or []), options)
    for key, value in options.items():
        if is_secret_name(key) and isinstance(value, str):
            register_secret(value)
    return options


def parse_only(root: click.Command, argv: Sequence[str]) -> click.Context:
    """Parse a vip2scan command line against ``root`` (the CLI's group), running nothing.

    Raises ``click.UsageError`` for an unknown command or flag, a missing argument, or a
    bad value. Config files named by ``--config`` are not read (they may exist only where
    the command will run). Returns the innermost command's context.
    """
    command = root
    ctx = command.make_context("vip2scan", list(argv), resilient_parsing=False)
    ctx.meta[PARSE_ONLY] = True
    while isinstance(command, TyperGroup):
        rest = [*ctx._protected_args, *ctx.args]  # what click hands the subcommand
        if not rest:
            raise UsageError("missing command", ctx=ctx)
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx
