"""README.md runs as written: every ``python`` block runs as a script in an empty folder, and every ``jaxequiv ...``
line of a ``bash`` block parses with the real command line.

A block may be preceded by one marker line (an HTML comment, invisible on GitHub):

* ``<!-- readme-test: skip REASON -->``: not run; the test is reported as skipped with REASON (pytest -ra);
* ``<!-- readme-test: needs MODULE -->``: run only where MODULE imports (skipped, with that reason, elsewhere);
* ``<!-- readme-test: before CODE -->``: CODE (Python, one line) runs first in the same script, e.g. to write a
  file that the block reads.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|needs|before)\s+(.*?)\s*-->\s*$")


def blocks(language: str) -> list:
    """``pytest.param(code, marker, id=section-line)`` for every block of ``language`` in README.md."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != language:
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        heading = re.findall(r"^#+ (.+)$", text[: m.start()], re.M)[-1]
        slug = re.sub(r"\W+", "-", heading.lower()).strip("-")
        out.append(pytest.param(m.group(2), marker.groups() if marker else None, id=f"{slug}-L{line}"))
    return out


def test_markers_are_well_formed():
    text = (ROOT / "README.md").read_text()
    for comment in re.findall(r"<!--\s*readme-test.*?-->", text):
        assert MARKER.search(comment), f"malformed marker {comment!r}: use skip REASON, needs MODULE or before CODE"


@pytest.mark.slow  # the one-screen API block builds a ResNet, its contributions and an SAE: ~50 s of CPU (the
# first ResNet of a process costs ~10 s of eager initialisation alone); the other blocks 5-25 s each
@pytest.mark.parametrize("code,marker", blocks("python"))
def test_python_block_runs(code, marker, tmp_path):
    setup = ""
    if marker is not None:
        kind, arg = marker
        if kind == "skip":
            pytest.skip(f"README block marked skip: {arg}")
        if kind == "needs":
            pytest.importorskip(arg, reason=f"README block needs {arg}")
        if kind == "before":
            setup = arg + "\n"
    script = tmp_path / "block.py"
    script.write_text(setup + code)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, f"README block failed:\n{setup + code}\n{r.stderr[-3000:]}"


def commands() -> list[list[str]]:
    found = []
    for param in blocks("bash"):
        for line in param.values[0].splitlines():
            if line.startswith("jaxequiv "):
                found.append(shlex.split(line, comments=True))
    return found


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a[1:3]))
def test_bash_command_parses(argv):
    from jaxequiv import cli

    parser = cli.build_parser()
    try:
        args, unknown = parser.parse_known_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"README command {' '.join(argv)} does not parse (status {e.code})")
    assert not unknown and getattr(args, "func", None), argv


def test_readme_lists_every_command():
    from jaxequiv import cli

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    listed = {a[1] for a in commands()}
    assert set(sub.choices) <= listed, set(sub.choices) - listed
