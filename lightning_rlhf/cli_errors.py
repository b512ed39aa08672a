"""One-line command-line errors out of jsonargparse's nested reports.

jsonargparse reports a failing ``__init__`` check of a ``class_path`` model as "Does not validate
against any of the Union subtypes" (the real error is its cause), and a wrong key or value as a
usage screen followed by a multi-line report. :func:`unwrap_config_error` finds the real error;
:class:`OneLineErrorParser` turns a parse error into a :class:`ConfigError` whose one line names
the key, the YAML file it came from and, for a misspelt key, the closest accepted ones.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Iterator
from typing import Any, NoReturn

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

UNION_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "- Expected a <class 'NoneType'>",
)


class ConfigError(ValueError):
    """A config key or value the command line cannot parse (one line naming key and file)."""


def unwrap_config_error(err: BaseException) -> BaseException:
    """The error an ``__init__`` check raised, out of the errors jsonargparse wraps it in.

    A class given by ``class_path`` is instantiated inside a Union (the model's type is
    ``RLHFModule | None``), so jsonargparse re-raises a failing ``__init__`` check as "Does not
    validate against any of the Union subtypes" with the real error as its ``__cause__``; every
    error raised by jsonargparse itself is unwrapped down to its first cause raised elsewhere.
    """
    while err.__cause__ is not None and _raised_in(err, "jsonargparse"):
        err = err.__cause__
    return err


def _raised_in(err: BaseException, package: str) -> bool:
    """Whether the frame that raised ``err`` belongs to ``package``."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


class OneLineErrorParser(LightningArgumentParser):
    """A LightningCLI parser whose parse errors raise :class:`ConfigError` with one line instead
    of printing the usage screen and a nested report (parsers that jsonargparse builds with
    ``exit_on_error=False`` for its own trials keep raising ``ArgumentError``)."""

    #: the command-line arguments, to find the YAML files a bad key may come from (``main``
    #: sets them on a subclass made per call)
    argv: list[str] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        raise ConfigError(one_line(message, parser, self.argv)) from ex


def one_line(message: str, parser: Any, argv: list[str]) -> str:
    """jsonargparse's multi-line parse error as ``<key> (in <file>): <what>; did you mean ...``."""
    lines = [line.strip() for line in message.strip().splitlines()]
    if lines and lines[0].startswith("Problems parsing config"):
        return _bad_yaml(argv) or " ".join(lines)
    keys: list[str] = []
    class_path = None
    details: list[str] = []
    for line in lines:
        if not line or line.startswith(UNION_NOISE):
            continue
        if match := re.fullmatch(r'Parser key "([^"]+)":\s*(.*)', line):
            keys.append(match[1])
            details += [match[2]] if match[2] else []
        elif match := re.fullmatch(r"- Problem with given class_path '(.+)':", line):
            class_path = match[1]
            keys.append("init_args")
        else:
            details.append(line)
    detail = details[0] if details else lines[0]
    if class_path and re.search(r"has no attribute|No module named|[Ii]mport", detail):
        keys[-1] = "class_path"  # the class itself could not be found
    key = ".".join(keys)
    rejected = _rejected_key(detail)
    if rejected is not None:
        key = ".".join([*keys, rejected])
        accepted = _accepted(parser, class_path)
        detail = f"not a known option{_did_you_mean(key, accepted, strip=len(keys))}"
    return f"{key}{_origin(key, argv)}: {detail}" if key else detail


def _rejected_key(detail: str) -> str | None:
    """The unknown key of "Option 'x' is not accepted", "Group 'g' does not accept option 'x'"
    (as ``g.x``), "... does not accept option 'x'" or "unrecognized arguments: --x"."""
    if match := re.search(r"Option '([^']+)' is not accepted", detail):
        return match[1]
    if match := re.search(r"Group '([^']+)' does not accept option '([^']+)'", detail):
        return f"{match[1]}.{match[2]}"
    if match := re.search(r"does not accept option '([^']+)'", detail):
        return match[1]
    match = re.fullmatch(r"unrecognized arguments: .*?--([\w.]+)(=.*)?", detail)
    return match[1] if match else None


def _accepted(parser: Any, class_path: str | None) -> list[str]:
    """Every key that could have been meant: those of ``class_path``'s ``__init__`` (nested
    dataclass fields included) or every key the parser knows."""
    if class_path is None:
        return list(dict.fromkeys(_all_keys(parser)))
    module, _, name = class_path.rpartition(".")
    class_parser = ArgumentParser(exit_on_error=False)
    try:
        class_parser.add_class_arguments(getattr(importlib.import_module(module), name))
    except Exception:  # noqa: BLE001 - no suggestion rather than a second error
        return []
    return [a.dest for a in class_parser._actions if isinstance(a.dest, str)]


def _all_keys(parser: Any) -> Iterator[str]:
    """Every key ``parser`` and its subcommand parsers accept."""
    for action in getattr(parser, "_actions", []):
        if isinstance(action.dest, str):
            yield action.dest
        if isinstance(action.choices, dict):
            for subparser in action.choices.values():
                yield from _all_keys(subparser)


def _did_you_mean(key: str, accepted: list[str], strip: int = 0) -> str:
    """``"; did you mean 'x'?"`` for the accepted keys closest to ``key`` (its first ``strip``
    components, e.g. ``model.init_args``, are the prefix the accepted keys lack)."""
    prefix, rest = key.split(".")[:strip], ".".join(key.split(".")[strip:])
    close = difflib.get_close_matches(rest, accepted, n=1, cutoff=0.75)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(".".join([*prefix, c])) for c in close) + "?"


def _origin(key: str, argv: list[str]) -> str:
    """`` (command line)`` when ``--key`` was given, else `` (in <the YAML files setting it>)``."""
    flag = f"--{key}"
    if any(a == flag or a.startswith(flag + "=") for a in argv):
        return " (command line)"
    files = [b for a, b in zip(argv, argv[1:]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    setting = [f for f in files if _sets_key(f, key.split("."))]
    return f" (in {', '.join(setting)})" if setting else ""


def _bad_yaml(argv: list[str]) -> str | None:
    """``<file>: not valid YAML: <problem> (line L, column C)`` for the first broken config."""
    files = [b for a, b in zip(argv, argv[1:]) if a in ("--config", "-c")]
    for path in files:
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            return f"{path}: not valid YAML: {err.problem or err.context}{where}"
        except (OSError, yaml.YAMLError):
            continue
    return None


def _sets_key(path: str, parts: list[str]) -> bool:
    """Whether the YAML file ``path`` holds the nested key ``parts``."""
    try:
        with open(path) as f:
            node: Any = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
