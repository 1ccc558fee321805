"""provenance(): the record stored beside every experiment's and benchmark's numbers."""

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import jax

from jaxequiv.io import provenance
from jaxequiv.io.provenance import REPO


@dataclasses.dataclass(frozen=True)
class _Cfg:
    sizes: tuple[int, ...] = (2, 3)
    lr: float = 1


def test_provenance_records_config_code_versions_machine_and_times():
    t0 = time.time() - 2.0
    p = provenance(_Cfg(), seeds=[0, 1], started=t0)
    json.dumps(p)  # JSON-ready as it is
    assert p["config"] == {"sizes": [2, 3], "lr": 1.0} and p["seeds"] == [0, 1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert p["git"]["commit"] == head and p["git"]["short"] == head[:7]
    assert isinstance(p["git"]["dirty"], bool) and p["git"]["dirty"] == bool(p["git"]["changed"])
    # a run that began before HEAD was committed may have run an earlier commit's code: flagged
    committed = int(subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO, capture_output=True,
                                   text=True).stdout)
    assert p["git"]["committed_after_start"] is (committed > t0)
    assert provenance(started=committed - 1.0)["git"]["committed_after_start"] is True
    assert provenance(started=committed + 1.0)["git"]["committed_after_start"] is False
    v = p["versions"]
    assert v["jax"] == jax.__version__ and v["python"] == ".".join(map(str, sys.version_info[:3]))
    assert all(v[k] for k in ("jaxlib", "flax", "optax", "numpy"))
    assert p["machine"]["devices"] == [str(d) for d in jax.devices()] and p["machine"]["cpu"]["cores"] >= 1
    assert p["machine"]["cpu"]["model"] and len(p["machine"]["load_avg"]) == 3 and p["argv"] == sys.argv
    assert 2.0 <= p["wall_s"] < 60 and p["started"] < p["finished"]


def test_provenance_takes_dicts_and_namespaces_and_reports_imported_extras():
    p = provenance(argparse.Namespace(quick=True, runs=(1, 2)))
    assert p["config"] == {"quick": True, "runs": [1, 2]} and p["wall_s"] is None and p["started"] is None
    assert p["git"]["committed_after_start"] is None
    assert provenance({"a": (1,)})["config"] == {"a": [1]}
    # torch is reported only when the run imported it
    assert ("torch" in provenance()["versions"]) == ("torch" in sys.modules)
