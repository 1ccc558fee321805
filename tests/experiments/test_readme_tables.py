"""Every number in the experiment READMEs comes from the committed full-run results (experiments/readme_tables.py)."""

import json
import re

import pytest

from experiments import readme_tables

# a measured number as the READMEs quote them: a decimal with two or more places, or a time in seconds
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*\.\d{2,}(?!\d)|(?<![\w.])\d[\d,]* s\b")


def test_readmes_are_generated_from_the_committed_results():
    assert readme_tables.main(["--check"]) == 0, "run python experiments/readme_tables.py"


@pytest.mark.parametrize("name", sorted(readme_tables.EXPERIMENTS))
def test_prose_quotes_no_number_outside_the_generated_blocks(name):
    """Text outside the generated blocks may repeat a number of a block, never introduce one."""
    text = (readme_tables.HERE / name / "README.md").read_text()
    begin, end = re.escape("<!-- generated: "), re.escape("<!-- end generated: ")
    blocks = re.findall(f"{begin}.*?{end}", text, flags=re.S)
    assert blocks, f"{name}/README.md has no generated blocks"
    prose = re.sub(f"{begin}.*?{end}", "", text, flags=re.S)
    generated = set(NUMBER.findall("".join(blocks)))
    assert set(NUMBER.findall(prose)) <= generated, set(NUMBER.findall(prose)) - generated


def test_missing_results_and_stale_readmes_are_reported(tmp_path, capsys):
    src = readme_tables.HERE / "equiv_ioi"
    for name in readme_tables.EXPERIMENTS:
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit, match="results.json is missing"):
        readme_tables.main(["--check", "--root", str(tmp_path)])
    for name, renderers in readme_tables.EXPERIMENTS.items():
        folder = readme_tables.HERE / name
        for rel in renderers:  # every results file the README is made from
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text((folder / rel).read_text())
        (tmp_path / name / "README.md").write_text((folder / "README.md").read_text())
    assert readme_tables.main(["--check", "--root", str(tmp_path)]) == 0
    res = json.loads((src / readme_tables.RESULTS).read_text())
    res["congruity"][0][1] = 0.123
    (tmp_path / "equiv_ioi" / readme_tables.RESULTS).write_text(json.dumps(res))
    assert readme_tables.main(["--check", "--root", str(tmp_path)]) == 1
    assert "equiv_ioi" in capsys.readouterr().err
    assert readme_tables.main(["--root", str(tmp_path)]) == 0  # rewritten from the results
    assert "0.12" in (tmp_path / "equiv_ioi" / "README.md").read_text()
    assert readme_tables.main(["--check", "--root", str(tmp_path)]) == 0


def test_codec_sensitivity_verdicts_follow_the_results():
    """The explanations' verdicts shown in the README are the ones in the committed sensitivity results."""
    res = json.loads((readme_tables.HERE / "codec_images" / readme_tables.SENSITIVITY).read_text())
    text = readme_tables.codec_sensitivity_blocks(res)["codec-sens-explanations"]
    for w in res["widths"]:
        for v in w["summary"]["explanations"].values():
            assert f"**{v['verdict']}**" in text
    w = res["widths"][0]
    w["summary"]["explanations"]["more_modes"]["verdict"] = "refuted (edited)"
    assert "**refuted (edited)**" in readme_tables.codec_sensitivity_blocks(res)["codec-sens-explanations"]


def test_retina_findings_follow_the_results():
    """The retina verdicts are computed from the numbers: moving them flips the verdicts."""
    res = json.loads((readme_tables.HERE / "codec_retina" / readme_tables.RESULTS).read_text())
    cl = res["clustering"]
    primary, act = cl[res["primary"]], cl[res["primary"].replace("contribution", "activation")]
    primary.update(ari_mean=0.9, ari_min=0.9, ari_max=0.9, p_max=0.5)
    act.update(ari_mean=0.1, ari_min=0.1, ari_max=0.1)
    rows = {r.split(" | ")[0].lstrip("| "): r for r in readme_tables.retina_blocks(res)["retina-findings"].splitlines()}
    assert "does not hold" in rows["the clusters of contribution-mode usage match the cell types above chance"]
    assert "**holds**" in rows["contribution modes recover the types better than activation modes of the same layer"]
    assert "0.90 vs 0.10" in rows["contribution modes recover the types better than activation modes of the same layer"]


def test_one_renderer_serves_two_results_files_of_a_readme():
    """``renamed`` gives a second results file (another preset of a sweep) its own block names."""
    blocks = {"codec-sens-run": "run", "codec-sens-f": "f", "other": "x"}
    assert readme_tables.renamed(blocks, "codec-sens", "codec-fashion") == {
        "codec-fashion-run": "run", "codec-fashion-f": "f", "other": "x"}
