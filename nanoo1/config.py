"""Settings: grouped dataclasses, their command-line flags, their checks, and their JSON form.

A run's settings are a dataclass of groups (`SelfPlayConfig.ppo`, `.imitation`, ...), each a dataclass whose
fields carry a comment. `add_config_flags` turns every field into one `--flag` whose help text is that
comment, so the code is the documentation. A group may name a `flag_prefix` (ImitationSettings' `lr` is
`--imitation-lr`). Flags default to "not given", so an entry point can tell what the user asked for from
what a preset or a resumed run's saved settings hold (`apply_flags`, `conflicts`).
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
from dataclasses import asdict, fields, is_dataclass, replace

_COMMENTED_FIELD = re.compile(r"^\s*(\w+)\s*:[^#]*#\s?(.*)$")
_CONTINUATION = re.compile(r"^\s*#\s{2,}(.*)$")  # indented under the comment above; "# policy k+1" heads a section


def parse_bool(text: str) -> bool:
    """A command-line boolean: true/false, yes/no, 1/0 (any case); anything else is an error, not False."""
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: expected true or false (or yes/no, 1/0)")


def positive_int(text: str) -> int:
    """A command-line count that must be at least 1 (threads, limits, budgets)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def error_text(e: Exception) -> str:
    """An error's message for a usage line: a KeyError's own text (str() of one adds quotes around it)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each flag's default after its help unless it says one or has none."""

    def _get_help_string(self, action):
        said = "(default" in (action.help or "")
        if said or action.default in (None, argparse.SUPPRESS) or action.default is False:  # 0 is one (0 == False)
            return action.help
        return f"{action.help or ''} (default: {action.default})".lstrip()


def entry_parser(module: str, doc: str, first_group: str | None = None):
    """(parser, its first flag group) of the entry point `python -m <module>`, the name its usage lines give (argparse
    alone would give the file's, `bench.py`), `doc` its description; without `first_group` the parser twice."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc, formatter_class=HelpFormatter)
    return p, (p.add_argument_group(first_group) if first_group else p)


def add_process_flags(group, threads_default: str = "torch's choice") -> None:
    """--threads and --no-progress, which every long-running entry point takes."""
    group.add_argument("--threads", type=positive_int, default=None, help=f"torch.set_num_threads (default: {threads_default})")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def field_help(cls) -> dict[str, str]:
    """Each field's comment in the class source (`name: type = default  # help`, continued on `#` lines)."""
    helps, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = _COMMENTED_FIELD.match(line)
        if m:
            last = m.group(1)
            helps[last] = m.group(2).strip()
        elif last and (c := _CONTINUATION.match(line)):
            helps[last] += " " + c.group(1).strip()
        else:
            last = None
    return helps


def flag(name: str) -> str:
    """The command-line spelling of a settings field: imitation_lr -> --imitation-lr."""
    return "--" + name.replace("_", "-")


def _groups(config_cls) -> list:
    """The (group name, group class) pairs of a grouped config, or [(None, config_cls)] for a flat one."""
    groups = [(f.name, f.default_factory) for f in fields(config_cls) if is_dataclass(f.default_factory)]
    return groups or [(None, config_cls)]


def flag_names(config_cls) -> dict[str, tuple[str | None, str]]:
    """flag name (underscores) -> (group, field) for every field of a grouped or flat config."""
    names = {}
    for group, cls in _groups(config_cls):
        prefix = getattr(cls, "flag_prefix", "")
        for f in fields(cls):
            names[prefix + f.name] = (group, f.name)
    return names


def add_config_flags(parser: argparse.ArgumentParser, config_cls, skip=()) -> None:
    """One `--flag-name` per field (but `skip`), typed by the field's default, its comment as help, in one
    argument group per settings group. Defaults are not filled in: `apply_flags` takes only given flags."""
    for group, cls in _groups(config_cls):
        helps, prefix = field_help(cls), getattr(cls, "flag_prefix", "")
        g = parser.add_argument_group(f"{group or prefix.rstrip('_')} settings".strip())  # "lora settings", "settings"
        for f in fields(cls):
            if prefix + f.name in skip:
                continue
            default = cls().__dict__[f.name]
            kind = parse_bool if isinstance(default, bool) else type(default)
            g.add_argument(flag(prefix + f.name), dest=prefix + f.name, type=kind,
                           default=argparse.SUPPRESS, metavar=kind.__name__.upper() if kind is not parse_bool else "BOOL",
                           help=helps.get(f.name, "") + (f" (default: {default})" if default != "" else ""))


def apply_flags(config, flags: dict):
    """`config` with the fields named by flat flag names (`imitation_lr`, `seed`, ...) set to new values."""
    names = flag_names(type(config))
    unknown = sorted(set(flags) - names.keys())
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(names)}")
    updates: dict = {}
    for key, value in flags.items():
        group, name = names[key]
        default = getattr(getattr(config, group) if group else config, name)
        if not _same_type(value, default):
            raise ValueError(f"{flag(key)}: {value!r} is a {type(value).__name__}, expected a {type(default).__name__}")
        updates.setdefault(group, {})[name] = type(default)(value)
    if None in updates:
        return replace(config, **updates.pop(None))
    return replace(config, **{g: replace(getattr(config, g), **kw) for g, kw in updates.items()})


def flat_settings(config) -> dict:
    """flag name -> value of every field (the inverse of `apply_flags`)."""
    return {flag: getattr(getattr(config, g) if g else config, name) for flag, (g, name) in flag_names(type(config)).items()}


def conflicts(saved, flags: dict) -> list[str]:
    """The given flags whose values differ from the saved settings, as `--flag: saved -> given` lines."""
    have = flat_settings(saved)
    return [f"{flag(k)}: {have[k]!r} in the run, {v!r} given" for k, v in flags.items() if k in have and have[k] != v]


def to_dict(config) -> dict:
    """The JSON form of a (grouped) config."""
    return asdict(config)


def from_dict(config_cls, d, source: str):
    """A config from its JSON form; unknown or missing keys and wrong types are errors naming `source`."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object of settings, got {type(d).__name__}")
    kw = {}
    for f in fields(config_cls):
        if f.name not in d:
            raise ValueError(f"{source}: missing setting {f.name!r}")
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            kw[f.name] = from_dict(type(default), d[f.name], f"{source} [{f.name}]")
        elif not _same_type(d[f.name], default):
            raise ValueError(f"{source}: setting {f.name!r} is {d[f.name]!r}, expected a {type(default).__name__}")
        else:
            kw[f.name] = type(default)(d[f.name])
    extra = sorted(set(d) - {f.name for f in fields(config_cls)})
    if extra:
        raise ValueError(f"{source}: unknown settings {extra}")
    return config_cls(**kw)


def _same_type(value, default) -> bool:
    """Whether a setting's value has its field's default's type: exactly (a bool is no int), or an int for a float."""
    return type(value) is type(default) or (type(default) is float and type(value) is int)


SEED_LIMIT = 2 ** 32  # a run's seed is below it: torch's and numpy's generators take seed * 1000 + iteration


def check_settings(settings, positive=(), non_negative=(), fraction=(), choices=None, seeds=()) -> None:
    """Raise ValueError naming the first field outside its range: finite and > 0, finite and >= 0, in [0, 1],
    among choices, or a seed in [0, SEED_LIMIT)."""
    def fail(f: str, what: str):
        raise ValueError(f"{type(settings).__name__}: {flag(getattr(settings, 'flag_prefix', '') + f)} {what}")

    for f in positive:
        if not getattr(settings, f) > 0:
            fail(f, f"must be > 0, got {getattr(settings, f)!r}")
    for f in non_negative:
        if not getattr(settings, f) >= 0:
            fail(f, f"must be >= 0, got {getattr(settings, f)!r}")
    for f in (*positive, *non_negative):
        if getattr(settings, f) == math.inf:
            fail(f, "must be finite, got inf")
    for f in fraction:
        if not 0 <= getattr(settings, f) <= 1:
            fail(f, f"must lie in [0, 1], got {getattr(settings, f)!r}")
    for f in seeds:
        if not 0 <= getattr(settings, f) < SEED_LIMIT:
            fail(f, f"must lie in [0, 2**32), got {getattr(settings, f)!r}")
    for f, allowed in (choices or {}).items():
        if getattr(settings, f) not in allowed:
            fail(f, f"is {getattr(settings, f)!r}, expected one of {allowed}")
