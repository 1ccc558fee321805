"""Decoder transformer: shapes, sites, masking, variants, and a float64 NumPy reference forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv.models.transformer import Transformer, TransformerConfig, rotary, transformer_lens_aliases
from jaxequiv.network import Network
from jaxequiv.sites import Replace, Scale, list_sites, run

SMALL = dict(vocab_size=13, n_layer=2, n_head=2, d_model=8, n_ctx=7)


def _model(seed=0, **kw):
    return Transformer(TransformerConfig(**{**SMALL, **kw}), nnx.Rngs(seed))


def _tokens(b=2, t=5, seed=0, vocab=13):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, t)), jnp.int32)


# ------------------------------------------------------------------------------------------------ reference
def _np_params(model):
    return {".".join(map(str, p)): np.asarray(v[...], np.float64) for p, v in nnx.iter_graph(model)
            if isinstance(v, nnx.Variable)}


def _ln(x, p, name, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p[f"{name}.scale"] + p[f"{name}.bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _reference(model, tokens, mask=None):
    """Float64 loop over examples, heads and query positions, GPT-2 naming, learned positions."""
    cfg, p = model.cfg, _np_params(model)
    tokens = np.asarray(tokens)
    out = []
    for b in range(tokens.shape[0]):
        t = tokens.shape[1]
        x = p["wte.embedding"][tokens[b]] + p["wpe.embedding"][:t]
        for i in range(cfg.n_layer):
            pre = f"h.{i}"
            h = _ln(x, p, f"{pre}.ln_1", cfg.ln_eps)
            qkv = h @ p[f"{pre}.attn.c_attn.kernel"] + p[f"{pre}.attn.c_attn.bias"]
            q, k, v = np.split(qkv, 3, axis=-1)
            z = np.zeros((t, cfg.n_head * cfg.d_head))
            for head in range(cfg.n_head):
                sl = slice(head * cfg.d_head, (head + 1) * cfg.d_head)
                for qi in range(t):
                    keys = [j for j in range(qi + 1) if mask is None or mask[b, j]]
                    if not keys:  # a padded query with no real key before it: not compared
                        continue
                    s = np.array([q[qi, sl] @ k[j, sl] for j in keys]) / np.sqrt(cfg.d_head)
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    z[qi, sl] = sum(wj * v[j, sl] for wj, j in zip(w, keys))
            x = x + z @ p[f"{pre}.attn.c_proj.kernel"] + p[f"{pre}.attn.c_proj.bias"]
            h = _ln(x, p, f"{pre}.ln_2", cfg.ln_eps)
            h = _gelu_tanh(h @ p[f"{pre}.mlp.c_fc.kernel"] + p[f"{pre}.mlp.c_fc.bias"])
            x = x + h @ p[f"{pre}.mlp.c_proj.kernel"] + p[f"{pre}.mlp.c_proj.bias"]
        x = _ln(x, p, "ln_f", cfg.ln_eps)
        out.append(x @ p["wte.embedding"].T)
    return np.stack(out)


def test_matches_float64_reference():
    model = _model()
    tokens = _tokens()
    np.testing.assert_allclose(model(tokens), _reference(model, tokens), rtol=1e-4, atol=1e-5)


def test_attention_mask_matches_reference_on_real_tokens():
    model = _model(seed=1)
    tokens = _tokens(seed=1)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    got = np.asarray(model(tokens, jnp.asarray(mask)))
    want = _reference(model, tokens, mask)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1, 2:], want[1, 2:], rtol=1e-4, atol=1e-5)


def test_padding_masked_keys_do_not_matter():
    """With right padding, changing the padded tokens leaves real positions' logits unchanged."""
    model = _model()
    tokens = _tokens(b=1, t=6)
    mask = jnp.array([[1, 1, 1, 1, 0, 0]])
    other = tokens.at[0, 4:].set((tokens[0, 4:] + 3) % 13)
    a = model(tokens, mask)
    b = model(other, mask)
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(pos=st.integers(0, 5), new=st.integers(0, 12))
def test_causal_later_token_does_not_change_earlier_logits(pos, new):
    model = _causal_model
    tokens = _tokens(b=1, t=6, seed=3)
    changed = tokens.at[0, pos].set(new)
    a, b = _jit_forward(tokens), _jit_forward(changed)
    np.testing.assert_allclose(a[:, :pos], b[:, :pos], rtol=1e-6, atol=1e-6)
    assert model.cfg.causal


_causal_model = _model(seed=2)
_jit_forward = jax.jit(lambda t: _causal_model(t))


def test_non_causal_sees_later_tokens():
    model = _model(causal=False, seed=2)
    tokens = _tokens(b=1, t=6, seed=3)
    changed = tokens.at[0, 5].set((tokens[0, 5] + 1) % 13)
    assert not np.allclose(model(tokens)[:, 0], model(changed)[:, 0])


def test_sites_list_shapes_and_axes():
    model = _model()
    sites = list_sites(model, jax.ShapeDtypeStruct((3, 5), jnp.int32))
    expected_block = ["resid_pre", "ln_1.scale", "ln_1.normalized", "attn.q", "attn.k", "attn.v", "attn.scores",
                      "attn.pattern", "attn.z", "attn", "resid_mid", "ln_2.scale", "ln_2.normalized", "mlp.pre",
                      "mlp.act", "mlp"]
    names = ["wte", "wpe", "embed"] + [f"h.{i}.{s}" for i in range(2) for s in expected_block]
    assert list(sites) == names[:3] + names[3:3 + 16] + ["h.0"] + names[3 + 16:] + ["h.1"] + [
        "ln_f.scale", "ln_f.normalized", "ln_f", "logits"]
    assert sites["h.0.ln_1.scale"].shape == (3, 5, 1) and sites["h.1.mlp.pre"].shape == (3, 5, 32)
    assert sites["h.1.attn.scores"].shape == (3, 2, 5, 5) and sites["h.1.attn.scores"].axes == sites[
        "h.1.attn.pattern"].axes
    assert sites["h.1.attn.pattern"].shape == (3, 2, 5, 5)
    assert sites["h.1.attn.pattern"].axes == ("batch", "head", "query", "key")
    assert sites["h.0.attn.z"].shape == (3, 5, 2, 4) and sites["h.0.attn.z"].axes == ("batch", "token", "head", "channel")
    assert sites["h.0.mlp.act"].shape == (3, 5, 32)
    assert sites["logits"].shape == (3, 5, 13)


@pytest.mark.parametrize("kw", [{}, dict(naming="neox", positional="rotary", parallel_residual=True),
                                dict(attn_only=True), dict(norm="none", positional="none")])
def test_transformer_lens_aliases_name_existing_sites(kw):
    model = _model(**kw)
    sites = list_sites(model, _tokens())
    aliases = transformer_lens_aliases(model.cfg)
    assert set(aliases.values()) <= set(sites)
    assert {a for info in sites.values() for a in info.aliases} == set(aliases)
    per_block = [a for a in aliases if a.startswith("blocks.0.")]
    assert ("blocks.0.hook_resid_mid" in per_block) == (not model.cfg.attn_only and not model.cfg.parallel_residual)
    assert ("blocks.0.ln1.hook_scale" in per_block) == (model.cfg.norm == "layernorm")
    assert ("blocks.0.attn.hook_rot_q" in per_block) == (model.cfg.positional == "rotary")
    assert ("hook_pos_embed" in aliases) == (model.cfg.positional == "learned")
    logits, cap = run(model, _tokens(), capture=["blocks.1.hook_resid_post", "unembed.hook_out"])
    np.testing.assert_array_equal(cap["unembed.hook_out"], logits)


def test_layernorm_sites_rebuild_the_output():
    model = _model()
    _, cap = run(model, _tokens(), capture=["h.0.resid_pre", "h.0.ln_1.*", "ln_f*", "h.1"])
    x = np.asarray(cap["h.0.resid_pre"], np.float64)
    centred = x - x.mean(-1, keepdims=True)
    scale = np.sqrt((centred**2).mean(-1, keepdims=True) + model.cfg.ln_eps)
    np.testing.assert_allclose(cap["h.0.ln_1.scale"], scale, rtol=1e-5)
    np.testing.assert_allclose(cap["h.0.ln_1.normalized"], centred / scale, rtol=1e-4, atol=1e-5)
    ln_f = model.ln_f
    np.testing.assert_allclose(cap["ln_f"], cap["ln_f.normalized"] * ln_f.scale[...] + ln_f.bias[...], rtol=1e-6)
    frozen, _ = run(model, _tokens(seed=9), edits={"h.0.ln_1.scale": Replace(cap["h.0.ln_1.scale"])})
    assert not np.allclose(frozen, model(_tokens(seed=9)))  # the scale site feeds the division


def test_captured_sites_are_consistent():
    model = _model()
    tokens = _tokens()
    logits, cap = run(model, tokens, capture=["h.*", "embed"])
    np.testing.assert_allclose(cap["h.0.resid_mid"], cap["embed"] + cap["h.0.attn"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap["h.0"], cap["h.0.resid_mid"] + cap["h.0.mlp"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap["h.1.attn.pattern"].sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(np.asarray(cap["h.1.attn.pattern"][0, 0]), 1) == 0)


def test_head_ablation_via_z_equals_zeroing_projection_rows():
    model = _model()
    tokens = _tokens()
    mask = jnp.array([1.0, 0.0])[:, None]  # [H, 1]: ablate head 1 of block 0
    ablated, _ = run(model, tokens, edits={"h.0.attn.z": Scale(mask)})
    kernel = model.h[0].attn.c_proj.kernel
    kernel[...] = kernel[...].at[4:].set(0.0)
    np.testing.assert_allclose(ablated, model(tokens), rtol=1e-5, atol=1e-6)


def test_patching_z_from_another_run():
    model = _model()
    clean, corrupt = _tokens(seed=4), _tokens(seed=5)
    _, cap = run(model, clean, capture="h.1.attn.z")
    patched, _ = run(model, corrupt, edits={"h.1.attn.z": Replace(cap["h.1.attn.z"])})
    _, cap_clean = run(model, clean, capture="h.1.attn")
    _, cap_patched = run(model, corrupt, edits={"h.1.attn.z": Replace(cap["h.1.attn.z"])}, capture="h.1.attn")
    np.testing.assert_allclose(cap_patched["h.1.attn"], cap_clean["h.1.attn"], rtol=1e-5, atol=1e-6)
    assert patched.shape == (2, 5, 13)


def test_attn_only_has_no_mlp():
    model = _model(attn_only=True)
    sites = list_sites(model, _tokens())
    assert not any("mlp" in s or "resid_mid" in s for s in sites)
    assert not hasattr(model.h[0], "ln_2")
    _, cap = run(model, _tokens(), capture=["embed", "h.0", "h.0.attn"])
    np.testing.assert_allclose(cap["h.0"], cap["embed"] + cap["h.0.attn"], rtol=1e-5, atol=1e-6)


def test_tracr_style_no_norm_relu_untied():
    model = _model(norm="none", activation="relu", tie_embeddings=False, d_vocab_out=5, causal=False,
                   d_head=3, d_mlp=6)
    assert model.ln_f is None and model.h[0].ln_1 is None
    tokens = _tokens()
    logits, cap = run(model, tokens, capture=["h.0.mlp.act", "h.0.attn.z"])
    assert logits.shape == (2, 5, 5)
    assert "ln_f" not in list_sites(model, tokens)
    assert float(cap["h.0.mlp.act"].min()) >= 0.0
    assert cap["h.0.attn.z"].shape == (2, 5, 2, 3)
    # no norm: the residual stream is the plain sum of embeddings and block outputs
    _, cap = run(model, tokens, capture=["embed", "h.0.attn", "h.0.mlp", "h.0"])
    np.testing.assert_allclose(cap["h.0"], cap["embed"] + cap["h.0.attn"] + cap["h.0.mlp"], rtol=1e-5, atol=1e-5)


def test_neox_naming_rotary_parallel():
    model = _model(naming="neox", positional="rotary", rotary_pct=0.5, parallel_residual=True, activation="gelu",
                   tie_embeddings=False)
    assert model.wpe is None
    paths = {".".join(map(str, p)) for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}
    assert {"embed_in.embedding", "layers.0.attention.query_key_value.kernel", "layers.1.mlp.dense_4h_to_h.bias",
            "layers.0.post_attention_layernorm.scale", "final_layer_norm.scale", "embed_out.kernel"} <= paths
    tokens = _tokens()
    logits, cap = run(model, tokens, capture=["embed", "layers.0", "layers.0.attention", "layers.0.mlp"])
    np.testing.assert_allclose(cap["layers.0"], cap["embed"] + cap["layers.0.attention"] + cap["layers.0.mlp"],
                               rtol=1e-5, atol=1e-5)
    assert "layers.0.resid_mid" not in list_sites(model, tokens)
    assert logits.shape == (2, 5, 13)


def test_rotary_matches_complex_rotation():
    """Rotate-half RoPE = multiplying (x_j, x_{j+n/2}) pairs by exp(i * t * base^(-2j/n)); pass-through rest."""
    x = np.random.default_rng(0).normal(size=(1, 4, 1, 8))
    got = np.asarray(rotary(jnp.asarray(x, jnp.float32), 0.5, 100.0))
    n = 4
    freqs = 100.0 ** (-np.arange(0, n, 2) / n)
    for t in range(4):
        c = (x[0, t, 0, :2] + 1j * x[0, t, 0, 2:4]) * np.exp(1j * t * freqs)
        np.testing.assert_allclose(got[0, t, 0, :2], c.real, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[0, t, 0, 2:4], c.imag, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[..., 4:], x[..., 4:].astype(np.float32))


def test_network_view_jit_and_deterministic():
    net = _model(seed=7).network()
    tokens = _tokens()
    other = _model(seed=7).network()
    for x, y in zip(jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(other.params)):
        np.testing.assert_array_equal(x, y)
    a = jax.jit(net.apply)(net.params, tokens)
    np.testing.assert_allclose(a, other(tokens), rtol=1e-5, atol=1e-6)
    assert net.sites(batch=2, length=5)["logits"].shape == (2, 5, 13)


@pytest.mark.parametrize("mask", [None, [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]])  # right and left padding
def test_logits_last_unembeds_only_the_last_real_position(mask):
    from jaxequiv.contributions import contributions
    from jaxequiv.contributions.targets import at_position

    model = _model(seed=3)
    tokens = _tokens(seed=3)
    args = () if mask is None else (jnp.asarray(mask),)
    full, last = model.network(), model.network(logits="last")
    pos = np.array([4, 4]) if mask is None else np.array([2, 4])
    out = np.asarray(last(tokens, *args))
    with pytest.raises(ValueError, match="logits must be"):
        model.network(logits="first")
    assert out.shape == (2, 1, 13) and last.sites(batch=2, length=5)["logits"].shape == (2, 1, 13)
    np.testing.assert_allclose(out[:, 0], np.asarray(full(tokens, *args))[np.arange(2), pos], rtol=1e-5, atol=1e-6)
    if mask is None:
        return
    kw = dict(sites="h.*", method="ig", steps=4, input_site="embed", args=args)
    want = contributions(full, tokens, target=at_position(3, pos), **kw).values
    got = contributions(last, tokens, target=at_position(3, 0), **kw).values
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-4, atol=1e-6)


def test_config_round_trip_and_errors():
    cfg = TransformerConfig(**SMALL, naming="neox", positional="rotary")
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TransformerConfig field"):
        TransformerConfig.from_dict({**cfg.to_dict(), "flash": True})
    with pytest.raises(ValueError, match="positional"):
        TransformerConfig(**{**SMALL, "positional": "alibi"})
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(**{**SMALL, "n_head": 3})
    with pytest.raises(ValueError, match="tie_embeddings"):
        TransformerConfig(**SMALL, d_vocab_out=4)


def test_bad_tokens():
    model = _model()
    with pytest.raises(ValueError, match="batch, seq_len"):
        model(jnp.zeros((5,), jnp.int32))
    with pytest.raises(TypeError, match="integer ids.*input_dtype='int'"):
        model(jnp.zeros((1, 5), jnp.float32))
    with pytest.raises(TypeError, match="input_dtype='int'"):  # a Network built with the default float inputs
        Network.from_module(model, (None,)).sites(batch=1, length=5)
    with pytest.raises(ValueError, match="n_ctx"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 4)))
