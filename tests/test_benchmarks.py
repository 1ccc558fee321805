"""The benchmark machinery (benchmarks/common.py, readme_table.py) and that every benchmark script still parses its
arguments. The benchmarks themselves are not tests: they run for minutes to hours (``--quick`` smoke-runs them)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
sys.path.insert(0, str(BENCH))

import readme_table  # noqa: E402


def _run(args, timeout=120):
    # without the test session's fake-device XLA_FLAGS: the benchmarks run on the plain CPU client
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=BENCH, env=env)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_its_arguments(script):
    out = _run([script, "--help"], timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_session_times_alternately_and_writes_results(tmp_path):
    """A Session pins threads, times two sides alternately, profiles a jitted call and writes the results file."""
    script = tmp_path / "tiny.py"
    script.write_text(textwrap.dedent(f"""
        import argparse, sys, time
        sys.path.insert(0, {str(BENCH)!r})
        import common
        args = common.add_args(argparse.ArgumentParser()).parse_args()
        s = common.Session("tiny", args, torch=False)
        import jax, jax.numpy as jnp
        order = []
        t = s.time({{"a": lambda: (order.append("a"), time.sleep(0.002)), "b": lambda: (order.append("b"), time.sleep(0.004))}})
        mm = jax.jit(lambda u: u @ u)
        x = jnp.ones((64, 64))
        mm(x).block_until_ready()
        ops = common.profile_ops(lambda: mm(x).block_until_ready())
        print("ORDER", "".join(order))
        print("OPS", sum(v for _, v in ops))
        r = common.ratio(t["b"], t["a"])
        s.row("b vs a", f"{{r[0]:.2f}}x", ">= 1x", r[0] >= 1, "ratio")
        s.finish("tiny", ratio=round(r[0], 2))
    """))
    out_json = tmp_path / "tiny.json"
    out = _run([str(script), "--runs", "3", "--threads", "1", "--json", str(out_json)])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("RESULT tiny ratio=")
    # one warm-up each, then rounds with the order rotated: ab, ba, ab
    assert next(ln for ln in lines if ln.startswith("ORDER")) == "ORDER ab" + "ab" + "ba" + "ab"
    assert 0.0 < float(next(ln for ln in lines if ln.startswith("OPS")).split()[1]) <= 1.0 + 1e-9
    doc = json.loads(out_json.read_text())
    assert doc["machine"]["threads"] == 1 and doc["machine"]["xla_threads"] == 1  # XLA's pool follows the affinity
    assert doc["result"] == lines[-1] and not doc["quick"]
    prov = doc["provenance"]  # jaxequiv.io.provenance, as in the experiments' results files
    assert doc["commit"].split("+")[0] == prov["git"]["short"] and prov["config"]["runs"] == 3
    assert prov["versions"]["jax"] and prov["wall_s"] > 0 and doc["machine"]["cpu"] == prov["machine"]["cpu"]
    a, b = doc["timings"]["a"], doc["timings"]["b"]
    assert len(a["samples"]) == len(b["samples"]) == 3
    assert a["min"] <= a["median"] <= a["max"] and a["q1"] <= a["q3"]
    assert b["median"] > a["median"]  # 4 ms vs 2 ms sleeps
    assert doc["rows"] == [{"label": "b vs a", "value": doc["rows"][0]["value"], "target": ">= 1x", "met": True,
                            "key": "ratio"}]


def _doc(name, quick=False):
    return {"benchmark": name, "date": "2026-11-29T10:00:00", "commit": "abc1234", "quick": quick,
            "machine": {"cpu": {"model": "Test CPU", "vector": ["avx2", "avx512f"]}, "threads": 2},
            "timings": {"x": {"load_before": 0.5}}, "load_end": 0.7,
            "rows": [{"label": f"{name} speed", "value": "2.00x", "target": ">= 1.5x", "met": True, "key": "r"},
                     {"label": f"{name} other", "value": "0.50x", "target": ">= 1x", "met": False, "key": "o"}]}


def test_readme_table_is_generated_from_results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "sae.json").write_text(json.dumps(_doc("sae")))
    (res / "contributions.json").write_text(json.dumps(_doc("contributions")))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n{readme_table.BEGIN}\nold typed table\n{readme_table.END}\n\nafter\n")
    assert readme_table.main(["--check", "--readme", str(readme), "--results", str(res)]) == 1
    assert readme_table.main(["--readme", str(readme), "--results", str(res)]) == 0
    text = readme.read_text()
    assert "old typed table" not in text and text.startswith("# x\n\nintro\n") and text.endswith("\n\nafter\n")
    assert "| contributions speed | 2.00x | >= 1.5x | yes | [1] |" in text
    assert text.index("contributions speed") < text.index("sae speed")  # a fixed order, not the file names'
    assert "| sae other | 0.50x | >= 1x | **no** | [2] |" in text
    assert "[2] `bench_sae.py`, 2026-11-29, commit abc1234, Test CPU (AVX-512), 2 threads per side, load 0.5-0.7" in text
    assert readme_table.main(["--check", "--readme", str(readme), "--results", str(res)]) == 0


def test_readme_table_refuses_quick_results_and_missing_markers(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "sae.json").write_text(json.dumps(_doc("sae", quick=True)))
    readme = tmp_path / "README.md"
    readme.write_text(f"{readme_table.BEGIN}\n{readme_table.END}\n")
    with pytest.raises(SystemExit, match="--quick smoke test"):
        readme_table.main(["--readme", str(readme), "--results", str(res)])
    readme.write_text("no markers\n")
    (res / "sae.json").unlink()
    with pytest.raises(SystemExit, match="no benchmark table markers"):
        readme_table.main(["--readme", str(readme), "--results", str(res)])


def test_committed_results_match_the_readme():
    assert readme_table.main(["--check"]) == 0, "run python benchmarks/readme_table.py"


def test_extrapolation_recovers_linear_plus_quadratic_cost():
    import bench_peers

    cost = lambda m: 0.3 * m + 0.02 * m * m  # noqa: E731
    assert bench_peers.extrapolate(cost(4), cost(8), 4, 8, 64) == pytest.approx(cost(64))
    assert bench_peers.extrapolate(2.0, 2.0, 64, 64, 64) == 2.0  # the full size timed directly
    assert bench_peers.extrapolate(1.0, 1.5, 4, 8, 64) >= 0  # never negative coefficients


@pytest.mark.slow  # fresh processes (1, then 2 x 2 devices) compiling three stages each: ~60 s on 2 idle cores
def test_scaling_quick_run_equals_one_process():
    out = _run(["bench_scaling.py", "--quick", "--timeout", "500"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = out.stdout.splitlines()[-1]
    assert result.startswith("RESULT scaling store_diff=")
    values = dict(item.split("=") for item in result.split()[2:])
    # the same examples per device (one chunk of 16 split 4/4/4/4 against 16 on one device: other batch shapes)
    assert float(values["store_diff"]) <= 1e-6 and float(values["congruity_diff"]) == 0.0
    assert float(values["sweep_diff"]) <= 1e-6  # batch sums in another order, 10 Adam steps (measured 6e-8)
    assert float(values["bytes_per_device_ratio"]) < 0.5  # store split 4 ways, the sweep's state 2 ways
