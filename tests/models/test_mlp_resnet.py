"""MLP and ResNet: shapes, sites, torchvision names and parameter counts, forward passes against float64 NumPy
(MLP) and PyTorch (ResNet) references, BatchNorm train/eval semantics, stacking over seeds, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv import Network, Replace, Scale, run
from jaxequiv.models.mlp import MLP
from jaxequiv.models.resnet import BatchNorm, ResNet, resnet18, resnet34, resnet50
from tests.parity import batchnorm_stats

IMG = ("batch", "height", "width", "channel")


def small_resnet(seed=0, abstract=False, **kw):
    args = dict(block="basic", layers=(1, 1), width=4, num_classes=5, in_channels=1, stem="small")
    args.update(kw)
    make = lambda: ResNet(args.pop("block"), args.pop("layers"), rngs=nnx.Rngs(seed), **args)
    return nnx.eval_shape(make) if abstract else make()


# ---------------------------------------------------------------------------------------------------------
# MLP


def _mlp_numpy(model, x, act):
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    n = len(model.layers)
    for i, layer in enumerate(model.layers):
        h = h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)
        if i < n - 1:
            h = act(h)
    return h


_NP_ACTS = {
    "relu": lambda h: np.maximum(h, 0),
    "tanh": np.tanh,
    "gelu": lambda h: 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2))),
}


@settings(max_examples=8, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    batch=st.integers(1, 5),
    activation=st.sampled_from(sorted(_NP_ACTS)),
    seed=st.integers(0, 2**16),
)
def test_mlp_matches_float64_numpy(sizes, batch, activation, seed):
    model = MLP(sizes, activation, rngs=nnx.Rngs(seed))
    x = np.random.default_rng(seed).normal(size=(batch, sizes[0])).astype(np.float32)
    np.testing.assert_allclose(model(jnp.asarray(x)), _mlp_numpy(model, x, _NP_ACTS[activation]),
                               rtol=1e-5, atol=1e-5)


def test_mlp_sites_names_and_image_flattening():
    model = MLP((12, 6, 5, 3), rngs=nnx.Rngs(0))
    net = Network.from_module(model, (2, 2, 3))
    infos = net.sites(batch=4)
    assert list(infos) == ["layers.0", "layers.1", "layers.2"]
    assert [i.shape for i in infos.values()] == [(4, 6), (4, 5), (4, 3)]
    assert all(i.axes == ("batch", "channel") for i in infos.values())
    x = jax.random.normal(jax.random.key(1), (4, 2, 2, 3))
    out, cap = run(net, x, capture="layers.*")
    np.testing.assert_allclose(out, model(x.reshape(4, 12)), rtol=1e-6)
    np.testing.assert_array_equal(cap["layers.2"], out)
    assert float(cap["layers.0"].min()) >= 0.0  # post-ReLU
    keys = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model))}
    assert keys == {f"layers.{i}.{p}" for i in range(3) for p in ("kernel", "bias")}


def test_mlp_bad_arguments():
    model = MLP((4, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[batch, 4\].*\(2, 5\)"):
        model(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP((4, 3), "swish", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="at least input and output"):
        MLP((4,), rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------------
# ResNet structure


def _param_count(ctor):
    model = nnx.eval_shape(lambda: ctor(rngs=nnx.Rngs(0)))
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("ctor,expected", [(resnet18, 11_689_512), (resnet34, 21_797_672), (resnet50, 25_557_032)])
def test_resnet_param_counts_equal_torchvision(ctor, expected):
    assert _param_count(ctor) == expected


def test_resnet_torchvision_paths_and_shapes():
    r50 = dict(nnx.to_flat_state(nnx.state(nnx.eval_shape(lambda: resnet50(rngs=nnx.Rngs(0))))))
    shapes = {".".join(map(str, k)): v.shape for k, v in r50.items()}
    assert shapes["conv1.kernel"] == (7, 7, 3, 64)
    assert shapes["layer2.0.downsample.0.kernel"] == (1, 1, 256, 512)
    assert shapes["layer2.0.downsample.1.mean"] == (512,)
    assert shapes["layer2.0.conv2.kernel"] == (3, 3, 128, 128)
    assert shapes["layer4.2.conv3.kernel"] == (1, 1, 512, 2048)
    assert shapes["fc.kernel"] == (2048, 1000)
    assert "layer1.1.downsample.0.kernel" not in shapes
    r18 = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(nnx.eval_shape(
        lambda: resnet18(rngs=nnx.Rngs(0)))))}
    assert "layer1.0.downsample.0.kernel" not in r18  # identity shortcut: 64 -> 64, stride 1
    assert {"layer2.0.downsample.0.kernel", "layer4.1.bn2.var", "layer3.1.conv1.kernel"} <= r18


def test_resnet18_sites_with_shapes():
    net = Network.from_module(nnx.eval_shape(lambda: resnet18(rngs=nnx.Rngs(0))), (224, 224, 3))
    infos = net.sites(batch=2)
    expected = {"maxpool": (2, 56, 56, 64)}
    for i, (hw, c) in enumerate([(56, 64), (28, 128), (14, 256), (7, 512)], start=1):
        for j in range(2):
            expected[f"layer{i}.{j}"] = (2, hw, hw, c)
    expected.update(avgpool=(2, 512), fc=(2, 1000))
    assert {k: v.shape for k, v in infos.items()} == expected
    assert list(infos) == list(expected)  # forward order
    assert infos["layer3.1"].axes == IMG and infos["avgpool"].axes == ("batch", "channel")


def test_small_stem_sites_and_shapes():
    model = nnx.eval_shape(lambda: ResNet("bottleneck", (1, 2, 1), width=2, num_classes=7, in_channels=1,
                                          stem="small", rngs=nnx.Rngs(0)))
    infos = Network.from_module(model, (28, 28, 1)).sites(batch=3)
    assert {k: v.shape for k, v in infos.items()} == {
        "relu": (3, 28, 28, 2), "layer1.0": (3, 28, 28, 8), "layer2.0": (3, 14, 14, 16),
        "layer2.1": (3, 14, 14, 16), "layer3.0": (3, 7, 7, 32), "avgpool": (3, 32), "fc": (3, 7)}


def test_resnet_bad_arguments():
    model = small_resnet(in_channels=3, abstract=True)
    with pytest.raises(ValueError, match=r"NHWC.*\(2, 3, 8, 8\).*transpose"):
        model(jnp.ones((2, 3, 8, 8)))
    for kw, msg in [(dict(block="wide"), "block must be"), (dict(stem="cifar"), "stem must be"),
                    (dict(layers=()), "layers must be")]:
        with pytest.raises(ValueError, match=msg):
            small_resnet(abstract=True, **kw)


def test_network_wrong_input_shape_names_expected_and_given():
    net = Network.from_module(small_resnet(abstract=True), (8, 8, 1))
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\).*\('batch', 8, 8, 1\)"):
        net(jnp.ones((2, 8, 8, 3)))


# ---------------------------------------------------------------------------------------------------------
# ResNet against the torchvision-named PyTorch reference module with the same weights


_TORCH_NAME = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _randomise_batchnorm(model, seed):
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, BatchNorm):
            for name, value in batchnorm_stats(m.scale.shape[0], rng).items():
                getattr(m, name)[...] = jnp.asarray(value, jnp.float32)


def _load_into_torch(torch, tmodel, model):
    sd = {}
    for path, v in nnx.to_flat_state(nnx.state(model)):
        a = np.asarray(v[...])
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif a.ndim == 2:
            a = a.T
        sd[".".join(map(str, path[:-1])) + "." + _TORCH_NAME[path[-1]]] = torch.from_numpy(a.copy())
    missing, unexpected = tmodel.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


@pytest.mark.parametrize("block,layers,stem,hw", [("basic", (2, 1, 1), "imagenet", 32),
                                                  ("bottleneck", (1, 2), "small", 10),
                                                  ("basic", (1, 1), "imagenet", 29)])
def test_resnet_matches_torch_forward(block, layers, stem, hw):
    torch = pytest.importorskip("torch")
    from jaxequiv.testing.torch_reference import TorchResNet

    model = ResNet(block, layers, width=4, num_classes=6, in_channels=3, stem=stem, rngs=nnx.Rngs(3))
    _randomise_batchnorm(model, 1)
    tmodel = TorchResNet(block, layers, 4, 6, 3, stem=stem).eval()
    _load_into_torch(torch, tmodel, model)
    x = np.random.default_rng(0).normal(size=(2, hw, hw, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out = jax.jit(lambda n, x: n(x))(Network.from_module(model, (hw, hw, 3)), jnp.asarray(x))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_batchnorm_train_and_eval_match_torch():
    torch = pytest.importorskip("torch")
    bn = BatchNorm(3)
    tbn = torch.nn.BatchNorm2d(3)
    x1, x2 = (np.random.default_rng(s).normal(2.0, 3.0, size=(4, 5, 5, 3)).astype(np.float32) for s in (0, 1))
    bn.train()
    tbn.train()
    for x in (x1, x2):
        out = bn(jnp.asarray(x))
        with torch.no_grad():
            ref = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], tbn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], tbn.running_var.numpy(), rtol=1e-5)  # unbiased update, as torch
    bn.eval()
    tbn.eval()
    before = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    out = bn(jnp.asarray(x1))
    with torch.no_grad():
        ref = tbn(torch.from_numpy(x1.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.mean[...], before[0])
    np.testing.assert_array_equal(bn.var[...], before[1])


def test_resnet_train_mode_updates_stats_eval_mode_does_not():
    model = small_resnet()
    assert model.bn1.use_running_average  # created in eval mode
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    stats = lambda: [np.asarray(v) for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))]
    s0 = stats()
    model(x)
    assert all(np.array_equal(a, b) for a, b in zip(s0, stats()))
    model.train()
    train_out = model(x)
    assert all(not np.array_equal(a, b) for a, b in zip(s0, stats()))
    model.eval()
    assert not np.allclose(train_out, model(x))  # batch statistics vs running statistics


# ---------------------------------------------------------------------------------------------------------
# Sites, edits and stacks


def test_resnet_site_edits_and_avgpool_consistency():
    model = small_resnet(layers=(1, 2))
    net = Network.from_module(model, (8, 8, 1))
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    out, cap = run(net, x, capture=["layer*", "avgpool"])
    assert list(cap) == ["layer1.0", "layer2.0", "layer2.1", "avgpool"]
    np.testing.assert_allclose(cap["avgpool"], cap["layer2.1"].mean((1, 2)), rtol=1e-6)
    # zeroing the last block output makes the logits equal the fc bias
    zeroed, _ = run(net, x, edits={"layer2.1": Scale(0.0)})
    np.testing.assert_allclose(zeroed, np.broadcast_to(model.fc.bias[...], zeroed.shape), atol=1e-6)
    # replacing a block output with its own value changes nothing
    same, _ = run(net, x, edits={"layer1.0": Replace(cap["layer1.0"])})
    np.testing.assert_allclose(same, out, rtol=1e-6)


def test_stacked_resnets_vmap_equals_loop():
    nets = [Network.from_module(small_resnet(seed), (8, 8, 1)) for seed in (0, 1)]
    stacked = Network.stack(nets)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    out = jax.jit(lambda n, x: n(x))(stacked, x)
    assert out.shape == (2, 2, 5)
    for i, net in enumerate(nets):
        np.testing.assert_allclose(out[i], net(x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize("hw,k,stride", [(1, 3, 1), (2, 3, 1), (3, 3, 2), (4, 3, 2), (2, 1, 1), (4, 1, 2), (5, 3, 1)])
def test_small_map_conv_equals_lax_conv(hw, k, stride):
    """The patch-matmul path for tiny output maps equals lax.conv_general_dilated (value and gradient)."""
    from jaxequiv.models.resnet import _conv_general_dilated

    x = jax.random.normal(jax.random.key(0), (3, hw, hw, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 5, 4))
    p = (k - 1) // 2
    args = ((stride, stride), ((p, p), (p, p)))
    dn = ("NHWC", "HWIO", "NHWC")
    want = jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dn)
    dnums = jax.lax.conv_dimension_numbers(x.shape, w.shape, dn)  # as nnx.Conv passes them
    got = _conv_general_dilated(x, w, *args, dimension_numbers=dnums)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g_want = jax.grad(lambda w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dn))))(w)
    g_got = jax.grad(lambda w: jnp.sum(jnp.sin(_conv_general_dilated(x, w, *args, dimension_numbers=dnums))))(w)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-4)
