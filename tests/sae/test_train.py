"""SAE training: determinism, lock-step sweeps, memory-mapped data, checkpoints, divergence, bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv import sae
from jaxequiv.contributions import global_std
from jaxequiv.sae.checkpoint import CheckpointError, read_meta
from jaxequiv.sae.data import BatchStream, fingerprint
from jaxequiv.sae.train import _identity, make_optimizer

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


def test_a_useless_fit_warns_with_what_to_change():
    x = _sparse_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", sae.FitWarning)
        sae.train(sae.ReluL1(d_in=D, d_sae=16), x, seed=3, settings=S)  # training R^2 about 0.2: no warning
    never_fires = sae.STSAE(d_in=D, d_sae=D, theta=0.99, l1=0.0)  # sigmoid codes stay below theta
    with pytest.warns(sae.FitWarning, match=r"1 of 1 SAEs fit poorly after 30 steps .*SAE 0 \(stsae, seed 3\): "
                                            r"R\^2 -.*0/8 latents fired .*lower theta.*Train longer"):
        sae.train(never_fires, x, seed=3, settings=S)


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


def test_per_sae_data_equals_separate_runs():
    """One array per SAE: the stsae pair (different data) is one vmapped group, the relu_l1 pair shares its data
    in another, the topk runs alone; each SAE equals its own run on its own data (the lone one bitwise)."""
    xs = [_sparse_data(seed=i) for i in range(3)]
    cfgs = [STSAE, sae.ReluL1(d_in=D, d_sae=16), sae.STSAE(d_in=D, d_sae=D, theta=0.6, l1=0.0),
            sae.ReluL1(d_in=D, d_sae=16, l1=1e-2), sae.TopK(d_in=D, d_sae=2 * D, k=2)]
    data = [xs[0], xs[2], xs[1], xs[2], xs[0]]
    st_ = dataclasses.replace(S, steps=20, data_seed=7)
    many = sae.train_many(cfgs, data, seeds=[1, 2, 3, 4, 5], settings=st_)
    for c, x, s, r in zip(cfgs, data, [1, 2, 3, 4, 5], many):
        one = sae.train(c, x, seed=s, settings=st_)
        for k in one.params:
            np.testing.assert_allclose(np.asarray(r.params[k]), np.asarray(one.params[k]), rtol=1e-5, atol=1e-6)
    _same(many[-1].params, one.params)
    with pytest.raises(ValueError, match="2 arrays but there are 5 configs"):
        sae.train_many(cfgs, xs[:2], seeds=[1, 2, 3, 4, 5], settings=st_)
    with pytest.raises(ValueError, match=r"different row counts \[300, 512\]"):
        sae.train_many(cfgs[:2], [xs[0], xs[1][:300]], seeds=[1, 2], settings=st_)
    with pytest.raises(ValueError, match="data\\[1\\] has d=4 features"):
        sae.train_many(cfgs[:2], [xs[0], xs[1][:, :4]], seeds=[1, 2], settings=st_)
    bad = xs[1].copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"data\[1\] contains NaN at row 3, column 5"):
        sae.train_many(cfgs[:2], [xs[0], bad], seeds=[1, 2], settings=st_)


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
    # a process's share of each batch (positions of its devices on a mesh): those rows of the whole batches
    np.testing.assert_array_equal(s.chunk(1, e + 1, slice(b // 2, b)), s.chunk(1, e + 1)[:, b // 2:])


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
    meta = read_meta(tmp_path)
    assert meta["step"] == 10 and np.isfinite([h["loss"] for h in meta["history"]]).all()


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


# kills itself (SIGKILL) in the callback of step 20, right after checkpoint 20 was handed to orbax's background
# writer: a kill inside the write window of a checkpoint
SCRIPT = textwrap.dedent("""
    import os, signal, sys, numpy as np
    from jaxequiv import sae
    xs = [np.load(sys.argv[1]), np.load(sys.argv[2])]
    cfgs = [sae.STSAE(d_in=xs[0].shape[1], d_sae=xs[0].shape[1], theta=t, l1=0.0) for t in (0.5, 0.6)]
    st = sae.TrainSettings(batch_size=32, steps=40, lr=3e-3, log_every=10, checkpoint_every=10)
    kill = lambda step, entry: os.kill(os.getpid(), signal.SIGKILL) if step == 20 else None
    sae.train_many(cfgs, xs, seeds=[11, 12], settings=st, checkpoint_dir=sys.argv[3], callback=kill)
""")


def test_sigkilled_run_resumes_to_identical_params(tmp_path):
    xs = [_sparse_data(n=256), _sparse_data(n=256, seed=1)]
    for i, x in enumerate(xs):
        np.save(tmp_path / f"x{i}.npy", x)
    (tmp_path / "run.py").write_text(SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "x0.npy"),
                           str(tmp_path / "x1.npy"), str(run)], env={**os.environ, "PYTHONPATH": os.getcwd()},
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_meta(run)["step"]
    assert killed_at in (10, 20)  # 20 if its background write had finished, else the previous one, intact
    cfgs = [sae.STSAE(d_in=D, d_sae=D, theta=t, l1=0.0) for t in (0.5, 0.6)]
    st_ = dataclasses.replace(S, steps=40, checkpoint_every=10)
    resumed = sae.train_many(cfgs, xs, seeds=[11, 12], settings=st_, checkpoint_dir=run)
    fresh = sae.train_many(cfgs, xs, seeds=[11, 12], settings=st_)
    for r, f in zip(resumed, fresh):
        _same(r.params, f.params)
        _same(r.state, f.state)
        assert [h["loss"] for h in r.history] == [h["loss"] for h in f.history]
    assert sorted(p.name for p in run.iterdir()) == ["40"]  # no temporary folders left


def test_interrupted_run_resumes_between_checkpoints(tmp_path):
    x = _sparse_data(n=256)
    cfg = sae.TopK(d_in=D, d_sae=2 * D, k=2, dead_steps=4)  # AuxK and its statistics must resume too
    st_ = dataclasses.replace(S, steps=40, checkpoint_every=20)

    def stop(step, entry):
        if step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sae.train(cfg, x, seed=2, settings=st_, checkpoint_dir=tmp_path, callback=stop)
    assert read_meta(tmp_path)["step"] == 20
    resumed = sae.train(cfg, x, seed=2, settings=st_, checkpoint_dir=tmp_path)
    fresh = sae.train(cfg, x, seed=2, settings=st_)
    _same(resumed.params, fresh.params)
    _same(resumed.state, fresh.state)
    assert resumed.history == fresh.history


def test_checkpoint_meta_survives_json_for_every_variant():
    # resuming compares the run's meta with the checkpoint's JSON copy (tuples such as prefixes become lists)
    cfgs = [cls(d_in=D, d_sae=64) for cls in sae.VARIANTS.values()]
    meta = _identity(cfgs, list(range(len(cfgs))), S, [fingerprint(_sparse_data(n=64))] * len(cfgs))
    assert json.loads(json.dumps(meta)) == meta
    assert [sae.VARIANTS[c["variant"]](**{k: v for k, v in c.items() if k != "variant"}) for c in meta["configs"]] == cfgs


def test_resume_checks_its_inputs(tmp_path):
    x = _sparse_data(n=64)
    st_ = dataclasses.replace(S, steps=20, checkpoint_every=10)
    cfg = sae.ReluL1(d_in=D, d_sae=16)
    done = sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"other training data: SAE 0 \(relu_l1, seed 0\) was trained on "
                                              r"\(64, 8\) float32 .* \(64, 4\) float32 .*the shapes differ.*delete"):
        sae.train(sae.ReluL1(d_in=4, d_sae=16), x[:, :4], settings=st_, checkpoint_dir=tmp_path)
    edited = x.copy()
    edited[63, 0] += 1.0  # one value of the last row (always in the fingerprint's sample)
    with pytest.raises(CheckpointError, match=r"the values \(same shape and dtype\) differ.*to start fresh"):
        sae.train(cfg, edited, settings=st_, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="different configs"):
        sae.train(sae.ReluL1(d_in=D, d_sae=16, l1=0.5), x, settings=st_, checkpoint_dir=tmp_path)
    r = sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path)  # already complete
    assert r.step == 20 and len(r.history) == 2
    _same(r.params, done.params)


def test_damaged_checkpoints_are_refused_with_a_hint(tmp_path):
    x = _sparse_data(n=64)
    st_ = dataclasses.replace(S, steps=10, checkpoint_every=10)
    cfg = sae.ReluL1(d_in=D, d_sae=16)
    sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path / "a")
    for f in (tmp_path / "a" / "10" / "state").rglob("*"):  # garble every array file
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name.lower():
            f.write_bytes(b"\0" * 7)
    with pytest.raises(CheckpointError, match=r"step 10\) cannot be read .* damaged: delete .*a"):
        sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path / "a")
    sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path / "b")
    (tmp_path / "b" / "10" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged: delete"):
        sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.npz").write_bytes(b"old")
    with pytest.raises(CheckpointError, match="older jaxequiv"):
        sae.train(cfg, x, settings=st_, checkpoint_dir=tmp_path / "c")


@pytest.mark.slow  # four programs compiled for 8 devices: about 20 s on two idle cores
def test_sharded_training_equals_one_device():
    """8 fake CPU devices (tests/conftest.py): SAEs split over ``stack`` (groups of 3 and 2 padded to 4), batches over
    ``data``; results equal the one-device run up to the order of the batch sums, and the compiled step only
    reduces across devices (no all-gather of either axis). A lone SAE splits its latent axis over ``stack``
    instead (BatchTopK: its batch-wide top-k over a batch and a dictionary both split stays exact)."""
    from jaxequiv.distributed import assert_no_gather, make_mesh
    from jaxequiv.sae.train import compiled_chunks

    xs = [_sparse_data(n=128, seed=i) for i in range(3)]
    cfgs = [sae.STSAE(d_in=D, d_sae=D, theta=t, l1=0.0) for t in (0.3, 0.4, 0.5)] + [
        sae.TopK(d_in=D, d_sae=2 * D, k=2, dead_steps=4, aux_coef=a) for a in (1 / 32, 0.5)]
    data, seeds = [xs[0], xs[1], xs[2], xs[0], xs[1]], [1, 2, 3, 4, 5]
    st_ = dataclasses.replace(S, steps=20, data_seed=0)
    mesh = make_mesh(stack=4, data=2)
    btk = sae.BatchTopK(d_in=D, d_sae=2 * D, k=2)
    for cs, ds, ss in ((cfgs, data, seeds), ([btk], xs[1], [6])):
        one = sae.train_many(cs, ds, seeds=ss, settings=st_)
        many = sae.train_many(cs, ds, seeds=ss, settings=st_, mesh=mesh)
        for a, b in zip(one, many):
            for k in a.params:
                np.testing.assert_allclose(np.asarray(b.params[k]), np.asarray(a.params[k]), rtol=1e-5, atol=3e-6,
                                           err_msg=f"{a.cfg.name} {k}")
            np.testing.assert_allclose([h["loss"] for h in b.history], [h["loss"] for h in a.history], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(many[0].state["threshold"]), np.asarray(one[0].state["threshold"]),
                               rtol=1e-5, atol=1e-6)
    assert {s.data.shape for s in many[0].params["W_dec"].addressable_shards} == {(2 * D // 4, D)}
    for compiled in compiled_chunks(cfgs, data, seeds=seeds, settings=st_, mesh=mesh):  # compiled already
        assert_no_gather(compiled, mesh)
    with pytest.raises(ValueError, match="does not split over the 2 devices"):
        sae.train_many(cfgs[:1], data[:1], seeds=[1], settings=dataclasses.replace(st_, batch_size=31), mesh=mesh)
