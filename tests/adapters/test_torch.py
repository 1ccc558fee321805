"""PyTorch adapter: parity with HF GPT-2 / GPT-NeoX and torchvision-named ResNets, the generic path on a custom
CNN, strict accounting and bad input. Parity metric: max |jax - torch| / max |torch| <= 1e-4 per tensor."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402
from torch import nn  # noqa: E402

from jaxequiv.adapters import torch as ad  # noqa: E402
from jaxequiv.sites import list_sites  # noqa: E402
from jaxequiv.testing.torch_reference import torch_resnet  # noqa: E402

transformers.logging.set_verbosity_error()
from tests.parity import RTOL, batchnorm_stats, jrun, rel_err, torch_hooks  # noqa: E402


def _ids(b=2, t=7, vocab=50, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (b, t))


def _ln_sites(specs: dict, site: str, module: str, eps: float = 1e-5) -> None:
    """Add float64 references of a LayerNorm's ``{site}.scale`` and ``.normalized`` sites, from its input."""
    def parts(a):
        a = a.astype(np.float64)
        c = a - a.mean(-1, keepdims=True)
        scale = np.sqrt((c * c).mean(-1, keepdims=True) + eps)
        return scale, c / scale

    specs[f"{site}.scale"] = (module, "in", lambda a: parts(a)[0])
    specs[f"{site}.normalized"] = (module, "in", lambda a: parts(a)[1])


# ------------------------------------------------------------------------------------------------------ GPT-2
def _gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  attn_implementation="eager", **kw)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_parity_every_site():
    hf = _gpt2()
    model = ad.load(hf.state_dict(), "gpt2", hf.config.to_dict())
    ids = _ids()
    b, t, h, dh = 2, 7, 2, 8
    heads = lambda a: a.reshape(b, t, h, dh)  # noqa: E731
    specs = {"wte": ("transformer.wte", "out", lambda a: a),
             "wpe": ("transformer.wpe", "out", lambda a: np.broadcast_to(a, (b, t, a.shape[-1])))}
    _ln_sites(specs, "ln_f", "transformer.ln_f")
    for i in range(2):
        specs[f"h.{i}.resid_pre"] = (f"transformer.h.{i}", "in", lambda a: a)
        for ln in ("ln_1", "ln_2"):
            _ln_sites(specs, f"h.{i}.{ln}", f"transformer.h.{i}.{ln}")
        for j, s in enumerate("qkv"):
            specs[f"h.{i}.attn.{s}"] = (f"transformer.h.{i}.attn.c_attn", "out",
                                        lambda a, j=j: heads(np.split(a, 3, -1)[j]))
        specs[f"h.{i}.attn.z"] = (f"transformer.h.{i}.attn.c_proj", "in", heads)
        specs[f"h.{i}.attn"] = (f"transformer.h.{i}.attn", "out", lambda a: a)
        specs[f"h.{i}.resid_mid"] = (f"transformer.h.{i}.ln_2", "in", lambda a: a)
        specs[f"h.{i}.mlp.pre"] = (f"transformer.h.{i}.mlp.act", "in", lambda a: a)
        specs[f"h.{i}.mlp.act"] = (f"transformer.h.{i}.mlp.c_proj", "in", lambda a: a)
        specs[f"h.{i}.mlp"] = (f"transformer.h.{i}.mlp", "out", lambda a: a)
    want, handles = torch_hooks(hf, specs)
    with torch.no_grad():
        out = hf(torch.tensor(ids), output_hidden_states=True, output_attentions=True)
    for hd in handles:
        hd.remove()
    want.update({"embed": out.hidden_states[0].numpy(), "h.0": out.hidden_states[1].numpy(),
                 "ln_f": out.hidden_states[2].numpy(), "logits": out.logits.numpy()})
    want.update({f"h.{i}.attn.pattern": a.numpy() for i, a in enumerate(out.attentions)})
    logits, got = jrun(model, jnp.asarray(ids), capture=list(want))
    # every site but the last block's residual (HF reports that one after ln_f) and the attention scores (HF's
    # eager attention exposes only the pattern; scores are compared with TransformerLens' hook_attn_scores)
    assert set(want) == set(list_sites(model, jnp.asarray(ids))) - {"h.1", "h.0.attn.scores", "h.1.attn.scores"}
    for name, w in want.items():
        assert rel_err(got[name], w) <= RTOL, name


def test_gpt2_padding_mask_and_folder(tmp_path):
    hf = _gpt2(seed=1, activation_function="gelu", n_inner=24, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors, untied lm_head
    model = ad.load(tmp_path)
    assert model.cfg.activation == "gelu" and model.cfg.d_mlp == 24 and not model.cfg.tie_embeddings
    ids, mask = _ids(seed=2), np.array([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(jrun(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(got[0], want[0]) <= RTOL and rel_err(got[1, :4], want[1, :4]) <= RTOL


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "resnet"])
def test_abstract_model_is_the_model_without_values(arch):
    """A family's shape-only build (for decoders: one traced block, copied) equals eval_shape of the real build."""
    from jaxequiv.adapters.families import FAMILIES
    from jaxequiv.models.transformer import TransformerConfig

    family = FAMILIES[arch]
    cfg = (family.config_cls(block="bottleneck", layers=(1, 2), width=4) if arch == "resnet" else
           TransformerConfig(vocab_size=11, n_layer=3, n_head=2, d_model=8, n_ctx=6, tie_embeddings=False,
                             naming="gpt2" if arch == "gpt2" else "neox"))
    abstract = nnx.split(family.abstract(cfg))
    reference = nnx.split(nnx.eval_shape(lambda: family.build(cfg, nnx.Rngs(0))))
    assert abstract[0] == reference[0]
    shapes = [jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), s) for s in (abstract[1], reference[1])]
    assert shapes[0] == shapes[1]  # (blocks sharing variables would split into fewer leaves)


def test_in_memory_state_dict_is_copied():
    """Tensors of a live torch model are copied: updating them in place later leaves the JAX model as loaded."""
    hf = _gpt2(seed=12)
    model = ad.load(hf.state_dict(), "gpt2", hf.config.to_dict())
    before = np.array(model.wte.embedding[...])
    with torch.no_grad():
        hf.transformer.wte.weight.add_(1.0)
    np.testing.assert_array_equal(model.wte.embedding[...], before)


def test_mapping_table_is_explicit():
    hf = _gpt2()
    model = ad.load(hf.state_dict(), "gpt2", hf.config.to_dict())
    rows = {r.key: r for r in ad.mapping_table(model, "gpt2")}
    assert rows["h.0.attn.c_attn.weight"].path == ("h", 0, "attn", "c_attn", "kernel")
    assert rows["h.0.attn.c_attn.weight"].transform == "copy"  # HF Conv1D stores (in, out)
    assert rows["wte.weight"].path == ("wte", "embedding") and rows["ln_f.weight"].path == ("ln_f", "scale")
    assert "lm_head.weight" not in rows  # tied: listed in the ignore list instead
    assert len(rows) == sum(1 for _ in nnx.iter_graph(model) if isinstance(_[1], nnx.Variable))


# ---------------------------------------------------------------------------------------------------- GPT-NeoX
@pytest.mark.parametrize("parallel", [True, False])
def test_neox_parity_every_site(parallel):
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    torch.manual_seed(3)
    cfg = transformers.GPTNeoXConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
                                     intermediate_size=40, vocab_size=50, rotary_pct=0.5, max_position_embeddings=32,
                                     use_parallel_residual=parallel, attn_implementation="eager")
    hf = transformers.GPTNeoXForCausalLM(cfg).eval()
    model = ad.load(hf.state_dict(), "gpt_neox", cfg.to_dict())
    assert model.cfg.rotary_pct == 0.5 and model.cfg.parallel_residual == parallel
    ids = _ids(seed=4)
    b, t, h, dh = 2, 7, 2, 8
    pos = torch.arange(t)[None]
    cos, sin = hf.gpt_neox.rotary_emb(torch.zeros(1), pos)

    def qkv(a, j):  # NeoX interleaves q,k,v per head; q and k are compared after rotary
        q, k, v = np.split(a.reshape(b, t, h, 3 * dh), 3, -1)
        if j == 2:
            return v
        rq, rk = apply_rotary_pos_emb(torch.tensor(q).transpose(1, 2), torch.tensor(k).transpose(1, 2), cos, sin)
        return (rq if j == 0 else rk).transpose(1, 2).numpy()

    specs = {"embed_in": ("gpt_neox.embed_in", "out", lambda a: a)}
    _ln_sites(specs, "final_layer_norm", "gpt_neox.final_layer_norm")
    for i in range(2):
        pre = f"layers.{i}"
        specs[f"{pre}.resid_pre"] = (f"gpt_neox.{pre}", "in", lambda a: a)
        for ln in ("input_layernorm", "post_attention_layernorm"):
            _ln_sites(specs, f"{pre}.{ln}", f"gpt_neox.{pre}.{ln}")
        for j, s in enumerate("qkv"):
            specs[f"{pre}.attention.{s}"] = (f"gpt_neox.{pre}.attention.query_key_value", "out",
                                             lambda a, j=j: qkv(a, j))
        for j, s in enumerate("qk"):  # before rotary
            specs[f"{pre}.attention.{s}_unrotated"] = (f"gpt_neox.{pre}.attention.query_key_value", "out",
                                                       lambda a, j=j: np.split(a.reshape(b, t, h, 3 * dh), 3, -1)[j])
        specs[f"{pre}.mlp.pre"] = (f"gpt_neox.{pre}.mlp.dense_h_to_4h", "out", lambda a: a)
        specs[f"{pre}.attention.z"] = (f"gpt_neox.{pre}.attention.dense", "in", lambda a: a.reshape(b, t, h, dh))
        specs[f"{pre}.attention"] = (f"gpt_neox.{pre}.attention", "out", lambda a: a)
        specs[f"{pre}.mlp.act"] = (f"gpt_neox.{pre}.mlp.dense_4h_to_h", "in", lambda a: a)
        specs[f"{pre}.mlp"] = (f"gpt_neox.{pre}.mlp", "out", lambda a: a)
        if not parallel:
            specs[f"{pre}.resid_mid"] = (f"gpt_neox.{pre}.post_attention_layernorm", "in", lambda a: a)
    want, handles = torch_hooks(hf, specs)
    with torch.no_grad():
        out = hf(torch.tensor(ids), output_hidden_states=True, output_attentions=True)
    for hd in handles:
        hd.remove()
    want.update({"embed": out.hidden_states[0].numpy(), "layers.0": out.hidden_states[1].numpy(),
                 "final_layer_norm": out.hidden_states[2].numpy(), "logits": out.logits.numpy()})
    want.update({f"layers.{i}.attention.pattern": a.numpy() for i, a in enumerate(out.attentions)})
    _, got = jrun(model, jnp.asarray(ids), capture=list(want))
    scores = {f"layers.{i}.attention.scores" for i in range(2)}  # compared with TransformerLens
    assert set(want) == set(list_sites(model, jnp.asarray(ids))) - {"layers.1"} - scores
    for name, w in want.items():
        assert rel_err(got[name], w) <= RTOL, name


# ------------------------------------------------------------------------------------------------------ ResNet
def _randomize_bn(model: nn.Module, seed: int):
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            stats = batchnorm_stats(m.num_features, rng)
            for name, value in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                                ("running_var", "var")):
                getattr(m, name).data.copy_(torch.as_tensor(stats[value], dtype=torch.float32))


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_parity_torchvision_names(depth, tmp_path):
    torch.manual_seed(depth)
    ref = torch_resnet(depth, width=8, num_classes=7).eval()
    with torch.no_grad():
        _randomize_bn(ref, depth)
    path = tmp_path / "resnet.pth"
    torch.save(ref.state_dict(), path)
    model = ad.load(path, "resnet")  # config inferred from the tensor shapes
    x = np.random.default_rng(depth).normal(size=(2, 3, 32, 32)).astype(np.float32)
    nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    specs = {"maxpool": ("maxpool", "out", nhwc)}
    for i, n in enumerate((2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)):
        for j in range(n):
            specs[f"layer{i + 1}.{j}"] = (f"layer{i + 1}.{j}", "out", nhwc)
    want, handles = torch_hooks(ref, specs)
    with torch.no_grad():
        want["fc"] = ref(torch.tensor(x)).numpy()
    for hd in handles:
        hd.remove()
    _, got = jrun(model, jnp.asarray(nhwc(x)), capture=list(want))
    for name, w in want.items():
        assert rel_err(got[name], w) <= RTOL, name


# ------------------------------------------------------------------------------------------------ generic path
class TorchNet(nn.Module):
    """A custom model touching every layer type the generic path converts."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.PReLU(),
            nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.GroupNorm(2, 4),
        )
        self.seq = nn.Conv1d(4, 6, 3, padding=1)
        self.emb = nn.Embedding(10, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x, tok):
        h = self.features(x).mean(dim=2)  # [B, 4, W]
        s = self.seq(h).transpose(1, 2) + self.emb(tok)  # [B, W, 6]
        a, _ = self.attn(s, s, s, need_weights=False)
        return self.head(self.norm(a + s).mean(1))


class JaxNet(nnx.Module):
    def __init__(self, rngs):
        self.features = nnx.Sequential(
            nnx.Conv(3, 8, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs),
            nnx.BatchNorm(8, use_running_average=True, rngs=rngs), nnx.PReLU(),
            nnx.ConvTranspose(8, 4, (3, 3), strides=2, padding=((1, 2), (1, 2)), rngs=rngs),
            nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=rngs),
        )
        self.seq = nnx.Conv(4, 6, (3,), padding=((1, 1),), rngs=rngs)
        self.emb = nnx.Embed(10, 6, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 6, decode=False, rngs=rngs)
        self.norm = nnx.LayerNorm(6, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(6, 5, rngs=rngs)

    def __call__(self, x, tok):
        h = self.features(x).mean(axis=1)  # [B, W, 4]
        s = self.seq(h) + self.emb(tok)
        return self.head(self.norm(self.attn(s) + s).mean(1))


def _torch_net():
    torch.manual_seed(5)
    net = TorchNet()
    with torch.no_grad():
        _randomize_bn(net, 5)
        net.features[2].weight.fill_(0.3)
    return net.eval()


def test_generic_path_custom_cnn():
    net = _torch_net()
    model = ad.load_state_dict(JaxNet(nnx.Rngs(0)), net.state_dict())
    x = np.random.default_rng(6).normal(size=(2, 3, 8, 8)).astype(np.float32)
    tok = np.random.default_rng(7).integers(0, 10, (2, 8))
    with torch.no_grad():
        want = net(torch.tensor(x), torch.tensor(tok)).numpy()
    got = jrun(model, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(tok))
    assert rel_err(got, want) <= RTOL
    rows = {r.key: r for r in ad.mapping_table(model)}
    assert rows["features.3.weight"].transform == "conv_transpose"
    assert rows["attn.in_proj_weight"].part is not None


class ChannelPReLU(nnx.Module):
    """The per-channel PReLU of the adapter's documentation."""

    def __init__(self, channels: int):
        self.negative_slope = nnx.Param(jnp.full((channels,), 0.25))

    def __call__(self, x):
        return jnp.where(x >= 0, x, self.negative_slope[...] * x)


class DocNet(nnx.Module):
    """The custom-module example of the adapter's documentation, with a per-channel PReLU option."""

    def __init__(self, rngs, per_channel: bool = False):
        self.conv = nnx.Conv(3, 8, (3, 3), padding="VALID", rngs=rngs)
        self.act = ChannelPReLU(8) if per_channel else nnx.PReLU()
        self.fc = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.act(self.conv(x)).mean((1, 2)))


@pytest.mark.parametrize("per_channel", [False, True])
def test_documented_custom_module_and_per_channel_prelu(per_channel):
    torch.manual_seed(6)
    ref = nn.Sequential()
    ref.conv, ref.act, ref.fc = nn.Conv2d(3, 8, 3), nn.PReLU(8 if per_channel else 1), nn.Linear(8, 10)
    with torch.no_grad():
        ref.act.weight.uniform_(-0.5, 0.5)
    x = np.random.default_rng(6).normal(size=(2, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        want = ref.fc(ref.act(ref.conv(torch.tensor(x))).mean((2, 3))).numpy()
    model = ad.load_state_dict(DocNet(nnx.Rngs(0), per_channel), ref.state_dict())
    assert rel_err(model(jnp.asarray(x.transpose(0, 2, 3, 1))), want) <= RTOL
    if per_channel:  # flax's nnx.PReLU has one slope: the error says how to load eight
        with pytest.raises(ad.CheckpointError, match="nnx.PReLU has ONE slope.*per-channel"):
            ad.load_state_dict(DocNet(nnx.Rngs(0)), ref.state_dict())


def test_batchnorm_momentum_convention():
    net = _torch_net()
    var0 = net.features[1].running_var.numpy().copy()
    model = ad.load_state_dict(JaxNet(nnx.Rngs(0)), net.state_dict(), torch_momentum=0.1)
    bn_t, bn_j = net.features[1], model.features.layers[1]
    assert bn_j.momentum == pytest.approx(0.9)
    h = np.random.default_rng(8).normal(size=(4, 8, 3, 3)).astype(np.float32)
    bn_t.train()
    with torch.no_grad():
        bn_t(torch.tensor(h))
    bn_j.use_running_average = False
    bn_j(jnp.asarray(h.transpose(0, 2, 3, 1)))
    assert rel_err(bn_j.mean[...], bn_t.running_mean.numpy()) <= RTOL
    # nnx.BatchNorm tracks the biased batch variance (torch the unbiased one): check flax's own formula
    biased = h.transpose(1, 0, 2, 3).reshape(8, -1).var(1)
    assert rel_err(bn_j.var[...], 0.9 * var0 + 0.1 * biased) <= RTOL


def test_batchnorm_momentum_reaches_resnet_batchnorm():
    from jaxequiv.models.resnet import BatchNorm

    model = ad.load(torch_resnet(18, width=4, num_classes=3).state_dict(), "resnet", torch_momentum=0.05)
    momenta = {node.momentum for _, node in nnx.iter_graph(model) if isinstance(node, BatchNorm)}
    assert momenta == {0.05}  # jaxequiv's ResNet BatchNorm keeps torch's convention


# --------------------------------------------------------------------------------------------- dtypes and files
def test_half_precision_checkpoints_load_as_float32(tmp_path):
    from safetensors.torch import save_file

    net = _torch_net()
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "m.safetensors")
    model = ad.load(tmp_path / "m.safetensors", JaxNet(nnx.Rngs(0)))
    kernel = model.head.kernel[...]
    assert kernel.dtype == jnp.float32
    np.testing.assert_array_equal(kernel, sd["head.weight"].float().numpy().T)
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    model = ad.load_state_dict(JaxNet(nnx.Rngs(0)), half, dtype=jnp.bfloat16)
    assert model.head.kernel[...].dtype == jnp.bfloat16


def test_safetensors_io_interoperates(tmp_path):
    from safetensors.numpy import load_file, save_file

    from jaxequiv.io.safetensors import read_safetensors, write_safetensors

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    write_safetensors(tmp_path / "ours.safetensors", arrays, {"k": "v"})
    back = load_file(tmp_path / "ours.safetensors")
    save_file(arrays, tmp_path / "theirs.safetensors")
    mine, _ = read_safetensors(tmp_path / "theirs.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        np.testing.assert_array_equal(mine[k], v)
    assert read_safetensors(tmp_path / "ours.safetensors")[1] == {"k": "v"}


# ------------------------------------------------------------------------------------------------- bad input
def test_other_architecture_lists_all_problems():
    hf = _gpt2()
    neox = transformers.GPTNeoXConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
                                      intermediate_size=64, vocab_size=50)
    with pytest.raises(ad.CheckpointError) as e:
        ad.load(hf.state_dict(), "gpt_neox", neox.to_dict())
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "layers.0.attention.query_key_value.weight" in msg
    assert "h.0.attn.c_attn.weight" in msg and "nothing was loaded" in msg


def test_hf_folder_for_another_model_type(tmp_path):
    _gpt2().save_pretrained(tmp_path)
    with pytest.raises(ad.CheckpointError, match="model_type='gpt2'"):
        ad.load(tmp_path, "bert")


def test_shape_mismatch_and_no_partial_load():
    net = _torch_net()
    sd = dict(net.state_dict())
    sd["head.weight"] = torch.zeros(3, 6)
    sd["extra.weight"] = torch.zeros(1)
    model = JaxNet(nnx.Rngs(0))
    before = np.asarray(model.seq.kernel[...]).copy()
    with pytest.raises(ad.CheckpointError) as e:
        ad.load_state_dict(model, sd)
    assert "head.weight: checkpoint (3, 6)" in str(e.value) and "extra.weight" in str(e.value)
    np.testing.assert_array_equal(model.seq.kernel[...], before)  # nothing was written


def test_truncated_files(tmp_path):
    net = _torch_net()
    torch.save(net.state_dict(), tmp_path / "m.pt")
    from safetensors.torch import save_file

    save_file(net.state_dict(), tmp_path / "m.safetensors")
    for name in ("m.pt", "m.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ad.CheckpointError, match="truncated"):
            ad.load(tmp_path / name, JaxNet(nnx.Rngs(0)))


def test_pickle_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="expected a state dict"):
        ad.load(tmp_path / "list.pt", "resnet")
    torch.save({"weight": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(TypeError, match="'epoch' \\(int\\)"):
        ad.load(tmp_path / "mixed.pt", "resnet")


def test_wrapped_state_dict_is_unwrapped():
    net = _torch_net()
    model = ad.load({"state_dict": net.state_dict(), "epoch": 3}, JaxNet(nnx.Rngs(0)))
    np.testing.assert_array_equal(model.head.bias[...], net.head.bias.detach().numpy())


@pytest.mark.parametrize("field,value,match", [
    ("activation_function", "swish", "activation_function='swish'"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
])
def test_config_field_not_understood(field, value, match):
    hf = _gpt2()
    cfg = {**hf.config.to_dict(), field: value}
    with pytest.raises(ValueError, match=match):
        ad.load(hf.state_dict(), "gpt2", cfg)


def test_unknown_arch_and_missing_config():
    with pytest.raises(ValueError, match="unknown architecture"):
        ad.load({"a": torch.zeros(1)}, "llama")
    with pytest.raises(ValueError, match="needs a config"):
        ad.load(_gpt2().state_dict(), "gpt2")
    with pytest.raises(ValueError, match="cannot tell the architecture"):
        ad.load({"a": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------- convert
def test_convert_cli_round_trip_without_torch(tmp_path):
    import subprocess
    import sys

    from jaxequiv.cli import main

    hf = _gpt2(seed=9)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer = {"tokenizer.json": '{"version": "1.0"}', "vocab.json": '{"a": 0}', "merges.txt": "#version: 0.2\n",
                 "special_tokens_map.json": "{}", "tokenizer_config.json": '{"model_max_length": 16}'}
    for name, text in tokenizer.items():
        (tmp_path / "hf" / name).write_text(text)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["config.json", "model.safetensors", *tokenizer])
    assert all((tmp_path / "out" / n).read_text() == text for n, text in tokenizer.items())
    ids = _ids(seed=10)
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    np.save(tmp_path / "ids.npy", ids)
    script = (
        "import sys, numpy as np, jax.numpy as jnp; sys.modules['torch'] = None\n"
        "from jaxequiv.adapters.torch import load\n"
        f"m = load({str(tmp_path / 'out')!r})\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, np.asarray(m(jnp.asarray(np.load({str(tmp_path / 'ids.npy')!r})))))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert rel_err(np.load(tmp_path / "got.npy"), want) <= RTOL
    assert main(["convert", str(tmp_path / "nowhere.pt"), str(tmp_path / "x")]) == 2


def test_save_load_network_round_trip(tmp_path):
    torch.manual_seed(11)
    ref = torch_resnet(18, width=4, num_classes=3).eval()
    model = ad.load(ref.state_dict(), "resnet")
    ad.save(model, tmp_path / "art")
    net = ad.load_network(tmp_path / "art")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)), jnp.float32)
    np.testing.assert_allclose(jax.jit(net.apply)(net.params, x), jrun(model, x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="input of shape"):
        net(jnp.zeros((1, 3, 16, 16)))


def test_sharded_hf_folder(tmp_path):
    hf = _gpt2(seed=12)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert any(name.endswith(".index.json") for name in os.listdir(tmp_path))
    state, config = ad.read_checkpoint(tmp_path)
    assert config["model_type"] == "gpt2" and len(state) == len(hf.state_dict()) - 1  # tied lm_head not stored
    ids = _ids(seed=13)
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    assert rel_err(jrun(ad.load(tmp_path), jnp.asarray(ids)), want) <= RTOL
