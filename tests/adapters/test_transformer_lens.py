"""TransformerLens interop: HookedTransformer state dicts load, and every hook name is an alias of a jaxequiv site
whose values equal TransformerLens' own (GPT-2 and NeoX families, unprocessed and processed weights).
Parity metric: max |jax - TransformerLens| / max |TransformerLens| <= 1e-4 per hook (see tests/parity.py)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    transformer_lens = pytest.importorskip("transformer_lens")
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:  # TransformerLens >= 4 removed HookedTransformer
        pytest.skip("this TransformerLens has no HookedTransformer (needs < 4.0)", allow_module_level=True)

from jaxequiv.adapters import torch as ad  # noqa: E402
from jaxequiv.adapters.transformer_lens import config_from_transformer_lens  # noqa: E402
from jaxequiv.models.transformer import transformer_lens_aliases  # noqa: E402
from jaxequiv.sites import Scale, list_sites, run  # noqa: E402
from tests.parity import RTOL, jrun, rel_err  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FAMILIES = {
    "gpt2": dict(act_fn="gelu_new", positional_embedding_type="standard"),
    "neox": dict(act_fn="gelu", positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True),
}


def _hooked(family: str, seed: int = 0, **kw) -> "HookedTransformer":
    """A small HookedTransformer with every parameter random (its init leaves biases 0 and LayerNorms 1/0)."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, d_mlp=64,
                                  **{**FAMILIES[family], **kw})
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(0, 50, (2, 7))


def _compare_every_hook(tl_model, model, tokens) -> dict[str, float]:
    """Max relative difference per TransformerLens hook (all hooks it caches) and for the logits."""
    with torch.no_grad():
        logits, cache = tl_model.run_with_cache(torch.tensor(tokens))
    aliases = transformer_lens_aliases(model.cfg)
    assert set(cache.cache_dict) == set(aliases)  # every hook TransformerLens records has an alias, and no more
    out, got = jrun(model, jnp.asarray(tokens), capture=list(aliases))
    errors = {"logits": rel_err(out, logits.numpy())}
    for name in aliases:
        want, value = cache[name].numpy(), np.asarray(got[name])
        if name.endswith("hook_attn_scores"):  # masked: -inf there, the dtype's most negative value here
            masked = np.isneginf(want)
            assert masked.any() and np.all(value[masked] == np.finfo(np.float32).min)
            want, value = np.where(masked, 0.0, want), np.where(masked, 0.0, value)
        errors[name] = rel_err(value, want)
    return errors


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_hook_and_the_logits_match_transformer_lens(family):
    tl_model = _hooked(family)
    model = ad.load(tl_model.state_dict(), "transformer_lens", tl_model.cfg.to_dict())
    assert model.cfg.naming == family and not model.cfg.tie_embeddings and model.cfg.unembed_bias
    errors = _compare_every_hook(tl_model, model, _tokens())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, (worst, errors[worst])
    assert "blocks.1.hook_resid_mid" in errors if family == "gpt2" else "blocks.0.attn.hook_rot_q" in errors


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_processed_weights_match_the_processed_model(family):
    """fold_ln / center_writing_weights / center_unembed / fold_value_biases: what the processed model computes."""
    tl_model = _hooked(family, seed=1)
    tokens = _tokens(1)
    with torch.no_grad():
        raw_logits = tl_model(torch.tensor(tokens)).numpy()
    tl_model.load_and_process_state_dict(tl_model.state_dict(), fold_ln=True, center_writing_weights=True,
                                         center_unembed=True, fold_value_biases=True)
    assert tl_model.cfg.normalization_type == "LNPre" and "blocks.0.ln1.w" not in tl_model.state_dict()
    model = ad.load(tl_model.state_dict(), "transformer_lens", tl_model.cfg.to_dict())
    errors = _compare_every_hook(tl_model, model, tokens)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, (worst, errors[worst])
    # centring the unembedding shifts each position's logits by one constant: the log-probabilities are unchanged
    logits = np.asarray(model(jnp.asarray(tokens)))
    assert np.abs(logits - raw_logits).max() > 1e-3
    log_p = jnp.asarray(logits) - jnp.asarray(logits).max(-1, keepdims=True)
    raw = raw_logits - raw_logits.max(-1, keepdims=True)
    assert rel_err(log_p - np.log(np.exp(log_p).sum(-1, keepdims=True)),
                   raw - np.log(np.exp(raw).sum(-1, keepdims=True))) <= RTOL


def test_head_ablation_through_an_alias_equals_a_transformer_lens_hook():
    tl_model = _hooked("gpt2", seed=2)
    model = ad.load(tl_model.state_dict(), "transformer_lens", tl_model.cfg.to_dict())
    tokens = _tokens(2)

    def zero_head_2(z, hook):
        z[:, :, 2] = 0.0
        return z

    with torch.no_grad():
        want = tl_model.run_with_hooks(torch.tensor(tokens), fwd_hooks=[("blocks.1.attn.hook_z", zero_head_2)])
    mask = jnp.ones((4, 1)).at[2].set(0.0)
    got, captured = run(model, jnp.asarray(tokens), edits={"blocks.1.attn.hook_z": Scale(mask)},
                        capture=["blocks.1.attn.hook_z", "h.1.attn.z"])
    assert rel_err(got, want.numpy()) <= RTOL
    assert set(captured) == {"blocks.1.attn.hook_z", "h.1.attn.z"}  # a site captured under each name asked for
    assert float(jnp.abs(captured["blocks.1.attn.hook_z"][:, :, 2]).max()) == 0.0


def test_sites_table_answers_to_hook_names():
    tl_model = _hooked("neox")
    net = ad.load_network(tl_model.state_dict(), "transformer_lens", tl_model.cfg.to_dict())
    sites = net.sites(batch=2, length=5)
    assert "blocks.0.ln1.hook_scale" in sites and sites["blocks.0.ln1.hook_scale"].shape == (2, 5, 1)
    assert sites["blocks.1.attn.hook_q"] is sites["layers.1.attention.q_unrotated"]
    assert sites["layers.1.attention.q"].aliases == ("blocks.1.attn.hook_rot_q",)
    assert list(sites) == list(list_sites(net.apply, net.params, net.example_input(2, length=5)))


def test_contributions_under_hook_names_equal_those_under_site_names():
    from jaxequiv.contributions import contributions, targets

    tl_model = _hooked("gpt2", seed=4)
    net = ad.load_network(tl_model.state_dict(), "transformer_lens", tl_model.cfg.to_dict())
    tokens = jnp.asarray(_tokens(4))
    target = targets.at_position("top1", "last")
    by_alias = contributions(net, tokens, "blocks.*.hook_resid_pre", method="ig", steps=4, target=target,
                             input_site="hook_embed")
    by_name = contributions(net, tokens, "h.*.resid_pre", method="ig", steps=4, target=target, input_site="wte")
    assert list(by_alias.values) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    for alias, name in zip(by_alias.values, by_name.values):
        np.testing.assert_array_equal(by_alias.values[alias], by_name.values[name])


def test_convert_cli_with_a_transformer_lens_config(tmp_path, capsys):
    import json

    from jaxequiv.cli import main

    tl_model = _hooked("neox", seed=3)
    torch.save(tl_model.state_dict(), tmp_path / "tl.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(tl_model.cfg.to_dict(), default=str))
    assert main(["convert", str(tmp_path / "tl.pt"), str(tmp_path / "out"), "--arch", "transformer_lens"]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "tl.pt"), str(tmp_path / "out"), "--arch", "transformer_lens",
                 "--config", str(tmp_path / "cfg.json")]) == 0
    tokens = _tokens(3)
    with torch.no_grad():
        want = tl_model(torch.tensor(tokens)).numpy()
    assert rel_err(ad.load(tmp_path / "out")(jnp.asarray(tokens)), want) <= RTOL


def test_unsupported_and_mismatched_checkpoints_are_refused():
    tl_model = _hooked("gpt2")
    state, cfg = tl_model.state_dict(), tl_model.cfg.to_dict()
    with pytest.raises(ad.CheckpointError, match="TransformerLens.*arch='transformer_lens'"):
        ad.load(state, "gpt2")
    with pytest.raises(ValueError, match="name it with arch=.*TransformerLens state dict"):
        ad.load(state)
    with pytest.raises(ValueError, match="records no configuration"):
        ad.load(state, "transformer_lens")
    without = {k: v for k, v in state.items() if k != "blocks.1.attn.W_K"}
    with pytest.raises(ad.CheckpointError, match=r"1 keys missing: \['blocks.1.attn.W_K'\]"):
        ad.load(without, "transformer_lens", cfg)
    folded = {k: v for k, v in state.items() if ".ln" not in k}
    with pytest.raises(ad.CheckpointError, match="LNPre"):
        ad.load(folded, "transformer_lens", cfg)
    with pytest.raises(ad.CheckpointError, match="shape mismatches"):
        ad.load(state, "transformer_lens", {**cfg, "d_mlp": 48})
    with pytest.raises(ad.CheckpointError, match="unexpected keys:\n    extra.weight"):
        ad.load({**state, "extra.weight": torch.zeros(2)}, "transformer_lens", cfg)
    for field, value in (("gated_mlp", True), ("normalization_type", "RMS"), ("n_key_value_heads", 2),
                         ("positional_embedding_type", "alibi"), ("act_fn", "silu")):
        with pytest.raises(ValueError, match=field):
            config_from_transformer_lens({**cfg, field: value})
