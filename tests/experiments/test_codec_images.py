"""The CODEC image experiment runs end to end (a tiny --quick config) and writes its report files."""

import importlib.util
import json
import os

import pytest

RUN = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "codec_images", "run.py")


@pytest.mark.slow
def test_quick_experiment_writes_report(tmp_path):
    spec = importlib.util.spec_from_file_location("codec_images_run", RUN)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    # the --quick preset shrunk (2 blocks instead of 8, few steps) so the test stays short; the compile time
    # of the SAEs and networks dominates, and it grows with the number of blocks
    cfg = {"quick": {"dataset": "digits", "blocks": [1, 1], "n_train": 400, "n_analysis": 120, "width": 4,
                     "epochs": 3, "batch_size": 64, "ig_steps": 4, "chunk_size": 120, "sae_steps": 100,
                     "sae_theta": 0.5, "sae_batch": 64,
                     "trials": 3, "images_per_class": 5, "percentages": [10, 50, 100], "picture_images": 3,
                     "picture_filter": 1}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert run.main(["--quick", "--config", str(path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for name in ("fig3_contributions_vs_activations.png", "fig5_class_selectivity.png", "fig6_interventions.png",
                 "mode_pictures.png"):
        assert name in text and (out / name).stat().st_size > 1000
    res = json.loads((out / "results.json").read_text())
    assert res["sites"] == ["layer1.0", "layer2.0"] and set(res["findings"]) == set("abcdef")
    assert 0.0 <= res["test_accuracy"] <= 1.0


def test_config_presets_load_and_reject_unknown_keys(tmp_path):
    from jaxequiv.codec.pipeline import CodecConfig

    cfg = os.path.join(os.path.dirname(RUN), "config.json")
    quick, full = CodecConfig.from_json(cfg, "quick"), CodecConfig.from_json(cfg, "full")
    assert sum(quick.blocks) >= 8 and sum(full.blocks) >= 8 and full.dataset == "auto"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quick": {"widht": 3}}))
    with pytest.raises(ValueError, match="widht"):
        CodecConfig.from_json(str(bad), "quick")
    with pytest.raises(ValueError, match="preset"):
        CodecConfig.from_json(str(bad), "full")
