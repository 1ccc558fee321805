"""SAE folders in SAELens's layout: jaxequiv round trips, and exact interop with the real SAELens package (its own
``SAE.load_from_disk`` / ``SAE.from_dict`` / ``save_model`` / ``encode`` / ``decode`` in torch) in both directions.

Tolerance: codes (|z| <= 12) and reconstructions agree to 1e-5: float32 matmuls in another summation order plus
the folds' one extra rounding, measured <= 1.5e-6. Every TopK k-th/(k+1)-th gap and every pre-activation/threshold
gap in these data is >= 4e-5, so rounding cannot flip a selection or a gate."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxequiv import sae
from jaxequiv.sae.io import normalize_rows

D, K, SCALE = 16, 32, 3.9
TOL = 1e-5


def _x(n=24, seed=0, d=D):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * (0.2 + 0.4 * rng.random(d)) + 0.3 * rng.normal(size=d)).astype(np.float32)


def _variants():
    return [sae.ReluL1(d_in=D, d_sae=K), sae.TopK(d_in=D, d_sae=K, k=4), sae.BatchTopK(d_in=D, d_sae=K, k=4),
            sae.Matryoshka(d_in=D, d_sae=K, k=4, prefixes=(8, K)), sae.JumpReLU(d_in=D, d_sae=K),
            sae.STSAE(d_in=D, d_sae=K, theta=0.6, nonneg=True)]


def _trained(cfg, seed=0):
    """Params and state as after training: every tensor perturbed, positive thresholds that gate some codes."""
    rng = np.random.default_rng(seed)
    p = {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32) for k, v in cfg.init(jax.random.key(seed)).items()}
    if "threshold" in p:
        p["threshold"] = rng.uniform(0.05, 0.3, K).astype(np.float32)
    state = cfg.init_state()
    if isinstance(cfg, sae.BatchTopK):  # per-latent thresholds, some latents never seen
        state = {**state, "threshold": jnp.asarray(rng.uniform(0.05, 0.3, K), jnp.float32),
                 "seen": jnp.arange(K) % 3 > 0, "global_threshold": jnp.float32(0.1)}
    return {k: jnp.asarray(v) for k, v in p.items()}, state


def _forward(cfg, params, state, x):
    z = cfg.encode(params, jnp.asarray(x), state)
    return np.asarray(z), np.asarray(cfg.decode(params, z))


def _close(a, b, what=""):
    """Max |a - b| after checking it is <= TOL (and that the compared values are not trivially zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape and np.abs(b).max() > 0.1, what
    diff = float(np.abs(a - b).max())
    assert diff <= TOL, f"{what}: max |diff| {diff:.3g} > {TOL}"
    return diff


# ---------------------------------------------------------------------------------------------------------------
# jaxequiv alone

@pytest.mark.parametrize("cfg", _variants(), ids=lambda c: c.name)
def test_save_load_roundtrip(tmp_path, cfg):
    """Unscaled: bitwise the same SAE back. With input_scale: the folder takes raw x, gives the trained codes of
    x * s and reconstructions in raw units."""
    params, state = _trained(cfg)
    x = _x()
    path = sae.save_sae(tmp_path / "sae", cfg, params, state, metadata={"hook_name": "layer3.1"})
    sae.save_sae(tmp_path / "sae", cfg, params, state)  # overwriting an existing folder works
    cfg2, p2, s2 = sae.load_sae(path)
    assert cfg2 == cfg
    z, xh = _forward(cfg, params, state, x)
    assert (z != 0).any(1).all() and (z == 0).any()
    np.testing.assert_array_equal(_forward(cfg2, p2, s2, x)[1], xh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary folders left

    sae.save_sae(tmp_path / "scaled", cfg, params, state, input_scale=SCALE)
    doc = json.loads((tmp_path / "scaled" / "cfg.json").read_text())
    assert doc["jaxequiv"]["folded_input_scale"] == SCALE and "input_scale" not in doc["metadata"]
    cfg3, p3, s3 = sae.load_sae(tmp_path / "scaled")
    z_ref, xh_ref = _forward(cfg, params, state, x * SCALE)
    z3, xh3 = _forward(cfg3, p3, s3, x)
    _close(z3, z_ref, "codes")
    _close(xh3, xh_ref / SCALE, "reconstructions")


def test_load_dtype_and_errors(tmp_path):
    cfg = sae.JumpReLU(d_in=D, d_sae=K)
    params, _ = _trained(cfg)
    sae.save_sae(tmp_path / "j", cfg, params)
    _, p16, _ = sae.load_sae(tmp_path / "j", dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in p16.values())
    with pytest.raises(ValueError, match="floating dtype"):
        sae.load_sae(tmp_path / "j", dtype=jnp.int32)
    with pytest.raises(ValueError, match="input_scale must be a finite number > 0"):
        sae.load_sae(tmp_path / "j", input_scale=-1.0)
    with pytest.raises(ValueError, match="input_scale must be a finite number > 0"):
        sae.save_sae(tmp_path / "k", cfg, params, input_scale=float("nan"))
    with pytest.raises(ValueError, match="thresholds must be >= 0 to save"):
        sae.save_sae(tmp_path / "k", cfg, {**params, "threshold": params["threshold"] - 1})
    with pytest.raises(ValueError, match="training state"):
        sae.save_sae(tmp_path / "b", sae.BatchTopK(d_in=D, d_sae=K, k=2), _trained(sae.BatchTopK(d_in=D, d_sae=K))[0])
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        sae.load_sae(tmp_path)

    def edited(**changes):
        doc = json.loads((tmp_path / "j" / "cfg.json").read_text())
        doc.pop("jaxequiv", None)
        doc.update(changes)
        (tmp_path / "j" / "cfg.json").write_text(json.dumps(doc))

    edited(d_sae=K + 1)
    with pytest.raises(ValueError, match="shape"):
        sae.load_sae(tmp_path / "j")
    edited(d_sae=K, architecture="gated")
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        sae.load_sae(tmp_path / "j")
    edited(architecture="jumprelu", normalize_activations="covariance_whitening")
    with pytest.raises(ValueError, match="'covariance_whitening' is not supported"):
        sae.load_sae(tmp_path / "j")
    edited(normalize_activations="none", metadata={}, activation_fn="tanh-relu")  # a pre-6.0 config
    with pytest.raises(ValueError, match="activation_fn 'tanh-relu'"):
        sae.load_sae(tmp_path / "j")


def test_normalize_rows_formulas():
    x = _x(n=5).astype(np.float64)
    xn, scale, shift = normalize_rows(x, "layer_norm")
    mean, std = x.mean(1, keepdims=True), x.std(1, ddof=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(xn), (x - mean) / (std + 1e-5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(xn) * (std + 1e-5) / std * np.asarray(scale) + np.asarray(shift), x,
                               rtol=1e-5, atol=1e-5)
    xn, scale, shift = normalize_rows(x, "constant_norm_rescale")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(xn), axis=1), np.sqrt(D), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(xn) * np.asarray(scale) + np.asarray(shift), x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kind must be one of"):
        normalize_rows(x, "rms")


# ---------------------------------------------------------------------------------------------------------------
# against the real SAELens (torch)

@pytest.fixture(scope="module")
def lens():
    pytest.importorskip("sae_lens")
    import sae_lens
    import torch

    torch.set_num_threads(1)
    return sae_lens, torch


def _torch_forward(torch, sae_model, x):
    with torch.no_grad():
        z = sae_model.encode(torch.from_numpy(np.asarray(x, np.float32)))
        return z.float().numpy(), sae_model.decode(z).float().numpy()


LINEAR = [c for c in _variants() if not isinstance(c, sae.STSAE)]


@pytest.mark.parametrize("cfg", LINEAR, ids=lambda c: c.name)
def test_jaxequiv_to_saelens(tmp_path, lens, cfg):
    """A CLI-style folder (trained on x * 3.9): SAELens reads every field as written and, on raw x, gives the
    trained codes and raw-unit reconstructions; SAELens's own re-save reads back into jaxequiv unchanged."""
    torch, SAE = lens[1], lens[0].SAE
    from safetensors.torch import load_file

    params, state = _trained(cfg)
    meta = {"hook_name": "blocks.0.hook_resid_pre", "model_name": "gpt2"}
    sae.save_sae(tmp_path / "j", cfg, params, state, metadata=meta, input_scale=SCALE)
    doc = json.loads((tmp_path / "j" / "cfg.json").read_text())
    loaded = SAE.load_from_disk(tmp_path / "j")
    got = loaded.cfg.to_dict()
    assert got["architecture"] == cfg.architecture
    fields = {f for f in got if f not in ("metadata", "architecture")}
    assert fields <= set(doc) and all(got[f] == doc[f] for f in fields), "a SAELens field was defaulted or changed"
    assert loaded.cfg.metadata.hook_name == meta["hook_name"] and loaded.cfg.metadata.model_name == "gpt2"
    assert loaded.cfg.metadata.sae_lens_version == sae.io.SAELENS_FORMAT

    x = _x()
    z_ref, xh_ref = _forward(cfg, params, state, x * SCALE)
    xh_ref = xh_ref / SCALE
    z, xh = _torch_forward(torch, loaded, x)
    _close(z, z_ref, "SAELens codes")
    _close(xh, xh_ref, "SAELens reconstructions")
    built = SAE.from_dict(doc)  # the config alone, weights from the file
    built.load_state_dict(load_file(str(tmp_path / "j" / "sae_weights.safetensors")))
    np.testing.assert_array_equal(_torch_forward(torch, built, x)[0], z)

    loaded.save_model(tmp_path / "back")  # SAELens -> jaxequiv: the inference architecture, same outputs
    cfg2, p2, s2 = sae.load_sae(tmp_path / "back")
    assert cfg2.architecture == cfg.architecture
    z2, xh2 = _forward(cfg2, p2, s2, x)
    _close(z2, z_ref, "round-trip codes")
    _close(xh2, xh_ref, "round-trip reconstructions")


def _saelens_model(sae_lens, torch, arch, seed=0, dtype="float32", **fields):
    """A SAELens inference SAE with random weights (all non-zero biases)."""
    from sae_lens.saes.sae import SAEMetadata

    cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
           "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
           "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig)}[arch]
    meta = fields.pop("metadata", {"hook_name": "blocks.1.hook_resid_post"})
    model = cls[0](cls[1](d_in=D, d_sae=K, dtype=dtype, metadata=SAEMetadata(**meta), **fields))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "threshold":
                v = torch.rand(p.shape, generator=g) * 0.4 - 0.1  # some negative: SAELens's ReLU then decides
            elif name == "W_dec":  # rows of unequal norms, so rescale_acts_by_decoder_norm matters
                v = torch.randn(p.shape, generator=g) * torch.linspace(0.3, 2.0, K)[:, None] / D**0.5
            else:
                v = torch.randn(p.shape, generator=g) * (0.3 if name.startswith("b_") else 1 / D**0.5)
            p.copy_(v.to(p.dtype))
    return model


SETTINGS = {
    "standard": ("standard", {}),
    "standard_no_b_dec_in": ("standard", {"apply_b_dec_to_input": False}),
    "topk": ("topk", {"k": 4}),
    "topk_rescale": ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
    "topk_rescale_no_b_dec_in": ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True,
                                          "apply_b_dec_to_input": False}),
    "jumprelu_negative_thresholds": ("jumprelu", {}),
    "topk_bf16": ("topk", {"k": 4, "dtype": "bfloat16"}),
    "jumprelu_bf16": ("jumprelu", {"dtype": "bfloat16"}),
    "standard_hook_z": ("standard", {"reshape_activations": "hook_z",
                                     "metadata": {"hook_name": "blocks.0.attn.hook_z"}}),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_saelens_to_jaxequiv(tmp_path, lens, setting):
    """A SAELens-written folder loads as float32 jaxequiv params that give SAELens's codes and reconstructions,
    and jaxequiv's save of it gives them back in SAELens."""
    sae_lens, torch = lens
    arch, fields = SETTINGS[setting]
    model = _saelens_model(sae_lens, torch, arch, **fields)
    model.save_model(tmp_path / "lens")
    ref = sae_lens.SAE.load_from_disk(tmp_path / "lens", dtype="float32")  # bf16 weights, computed in float32
    x = _x()
    x_in = x.reshape(len(x), 4, D // 4) if "hook_z" in setting else x
    z_ref, xh_ref = _torch_forward(torch, ref, x_in)
    cfg, params, state = sae.load_sae(tmp_path / "lens")
    assert all(v.dtype == jnp.float32 for v in params.values())
    z, xh = _forward(cfg, params, state, x)
    _close(z, z_ref, "codes")
    _close(xh, xh_ref.reshape(xh.shape), "reconstructions")
    if "negative" in setting:  # some pre-activations lie between a negative threshold and 0: the ReLU decides
        w = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        assert ((pre > w["threshold"]) & (pre < 0)).any()

    sae.save_sae(tmp_path / "again", cfg, params, state, metadata=ref.cfg.metadata.to_dict())
    again = sae_lens.SAE.load_from_disk(tmp_path / "again")
    z2, xh2 = _torch_forward(torch, again, x)
    _close(z2, z_ref, "round-trip codes")
    _close(xh2, xh_ref.reshape(xh2.shape), "round-trip reconstructions")
    assert again.cfg.metadata.hook_name == ref.cfg.metadata.hook_name


def test_saelens_batchtopk_export(tmp_path, lens):
    """SAELens's BatchTopK training SAE saves for inference as a jumprelu (decoder norms folded, global threshold);
    jaxequiv reads that folder exactly."""
    sae_lens, torch = lens
    train_sae = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=K, k=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in train_sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        train_sae.topk_threshold = torch.tensor(0.2, dtype=torch.double)
    train_sae.save_inference_model(tmp_path / "b")
    ref = sae_lens.SAE.load_from_disk(tmp_path / "b")
    x = _x()
    z_ref, xh_ref = _torch_forward(torch, ref, x)
    cfg, params, state = sae.load_sae(tmp_path / "b")
    assert isinstance(cfg, sae.JumpReLU)
    z, xh = _forward(cfg, params, state, x)
    _close(z, z_ref, "codes")
    _close(xh, xh_ref, "reconstructions")


def test_saelens_expected_average_norm(tmp_path, lens):
    """``expected_average_only_in``: the weights expect x * s (SAELens's ActivationScaler scales inputs and unscales
    reconstructions). Refused without s; folded exactly with s from input_scale= or the run's activation_scaler.json.
    (A topk with rescale_acts_by_decoder_norm: SAELens's own fold_activation_norm_scaling_factor is not exact there,
    its codes come out divided by s.)"""
    sae_lens, torch = lens
    from sae_lens.training.activation_scaler import ActivationScaler

    model = _saelens_model(sae_lens, torch, "topk", k=4, rescale_acts_by_decoder_norm=True,
                           normalize_activations="expected_average_only_in")
    model.save_model(tmp_path / "n")
    with pytest.raises(ValueError, match="pass load_sae\\(path, input_scale=s\\)"):
        sae.load_sae(tmp_path / "n")
    scaler = ActivationScaler(scaling_factor=SCALE)
    x = _x()
    z_ref, xh_ref = _torch_forward(torch, model, scaler.scale(torch.from_numpy(x)))
    xh_ref = scaler.unscale(torch.from_numpy(xh_ref)).numpy()
    for kwargs in ({"input_scale": SCALE}, {}):
        if not kwargs:
            scaler.save(str(tmp_path / "n" / "activation_scaler.json"))
        z, xh = _forward(*sae.load_sae(tmp_path / "n", **kwargs), x)
        _close(z, z_ref, "codes")
        _close(xh, xh_ref, "reconstructions")


@pytest.mark.parametrize("kind", ["layer_norm", "constant_norm_rescale"])
def test_saelens_row_normalization(tmp_path, lens, kind):
    """Per-row normalisations are refused by default; loaded bare, normalize_rows reproduces SAELens exactly."""
    sae_lens, torch = lens
    model = _saelens_model(sae_lens, torch, "jumprelu", normalize_activations=kind)
    model.save_model(tmp_path / "n")
    with pytest.raises(ValueError, match=f"normalize_activations='{kind}'.*caller_normalizes=True"):
        sae.load_sae(tmp_path / "n")
    cfg, params, state = sae.load_sae(tmp_path / "n", caller_normalizes=True)
    x = _x()
    z_ref, xh_ref = _torch_forward(torch, model, x)
    x_n, scale, shift = normalize_rows(x, kind)
    z = cfg.encode(params, x_n, state)
    _close(z, z_ref, "codes")
    _close(cfg.decode(params, z) * scale + shift, xh_ref, "reconstructions")


def test_saelens_pre_6_config(tmp_path, lens):
    """A pre-6.0 SAELens topk config (activation_fn_kwargs, hook_point, boolean normalize_activations) reads as
    SAELens 6 reads it; an all-ones finetuning scaling_factor is dropped as SAELens drops it."""
    sae_lens, torch = lens
    from safetensors.torch import save_file

    model = _saelens_model(sae_lens, torch, "topk", k=4)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file({**tensors, "scaling_factor": torch.ones(K)}, str(tmp_path / "sae_weights.safetensors"))
    old = {"d_in": D, "d_sae": K, "dtype": "float32", "device": "cpu", "hook_point": "blocks.0.hook_resid_pre",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "normalize_activations": False,
           "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "sae_lens_training_version": "3.5.0"}
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    ref = sae_lens.SAE.load_from_disk(tmp_path)
    assert ref.cfg.architecture() == "topk"
    x = _x()
    z_ref, xh_ref = _torch_forward(torch, ref, x)
    cfg, params, state = sae.load_sae(tmp_path)
    assert isinstance(cfg, sae.TopK) and cfg.k == 4
    z, xh = _forward(cfg, params, state, x)
    _close(z, z_ref, "codes")
    _close(xh, xh_ref, "reconstructions")
    save_file({**tensors, "scaling_factor": torch.full((K,), 2.0)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="scaling_factor tensor that is not all ones"):
        sae.load_sae(tmp_path)


def test_stsae_refused_by_saelens_and_usable_from_torch(tmp_path, lens):
    sae_lens, torch = lens
    from jaxequiv.sae.torch_stsae import STSAEModule, load_stsae

    cfg = sae.STSAE(d_in=D, d_sae=K, theta=0.6, nonneg=True)
    params, _ = _trained(cfg)
    sae.save_sae(tmp_path / "s", cfg, params, input_scale=SCALE)
    with pytest.raises(KeyError, match="jaxequiv_stsae"):
        sae_lens.SAE.load_from_disk(tmp_path / "s")
    module = load_stsae(tmp_path / "s")
    assert isinstance(module, STSAEModule) and not module.training
    x = _x()
    z_ref, xh_ref = _forward(cfg, params, None, x * SCALE)
    z, xh = _torch_forward(torch, module, x)
    _close(z, z_ref, "codes")
    _close(xh, xh_ref / SCALE, "reconstructions")
    np.testing.assert_array_equal(module(torch.from_numpy(x)).detach().numpy(), xh)
    sae.save_sae(tmp_path / "t", sae.TopK(d_in=D, d_sae=K, k=4), _trained(sae.TopK(d_in=D, d_sae=K, k=4))[0])
    with pytest.raises(ValueError, match="not an stsae"):
        load_stsae(tmp_path / "t")
