"""Package-level promises: a light import and a working CLI entry point."""

import subprocess
import sys


import jaxequiv
from jaxequiv import cli


def test_import_stays_light():
    code = (
        "import sys, jaxequiv, jaxequiv.cli; cli = jaxequiv.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'tracr', 'haiku', 'matplotlib', 'sklearn', 'transformers', 'tqdm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import jaxequiv pulled in {out.stdout.strip()}"


def test_version_flag(capsys):
    assert cli.main(["--version"]) == 0
    assert jaxequiv.__version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
