"""jaxequiv.cliargs: options generated from dataclasses and signatures, plain-text help, library errors in the
command line's spelling; and the real ``jaxequiv`` parser: every option documented, with its default, no markup."""

import argparse
import dataclasses
import re
from typing import Literal

import pytest

from jaxequiv import cli, cliargs


@dataclasses.dataclass(frozen=True)
class Base:
    """Shared settings.

    Attributes:
      lr: learning rate of the optimiser,
        continued on a second line.
    """

    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Settings(Base):
    """Training settings.

    Attributes:
      batch_size: rows per step.
      schedule: learning-rate schedule.
      shuffle / resample: whether to shuffle and resample.
      prefixes: nested dictionary sizes.
      data_seed: seed of the row order.
      note: free text (None: no note).
    """

    batch_size: int = 32
    schedule: Literal["constant", "cosine"] = "constant"
    shuffle: bool = True
    resample: bool = False
    prefixes: tuple[int, ...] = (4, 8)
    data_seed: int = 0
    note: str | None = None


def parse(source, argv, **kw):
    parser = cliargs.Parser(prog="prog")
    names = cliargs.add_options(parser, source, **kw)
    return parser, names, parser.parse_args(argv)


def error_of(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.endswith("(see prog --help)\n"), err
    return err


def test_field_docs_of_a_dataclass_with_bases_and_of_a_function():
    docs = cliargs.field_docs(Settings)
    assert docs["lr"] == "learning rate of the optimiser, continued on a second line."
    assert docs["shuffle"] == docs["resample"] == "whether to shuffle and resample."

    def f(x, *, chunk: int = 8, rule: str = "a"):
        """Do it.

        Args:
          x: the data.
          chunk, rule: how.
        """

    assert cliargs.field_docs(f) == {"x": "the data.", "chunk": "how.", "rule": "how."}


def test_add_options_types_defaults_and_switches():
    parser, names, args = parse(Settings, [])
    assert names == ["lr", "batch_size", "schedule", "shuffle", "resample", "prefixes", "data_seed", "note"]
    assert cliargs.given(args, names) == {"batch_size": 32, "schedule": "constant", "shuffle": True,
                                          "resample": False, "prefixes": (4, 8), "data_seed": 0, "lr": 1e-3}
    _, _, args = parse(Settings, ["--batch-size", "7", "--schedule", "cosine", "--no-shuffle", "--resample",
                                  "--prefixes", "2,6", "--data-seed", "4294967295", "--note", "hi", "--lr", "0.5"])
    assert Settings(**cliargs.given(args, names)) == Settings(0.5, 7, "cosine", False, True, (2, 6), 2**32 - 1, "hi")


@pytest.mark.parametrize("argv,expect", [
    (["--batch-size", "1.5"], "argument --batch-size: expected an integer, got '1.5'"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--lr", "x"], "argument --lr: expected a number, got 'x'"),
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--prefixes", "4,4"], "argument --prefixes: 4 listed more than once; list each int once"),
    (["--prefixes", "4,"], "argument --prefixes: expected comma-separated ints like 1,2,3, got '4,'"),
    (["--data-seed", "-1"], "argument --data-seed: a seed is an integer in [0, 4294967295]"),
    (["--shuffle"], "unrecognized arguments: --shuffle"),  # on by default: the switch is --no-shuffle
])
def test_bad_values_are_one_line(argv, expect, capsys):
    parser, _, _ = parse(Settings, [])
    assert expect in error_of(parser, argv, capsys)


def test_only_skip_defaults_help_and_flags():
    parser, names, args = parse(Settings, [], only=("lr", "batch_size"), defaults={"batch_size": 64},
                                help={"lr": "step size"}, flags={"batch_size": "--batch"})
    assert names == ["lr", "batch_size"] and args.batch_size == 64
    text = parser.format_help()
    assert "--batch INT" in text and "step size (default: 0.001)" in text and "--schedule" not in text
    _, names, _ = parse(Settings, [], skip=("note", "lr"))
    assert "note" not in names and "lr" not in names


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass
    class Undocumented:
        """No sections."""

        steps: int = 3

    with pytest.raises(TypeError, match="steps has no help line"):
        cliargs.add_options(cliargs.Parser(), Undocumented)


def test_shared_fields_of_several_sources_default_to_each_sources_own():
    @dataclasses.dataclass
    class A:
        """A.

        Attributes:
          k: active latents.
          l1: sparsity weight.
        """

        k: int = 4
        l1: float = 0.1

    @dataclasses.dataclass
    class B:
        """B.

        Attributes:
          k: active latents.
        """

        k: int = 8

    parser = cliargs.Parser(prog="prog")
    names = cliargs.add_options(parser, A, B)
    args = parser.parse_args([])
    assert names == ["k", "l1"] and cliargs.given(args, names) == {}  # unset: each config's own default
    text = " ".join(parser.format_help().split())
    assert "active latents (A, B; default: 4 for A, 8 for B)" in text and "sparsity weight (A; default: 0.1)" in text
    assert cliargs.given(parser.parse_args(["--k", "2"]), names) == {"k": 2}


def test_plain_removes_markup_and_help_keeps_examples():
    assert cliargs.plain("see :func:`~jaxequiv.sae.train` and :class:`jaxequiv.Network`") == \
        "see train and jaxequiv.Network"
    assert cliargs.plain("``--out`` is *the* folder. Examples::") == "--out is the folder. Examples:"
    parser = cliargs.Parser(prog="prog", description="Run ``prog``.\n\nExamples::\n\n    prog --x 1\n    prog --x 2\n")
    text = parser.format_help()
    assert "Run prog." in text and "Examples:\n\n    prog --x 1\n    prog --x 2" in text and "``" not in text


def test_cli_spelling_names_the_flags():
    parser = cliargs.Parser(prog="prog")
    cliargs.add_options(parser, Settings, only=("batch_size", "lr"))
    cliargs.spell_as(parser, arch="--arch")
    args = parser.parse_args([])
    assert cliargs.cli_spelling("pass arch= or lower batch_size; got lr=5", args) == \
        "pass --arch or lower --batch-size; got --lr 5"
    assert cliargs.cli_spelling("pass arch=", None) == "pass arch="


def test_seed_and_path_types():
    assert cliargs.seed("0") == 0 and cliargs.seed(str(2**32 - 1)) == 2**32 - 1
    for bad in ("-1", str(2**32), "1e3"):
        with pytest.raises(argparse.ArgumentTypeError):
            cliargs.seed(bad)
    assert cliargs.path("a/b") == "a/b"
    with pytest.raises(argparse.ArgumentTypeError, match="empty string"):
        cliargs.path("  ")
    assert cliargs.comma_list(int)("3,1") == (3, 1)


def _parsers(parser, prog="jaxequiv"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_option_of_every_command_has_help_and_its_default_and_no_markup():
    for prog, parser in _parsers(cli.build_parser()):
        assert not re.search(r"``|:(func|class|mod|data|meth):|::\s*$", parser.format_help(), re.M), prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            line = formatter._expand_help(action)
            assert action.help and line, (prog, action.option_strings)
            if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
                assert "default" in line, (prog, action.option_strings, line)
