"""Command-line options generated from config dataclasses and function signatures, and plain-text help.

:func:`add_options` adds one option per field of a dataclass (or parameter of a function): ``--batch-size`` for
``batch_size``, with its type, choices, default and help line taken from the annotation, the default and the
docstring (the ``Attributes:`` / ``Args:`` section), so each is written once, in the library::

    names = add_options(parser, TrainSettings)
    settings = TrainSettings(**given(args, names))

Annotations map to options as follows: ``int``, ``float`` (finite), ``str``; ``bool`` is a switch (``--name``,
or ``--no-name`` when the default is true); ``Literal[...]`` lists its choices in ``--help``; ``X | None``
takes an X; ``tuple[X, ...]`` / ``Sequence[X]`` takes comma-separated distinct values; a field named ``seed``,
``seeds`` or ``*_seed`` takes integers in [0, 2**32 - 1], the range in which different seeds give different
random streams (JAX keeps the low 32 bits, so -1 and 4294967295 would be the same seed).

:class:`Parser` is the ``jaxequiv`` command's ArgumentParser: help without reStructuredText markup, paragraphs
re-wrapped but indented examples kept, every option's default shown, and a bad command line reported in one line.
:func:`cli_spelling` rewrites the Python spelling of a library error (``pass arch=``) in the command line's
(``pass --arch``).
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import inspect
import math
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Parser", "HelpFormatter", "plain", "add_options", "given", "spell_as", "cli_spelling", "field_docs",
           "seed", "path", "comma_list"]

SEED_MAX = 2**32 - 1
_FLAGS = "_flags"  # namespace attribute: {python name: --flag} of a command's options, for cli_spelling


# -- plain text ---------------------------------------------------------------------------------------------------
_ROLE = re.compile(r":[a-z]+:`(~?)\.?([^`]+?)`")


def _role(m: re.Match) -> str:
    target = m.group(2)
    return target.rsplit(".", 1)[-1] if m.group(1) else target


def plain(text: str) -> str:
    """``text`` without reStructuredText markup: roles (:func:`~a.b` -> b), double backquotes, emphasis,
    and the ``::`` that introduces a literal block (``Examples::`` -> ``Examples:``)."""
    text = _ROLE.sub(_role, text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])", r"\1", text)
    text = re.sub(r"(?m)^[ \t]*::[ \t]*$\n?", "", text)  # a lone "::" line
    return re.sub(r"(?m)(\S) ?::[ \t]*$", r"\1:", text)


# -- the parser ---------------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    """A default as the command line spells it: 1,3,5 for a list, 5e-05 for a float, off for False."""
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value) if value else "empty"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Plain-text help: paragraphs filled to the terminal width, indented blocks (examples) and bullet lists kept,
    reStructuredText markup removed (:func:`plain`), and each option's default appended to its help line unless the
    line already says what the default is."""

    def __init__(self, prog, indent_increment=2, max_help_position=30, width=None):
        super().__init__(prog, indent_increment, max_help_position, width)

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # never split --an-option

    def _fill_text(self, text, width, indent):
        out = []
        for para in re.split(r"\n[ \t]*\n", plain(inspect.cleandoc(text))):
            lines = para.splitlines()
            if all(line[:1] in " \t" for line in lines):  # a literal block: keep it
                out.append("\n".join(indent + line for line in lines))
            elif all(re.match(r"[*-] |\s", line) for line in lines):  # a bullet list: fill each item
                items = re.split(r"\n(?=[*-] )", para)
                out.append("\n".join(textwrap.fill(" ".join(i.split()), width, initial_indent=indent,
                                                   subsequent_indent=indent + "  ", break_on_hyphens=False) for i in items))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                         subsequent_indent=indent, break_on_hyphens=False))
        return "\n\n".join(out) + "\n"

    flags: Mapping[str, str] = {}  # {python name: --flag} of the parser's options (set by Parser)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None:
            text = re.sub(r"\bNone: ", "default: ", text)  # a docstring's "(None: ...)" is the option's default
        if (action.option_strings and default not in (None, argparse.SUPPRESS)
                and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                and "default" not in text and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text

    def _expand_help(self, action):
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params.update(prog=self._prog, default=_show(action.default))
        for k, v in params.items():
            if hasattr(v, "__name__"):
                params[k] = v.__name__
        if action.choices is not None:
            params["choices"] = ", ".join(map(str, action.choices))
        return _spell(plain(self._get_help_string(action) % params), self.flags, bare_only=True)


class Parser(argparse.ArgumentParser):
    """ArgumentParser with :class:`HelpFormatter` (passed on to sub-commands) and one-line errors:
    ``PROG: error: WHAT (see PROG --help)``, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _get_formatter(self):
        formatter = super()._get_formatter()
        formatter.flags = self.get_default(_FLAGS) or {}
        return formatter

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- docstrings -----------------------------------------------------------------------------------------------
_SECTION = re.compile(r"^(\s*)(Attributes|Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^([A-Za-z_][\w]*(?:\s*(?:,|/|and)\s*[A-Za-z_]\w*)*)\s*:\s*(.*)$")


def _section_docs(doc: str | None) -> dict[str, str]:
    """``{name: text}`` from the ``Attributes:`` / ``Args:`` sections of a Google-style docstring. An entry
    ``a, b: text`` (or ``a / b: text``) documents both; continuation lines are indented deeper."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    i = 0
    while i < len(lines):
        m = _SECTION.match(lines[i])
        i += 1
        if not m:
            continue
        names: list[str] = []
        entry_indent = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                if i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= len(m.group(1)):
                    break
                continue
            indent = len(line) - len(line.lstrip())
            if indent <= len(m.group(1)):
                break
            entry = _ENTRY.match(line.strip())
            if entry and (entry_indent is None or indent <= entry_indent):
                entry_indent = indent
                names = re.split(r"\s*(?:,|/|\band\b)\s*", entry.group(1))
                for n in names:
                    out[n] = entry.group(2)
            elif names:
                for n in names:
                    out[n] = f"{out[n]} {line.strip()}".strip()
            i += 1
    return out


def field_docs(source: type | Callable) -> dict[str, str]:
    """``{field or parameter: help text}`` of a dataclass (its and its bases' ``Attributes:`` sections) or a
    function (its ``Args:`` section)."""
    if isinstance(source, type):
        docs: dict[str, str] = {}
        for cls in reversed(source.__mro__):
            docs.update(_section_docs(cls.__dict__.get("__doc__")))
        return docs
    return _section_docs(source.__doc__)


# -- types --------------------------------------------------------------------------------------------------------
def seed(text: str) -> int:
    """An argparse type: an integer seed in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"a seed is an integer in [0, {SEED_MAX}] (JAX keeps 32 bits, so others repeat a seed of that range), "
            f"got {value}")
    return value


def path(text: str) -> str:
    """An argparse type: a file or folder path, not empty (an unset shell variable would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def comma_list(item: Callable[[str], Any], name: str = "value") -> Callable[[str], tuple]:
    """An argparse type: comma-separated distinct values, each parsed by ``item``."""

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated {name}s like 1,2,3, got {text!r}")
        values = tuple(item(p) for p in parts)
        twice = sorted({_show(v) for v in values if values.count(v) > 1})
        if twice:
            raise argparse.ArgumentTypeError(f"{', '.join(twice)} listed more than once; list each {name} once")
        return values

    parse.__name__ = f"{name} list"
    return parse


def _is_seed(name: str) -> bool:
    return name in ("seed", "seeds") or name.endswith("_seed")


def _scalar(hint: Any, name: str) -> tuple[Callable[[str], Any], str]:
    if _is_seed(name) and hint is int:
        return seed, "SEED"
    if hint is int:
        return _integer, "INT"
    if hint is float:
        return _finite, "FLOAT"
    if hint is str:
        return str, "TEXT"
    raise TypeError(f"no command-line type for {name}: {hint!r}")


def _argument(name: str, hint: Any, default: Any) -> tuple[list[str], dict[str, Any]]:
    """Option strings and ``add_argument`` keywords for a field annotated ``hint``."""
    flag = "--" + name.replace("_", "-")
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if default is True:
            return ["--no-" + name.replace("_", "-")], {"action": "store_false", "dest": name}
        return [flag], {"action": "store_true"}
    if origin is typing.Literal:
        return [flag], {"choices": list(args), "type": type(args[0])}
    if origin in (tuple, list, collections.abc.Sequence, collections.abc.Iterable) and args:
        item, metavar = _scalar(args[0], name[:-1] if name.endswith("s") else name)
        return [flag], {"type": comma_list(item, metavar.lower()), "metavar": f"{metavar},..."}
    convert, metavar = _scalar(hint, name)
    return [flag], {"type": convert, "metavar": metavar}


def _fields(source: type | Callable) -> dict[str, tuple[Any, Any]]:
    """``{name: (type hint, default or MISSING)}`` of a dataclass's init fields or a function's parameters."""
    hints = typing.get_type_hints(source)
    if dataclasses.is_dataclass(source):
        out = {}
        for f in dataclasses.fields(source):
            if f.init:
                default = (f.default if f.default is not dataclasses.MISSING
                           else f.default_factory() if f.default_factory is not dataclasses.MISSING
                           else dataclasses.MISSING)
                out[f.name] = (hints[f.name], default)
        return out
    return {p.name: (hints.get(p.name, type(p.default)),
                     dataclasses.MISSING if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(source).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# -- options ------------------------------------------------------------------------------------------------------
def _label(source) -> str:
    return getattr(source, "name", None) if isinstance(getattr(source, "name", None), str) else source.__name__


def add_options(parser: argparse._ActionsContainer, *sources: type | Callable, only: Iterable[str] | None = None,
                skip: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
                help: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None) -> list[str]:
    """Add one option per field of each source (a dataclass or a function); return the names added.

    With one source, an option's default is the source's (or ``defaults[name]``). With several (e.g. every SAE
    variant), a field they share becomes one option whose default is None, meaning "each source's own default";
    its help lists those defaults and the sources it applies to (see :func:`given`).

    Args:
      only / skip: the fields to include / leave out (default: every field with a default, or in ``defaults``).
      defaults: defaults that replace the source's for this command (say what they mean in ``help``).
      help: help lines that replace the docstring's.
      flags: option strings that replace ``--field-name`` (the value still lands in ``args.field_name``).

    Raises:
      TypeError: a field has no help line (document it in the source's docstring) or an unsupported type.
    """
    only = None if only is None else list(only)
    skip, defaults, help, flags = set(skip), dict(defaults or {}), dict(help or {}), dict(flags or {})
    table: dict[str, dict[str, Any]] = {}  # name -> {"hint", "defaults": {label: value}, "doc"}
    for source in sources:
        docs = field_docs(source)
        for name, (hint, default) in _fields(source).items():
            if name in skip or (only is not None and name not in only):
                continue
            if only is None and default is dataclasses.MISSING and name not in defaults:
                continue
            row = table.setdefault(name, {"hint": hint, "defaults": {}, "docs": {}})
            row["defaults"][_label(source)] = default
            if name in docs and docs[name] not in row["docs"].values():
                row["docs"][_label(source)] = docs[name]
    names = [n for n in only if n in table] if only is not None else list(table)
    for name in names:
        row = table[name]
        texts = {"": help[name]} if name in help else row["docs"]
        if not texts:
            raise TypeError(f"{name} has no help line: document it in the Attributes/Args section of "
                            f"{', '.join(_label(s) for s in sources)}'s docstring")
        text = "; ".join(f"{label}: {d.rstrip('.')}" if len(texts) > 1 else d.rstrip(".")
                         for label, d in texts.items())
        if len(sources) == 1:
            default = defaults.get(name, next(iter(row["defaults"].values())))
            strings, kwargs = _argument(name, row["hint"], default)
        else:
            strings, kwargs = _argument(name, row["hint"], None)
            if kwargs.get("action") == "store_true" and True in row["defaults"].values():
                kwargs["action"] = argparse.BooleanOptionalAction  # on by default somewhere: offer --no-NAME too
            default = defaults.get(name)
            shown = {label: v for label, v in row["defaults"].items() if v is not dataclasses.MISSING}
            values = set(map(_show, shown.values()))
            where = ", ".join(row["defaults"])
            if len(values) == 1:
                text += f" ({where}; default: {values.pop()})"
            else:
                text += f" ({where}; default: {', '.join(f'{_show(v)} for {k}' for k, v in shown.items())})"
        if name in flags:
            strings, kwargs = [flags[name]], {**kwargs, "dest": name}
        parser.add_argument(*strings, default=default, help=text, **kwargs)
    spell_as(parser, **{n: flags.get(n, "--" + n.replace("_", "-")) for n in names})
    return names


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """``{name: value}`` of the options ``names`` whose value is not None (shared options left unset are None,
    so the config's own default applies)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def spell_as(parser: argparse._ActionsContainer, **flags: str) -> None:
    """Record that a library error's ``name=`` is the option ``flags[name]`` in this command (:func:`cli_spelling`)."""
    parser.set_defaults(**{_FLAGS: {**(parser.get_default(_FLAGS) or {}), **flags}})


def cli_spelling(message: str, args: argparse.Namespace | None) -> str:
    """``message`` with the Python spelling of the command's options replaced by their flags:
    ``pass arch=`` -> ``pass --arch``, ``got steps=3`` -> ``got --steps 3``, ``log_every`` -> ``--log-every``."""
    return _spell(message, getattr(args, _FLAGS, None) or {})


def _spell(text: str, flags: Mapping[str, str], bare_only: bool = False) -> str:
    """``name=`` (unless ``bare_only``) and bare names with an underscore (no sentence uses those as words)
    -> ``--flag``, for ``{name: --flag}`` in ``flags``."""
    for name, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        if not bare_only:
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}=\s?", flag + " ", text)
        if "_" in name:
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w=])", flag, text)
    return text
