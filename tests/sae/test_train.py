"""SAE training: determinism, lock-step sweeps, memory-mapped data, checkpoints, divergence, bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv import sae
from jaxequiv.contributions import global_std
from jaxequiv.sae.data import BatchStream
from jaxequiv.sae.train import CHECKPOINT_FILE, _meta, make_optimizer

D = 8


def _sparse_data(n=512, d=D, atoms=12, seed=0):
    """Rows = sparse non-negative combinations of a few random atoms (what an SAE should recover)."""
    rng = np.random.default_rng(seed)
    dic = rng.normal(size=(atoms, d))
    codes = rng.random((n, atoms)) * (rng.random((n, atoms)) < 0.15)
    return (codes @ dic).astype(np.float32)


def _same(a, b):
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# One optimiser setting and chunk length for every run below, so that runs of the same variant and widths share
# their compiled step (the test time is mostly compilation).
S = sae.TrainSettings(batch_size=32, steps=30, lr=3e-3, log_every=10)
STSAE = sae.STSAE(d_in=D, d_sae=D, theta=0.5, l1=0.0)


def test_training_learns_and_is_deterministic():
    x = _sparse_data()
    cfg = STSAE
    r1 = sae.train(cfg, x, seed=3, settings=S)
    r2 = sae.train(cfg, x, seed=3, settings=S)
    r3 = sae.train(cfg, x, seed=4, settings=S)
    _same(r1.params, r2.params)
    assert not np.allclose(np.asarray(r1.params["W_dec"]), np.asarray(r3.params["W_dec"]))
    assert r1.history[-1]["mse"] < r1.history[0]["mse"] and r1.step == 30 and len(r1.history) == 3
    assert set(r1.history[0]) == {"step", "loss", "mse", "l0", "dead"}


def test_train_many_equals_separate_runs_across_groups():
    x = _sparse_data()
    # vmapped groups of two stsae (different theta, l1) and two topk whose AuxK switches on mid-run (group-level
    # lax.cond), interleaved
    topk = [sae.TopK(d_in=D, d_sae=2 * D, k=2, dead_steps=4), sae.TopK(d_in=D, d_sae=2 * D, k=2, dead_steps=4,
                                                                        aux_coef=0.5)]
    cfgs = [STSAE, topk[0], sae.STSAE(d_in=D, d_sae=D, theta=0.9, l1=1e-4), topk[1]]
    seeds = [1, 3, 4, 5]
    st_ = dataclasses.replace(S, steps=20, data_seed=7)
    many = sae.train_many(cfgs, x, seeds=seeds, settings=st_)
    for c, s, r in zip(cfgs, seeds, many):
        one = sae.train(c, x, seed=s, settings=st_)
        assert r.cfg is c and r.seed == s
        for k in one.params:
            np.testing.assert_allclose(np.asarray(r.params[k]), np.asarray(one.params[k]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([h["loss"] for h in r.history], [h["loss"] for h in one.history], rtol=1e-5)
    assert any(np.asarray(cfg.aux_needed(r.state)) for cfg, r in zip(cfgs, many) if cfg in topk)


def test_memmap_data_streams_like_in_memory(tmp_path):
    x = _sparse_data(n=300)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    cfg = sae.ReluL1(d_in=D, d_sae=16, l1=1e-3)
    a = sae.train(cfg, x, seed=0, settings=S)
    b = sae.train(cfg, mm, seed=0, settings=S)
    _same(a.params, b.params)
    scaled = sae.Scaled(mm, 0.5)
    np.testing.assert_allclose(scaled[np.array([0, 5])], x[[0, 5]] * 0.5)
    np.testing.assert_allclose(global_std(mm, chunk_rows=7), x.astype(np.float64).std(), rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(5, 200), b=st.integers(1, 5), seed=st.integers(0, 1000))
def test_batch_stream_covers_each_row_once_per_epoch(n, b, seed):
    data = np.arange(n, dtype=np.float32)[:, None]
    s = BatchStream(data, b, seed)
    e = s.steps_per_epoch
    rows = s.chunk(0, e)[..., 0].ravel()
    assert len(set(rows.tolist())) == e * b  # no repeats within an epoch
    np.testing.assert_array_equal(BatchStream(data, b, seed).chunk(e, e + 1), s.chunk(e, e + 1))


def test_bad_data_and_config_raise(tmp_path):
    x = _sparse_data(n=64)
    bad = x.copy()
    bad[5, 2] = np.nan
    cfg = sae.ReluL1(d_in=D, d_sae=16)
    with pytest.raises(ValueError, match="row 5, column 2"):
        sae.train(cfg, bad, settings=S)
    np.save(tmp_path / "bad.npy", np.where(np.arange(64)[:, None] == 40, np.inf, x).astype(np.float32))
    with pytest.raises(ValueError, match="row 40"):
        sae.train(cfg, np.load(tmp_path / "bad.npy", mmap_mode="r"), settings=sae.TrainSettings(batch_size=64, steps=2))
    with pytest.raises(ValueError, match="d_in=9 but the data has d=8"):
        sae.train(sae.ReluL1(d_in=9, d_sae=16), x, settings=S)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        sae.train(cfg, x[0], settings=S)
    with pytest.raises(ValueError, match="exceeds"):
        sae.train(cfg, x, settings=sae.TrainSettings(batch_size=65, steps=1))
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        sae.TrainSettings()
    with pytest.raises(ValueError, match="multiple"):
        sae.TrainSettings(steps=5, log_every=10, checkpoint_every=15)
    with pytest.raises(TypeError, match="variant configs"):
        sae.train_many(["stsae"], x, seeds=[0], settings=S)


def test_divergence_stops_with_step_and_keeps_checkpoint(tmp_path):
    x = _sparse_data(n=640)
    st_ = dataclasses.replace(S, steps=400, checkpoint_every=10, data_seed=0)
    stream = BatchStream(x, 32, 0)
    step_of = {int(r): s for s in range(stream.steps_per_epoch) for r in stream.indices(s)}
    row = next(r for r in range(640) if step_of[r] >= 13)
    x[row, 0] = 3e19  # finite, but its squared error overflows float32 -> loss = inf at that step
    with pytest.raises(sae.TrainingDiverged, match=rf"at step {step_of[row]};") as e:
        sae.train(sae.ReluL1(d_in=D, d_sae=16), x, settings=st_, checkpoint_dir=tmp_path)
    assert "intact" in str(e.value)
    with np.load(tmp_path / CHECKPOINT_FILE) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["step"] == 10 and all(np.isfinite(z[f]).all() for f in z.files if f != "meta")


def test_epochs_and_plateau_schedule():
    st_ = sae.TrainSettings(batch_size=10, epochs=1.5, plateau=True, plateau_patience=1, lr=1.0)
    assert st_.total_steps(steps_per_epoch=4) == 6
    tx = make_optimizer(st_, total_steps=100, steps_per_epoch=2)
    p = {"w": np.zeros(3, np.float32)}
    s = tx.init(p)
    scales = []
    update = jax.jit(tx.update)
    for _ in range(10):  # a flat loss: the scale halves after each patience window
        _, s = update({"w": np.ones(3, np.float32)}, s, p, value=np.float32(1.0))
        scales.append(float(optax.tree_utils.tree_get(s, "scale")))
    assert scales[0] == 1.0 and scales[-1] < 0.2 and sorted(scales, reverse=True) == scales
    warm = make_optimizer(sae.TrainSettings(steps=10, schedule="cosine", warmup_steps=5, lr=1.0), 10, 1)
    s = warm.init(p)
    u, s = warm.update({"w": np.ones(3, np.float32)}, s, p)
    assert np.allclose(np.asarray(u["w"]), 0)  # warm-up starts at lr = 0


SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from jaxequiv import sae
    x = np.load(sys.argv[1])
    cfg = sae.STSAE(d_in=x.shape[1], d_sae=x.shape[1], theta=0.5, l1=0.0)
    st = sae.TrainSettings(batch_size=32, steps=40, lr=3e-3, log_every=10, checkpoint_every=10)
    sae.train(cfg, x, seed=11, settings=st, checkpoint_dir=sys.argv[2], callback=lambda s, e: time.sleep(1.5))
""")


def test_killed_run_resumes_to_identical_params(tmp_path):
    x = _sparse_data(n=256)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "x.npy"), str(run)], env=env)
    ckpt = run / CHECKPOINT_FILE
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with np.load(ckpt) as z:
        killed_at = json.loads(str(z["meta"]))["step"]
    assert 0 < killed_at < 40
    st_ = dataclasses.replace(S, steps=40, checkpoint_every=10)
    resumed = sae.train(STSAE, x, seed=11, settings=st_, checkpoint_dir=run)
    fresh = sae.train(STSAE, x, seed=11, settings=st_)
    _same(resumed.params, fresh.params)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in fresh.history]


def test_checkpoint_meta_survives_json_for_every_variant():
    # resuming compares the run's meta with the checkpoint's JSON copy (tuples such as prefixes become lists)
    cfgs = [cls(d_in=D, d_sae=64) for cls in sae.VARIANTS.values()]
    meta = _meta(cfgs, list(range(len(cfgs))), S, (64, D))
    assert json.loads(json.dumps(meta)) == meta
    assert [sae.VARIANTS[c["variant"]](**{k: v for k, v in c.items() if k != "variant"}) for c in meta["configs"]] == cfgs


def test_resume_rejects_mismatched_data(tmp_path):
    x = _sparse_data(n=64)
    st_ = dataclasses.replace(S, steps=20, checkpoint_every=10)
    sae.train(sae.ReluL1(d_in=D, d_sae=16), x, settings=st_, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="d=8 features, but this data has d=4"):
        sae.train(sae.ReluL1(d_in=4, d_sae=16), x[:, :4], settings=st_, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different configs"):
        sae.train(sae.ReluL1(d_in=D, d_sae=16, l1=0.5), x, settings=st_, checkpoint_dir=tmp_path)
    r = sae.train(sae.ReluL1(d_in=D, d_sae=16), x, settings=st_, checkpoint_dir=tmp_path)  # already complete
    assert r.step == 20 and len(r.history) == 2
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a: bool(np.isfinite(a).all()), r.params))
