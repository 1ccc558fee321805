"""Contributions of language models against Captum on the same HF models, converted by the adapter:
position targets (next token at the last real position, IOI's logit difference), the left rule against
LayerConductance (riemann_trapezoid alphas) with its convergence delta, an output selector on a dict-returning
BERT, and tokens as the spatial axis of the reductions. Metric: max |ours - captum| / max |captum| (parity.RTOL)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxequiv import Network
from jaxequiv.contributions import contributions, reduce_site
from jaxequiv.contributions import targets as T

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
captum_attr = pytest.importorskip("captum.attr")
adapter = pytest.importorskip("jaxequiv.adapters.torch")

from tests.parity import RTOL, rel_err  # noqa: E402

transformers.logging.set_verbosity_error()

IDS = np.random.default_rng(0).integers(0, 40, (3, 7))
MASK = np.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])  # right padding
LAST = MASK.sum(1) - 1
IO, S = np.array([3, 4, 5]), np.array([7, 8, 9])


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    return hf, adapter.load(hf.state_dict(), "gpt2", hf.config.to_dict()).network()


def _with_site_value(hf, module, fn):
    """``f(e)``: ``fn()`` with ``module``'s output replaced by ``e`` (a batch of n copies of the data)."""
    def f(e):
        handle = hf.get_submodule(module).register_forward_hook(lambda m, i, o: e)
        try:
            return fn(e.shape[0] // len(IDS))
        finally:
            handle.remove()
    return f


def _gpt2_last_logits(hf, copies):
    out = hf(torch.tensor(IDS).repeat(copies, 1), attention_mask=torch.tensor(MASK).repeat(copies, 1)).logits
    return out[torch.arange(out.shape[0]), torch.tensor(LAST).repeat(copies)]  # [n, V]


# GPT-2 sites -> (torch module, attribute to its input?)
GPT2_SITES = {"h.0.mlp": ("transformer.h.0.mlp", False), "h.1.attn.z": ("transformer.h.1.attn.c_proj", True),
              "h.0": ("transformer.h.1.ln_1", True)}


def test_gpt2_next_token_grad_x_act_equals_captum(gpt2):
    hf, net = gpt2
    with torch.no_grad():
        pred = _gpt2_last_logits(hf, 1).argmax(-1)
    ours = contributions(net, IDS, list(GPT2_SITES), method="grad_x_act", args=(MASK,),
                         target=T.at_position("top1", "last", mask=MASK))
    np.testing.assert_array_equal(np.asarray(ours.outputs).shape, (3, 7, 40))
    for site, (module, to_input) in GPT2_SITES.items():
        ref = captum_attr.LayerGradientXActivation(lambda ids: hf(ids, attention_mask=torch.tensor(MASK)).logits[
            torch.arange(3), torch.tensor(LAST)], hf.get_submodule(module)).attribute(
            torch.tensor(IDS), target=pred, attribute_to_layer_input=to_input).detach().numpy()
        assert rel_err(np.asarray(ours.values[site]).reshape(ref.shape), ref) <= RTOL, site
        # tokens are the spatial axis: sign split per element, then the sum over the real tokens only
        red = reduce_site(ours.values[site], ours.sites[site], ["positive", "negative"], mask=MASK)
        ref = ref.reshape(ours.values[site].shape)
        real = ref * MASK.reshape((3, 7) + (1,) * (ref.ndim - 2))
        for variant, part in (("positive", np.maximum(real, 0)), ("negative", np.minimum(real, 0))):
            assert rel_err(red[variant], part.sum(1).reshape(3, -1)) <= RTOL, (site, variant)


def test_gpt2_ioi_logit_difference_left_rule_equals_layer_conductance(gpt2):
    """rule='left' over linspace(0, 1, S + 1) is Captum's LayerConductance (riemann_trapezoid alphas), the path
    running from zero to the embeddings (input_site='embed'); the completeness delta is Captum's too."""
    hf, net = gpt2
    steps = 6

    def diff(copies):
        logits = _gpt2_last_logits(hf, copies)
        rows = torch.arange(logits.shape[0])
        return logits[rows, torch.tensor(IO).repeat(copies)] - logits[rows, torch.tensor(S).repeat(copies)]

    f = _with_site_value(hf, "transformer.drop", diff)  # the residual stream before block 0 = our "embed"
    with torch.no_grad():
        emb = hf.transformer.wte(torch.tensor(IDS)) + hf.transformer.wpe(torch.arange(7))[None]
    ours = contributions(net, IDS, list(GPT2_SITES), method="ig", rule="left", steps=steps, input_site="embed",
                         args=(MASK,), target=T.at_position(T.logit_diff(IO, S), "last", mask=MASK))
    for site, (module, to_input) in GPT2_SITES.items():
        ref, delta = captum_attr.LayerConductance(f, hf.get_submodule(module)).attribute(
            emb, baselines=torch.zeros_like(emb), n_steps=steps, method="riemann_trapezoid",
            attribute_to_layer_input=to_input, return_convergence_delta=True)
        ref, delta = ref.detach().numpy(), delta.detach().numpy()
        assert rel_err(np.asarray(ours.values[site]).reshape(ref.shape), ref) <= RTOL, site
        assert rel_err(ours.delta[site], delta) <= RTOL, site


def test_every_position_target_equals_one_position_at_a_time(gpt2):
    _, net = gpt2
    allpos = contributions(net, IDS, "h.0.mlp", method="grad_x_act", args=(MASK,),
                           target=T.at_position("top1", "all", mask=MASK))
    v = np.asarray(allpos.values["h.0.mlp"])
    assert v.shape == (3, 7, 7, 16)  # [B, positions, tokens, channels]
    for p in (0, 4, 6):
        one = contributions(net, IDS, "h.0.mlp", method="grad_x_act", args=(MASK,), target=T.at_position("top1", p))
        np.testing.assert_allclose(v[:, p], np.asarray(one.values["h.0.mlp"]) * MASK[:, p, None, None],
                                   rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, attn_implementation="eager")
    hf = transformers.BertModel(cfg).eval()
    graphdef, state = nnx.split(adapter.load(hf.state_dict(), "bert", hf.config.to_dict()))

    def apply(params, ids, mask):  # HF-style structured output
        model = nnx.merge(graphdef, params)
        hidden = model(ids, mask)
        return {"last_hidden_state": hidden, "pooler_output": model.pool(hidden)}

    return hf, Network(apply, state, (None,), "int")


BERT_SITES = {"encoder.layer.0": ("encoder.layer.0", False),
              "encoder.layer.1.attention.self.z": ("encoder.layer.1.attention.output.dense", True),
              "encoder.layer.1.intermediate": ("encoder.layer.1.intermediate", False)}


def test_bert_structured_output_selector_and_conductance_equal_captum(bert):
    hf, net = bert
    unit = 5

    def pooled(copies):
        return hf(torch.tensor(IDS).repeat(copies, 1), attention_mask=torch.tensor(MASK).repeat(copies, 1)).pooler_output

    with pytest.raises(ValueError, match="returns a dict .*pick the output to explain with output="):
        contributions(net, IDS, "encoder.layer.0", method="grad_x_act", args=(MASK,), target=unit)
    with pytest.raises(ValueError, match="does not select an array"):
        contributions(net, IDS, "encoder.layer.0", method="grad_x_act", args=(MASK,), output="pooled")
    gxa = contributions(net, IDS, list(BERT_SITES), method="grad_x_act", args=(MASK,), output="pooler_output",
                        target=unit)
    f = _with_site_value(hf, "embeddings", pooled)
    with torch.no_grad():
        emb = hf.embeddings(torch.tensor(IDS))
    ig = contributions(net, IDS, list(BERT_SITES), rule="left", steps=4, input_site="embeddings", args=(MASK,),
                       output=("pooler_output",), target=unit)
    for site, (module, to_input) in BERT_SITES.items():
        layer = hf.get_submodule(module)
        ref = captum_attr.LayerGradientXActivation(lambda ids: pooled(1), layer).attribute(
            torch.tensor(IDS), target=unit, attribute_to_layer_input=to_input).detach().numpy()
        assert rel_err(np.asarray(gxa.values[site]).reshape(ref.shape), ref) <= RTOL, site
        ref = captum_attr.LayerConductance(f, layer).attribute(
            emb, baselines=torch.zeros_like(emb), target=unit, n_steps=4, method="riemann_trapezoid",
            attribute_to_layer_input=to_input).detach().numpy()
        assert rel_err(np.asarray(ig.values[site]).reshape(ref.shape), ref) <= RTOL, site
    np.testing.assert_allclose(gxa.outputs, pooled(1).detach().numpy(), rtol=1e-4, atol=1e-6)


def test_sequence_target_errors(gpt2):
    _, net = gpt2
    with pytest.raises(ValueError, match="say which position to explain"):
        contributions(net, IDS, "h.0", method="grad_x_act")
    with pytest.raises(ValueError, match="integer token ids; pass input_site="):
        contributions(net, IDS, "h.0", target=T.at_position("top1"))
    with pytest.raises(ValueError, match="position 9 .* out of range for sequences of length 7"):
        contributions(net, IDS, "h.0", method="grad_x_act", target=T.at_position("top1", 9))
    with pytest.raises(ValueError, match="example 1 has no real token"):
        T.at_position("top1", mask=np.array([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="args\\[0\\] has shape"):
        contributions(net, IDS, "h.0", method="grad_x_act", args=(MASK[:2],), target=T.at_position("top1"))
    with pytest.raises(ValueError, match="not a site of this network"):
        contributions(net, IDS, "h.0", input_site="tok_embed", target=T.at_position("top1"))
    np.testing.assert_array_equal(T.at_position("top1", mask=np.array([[0, 1, 1], [1, 1, 0]])).positions, [2, 1])
    np.testing.assert_array_equal(jnp.asarray(T.at_position("top1", lengths=[3, 1]).positions), [2, 0])
