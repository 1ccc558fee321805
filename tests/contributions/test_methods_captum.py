"""grad_x_act against Captum's LayerGradientXActivation on the same PyTorch ResNet, converted by the adapter."""

import numpy as np
import pytest

from jaxequiv import Network
from jaxequiv.contributions import contributions

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
adapter = pytest.importorskip("jaxequiv.adapters.torch")
torch_reference = pytest.importorskip("jaxequiv.testing.torch_reference")

SITES = ["layer1.0", "layer2.0", "layer2.1"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tmodel = torch_reference.TorchResNet("basic", (1, 2), width=4, num_classes=5)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in tmodel.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    tmodel.eval()
    model = adapter.load(tmodel.state_dict(), "resnet")  # config inferred from the state dict
    return tmodel, Network.from_module(model, (16, 16, 3))


def _captum(tmodel, x, layer_name, target):
    layer = tmodel.get_submodule(layer_name)
    attr = captum_attr.LayerGradientXActivation(tmodel, layer).attribute(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), target=target
    )
    return attr.detach().numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC


def test_grad_x_act_equals_captum(models):
    tmodel, net = models
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    pred = np.asarray(net(x)).argmax(1)
    ours = contributions(net, x, "layer*", method="grad_x_act", target="top1")
    assert list(ours.values) == SITES
    for s in SITES:
        ref = _captum(tmodel, x, s, torch.from_numpy(pred))
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours.values[s], ref, rtol=1e-4, atol=1e-4 * scale, err_msg=s)


def test_all_outputs_equal_captum_class_loop(models):
    tmodel, net = models
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ours = contributions(net, x, "layer2.1", method="grad_x_act", outputs="all")
    for k in range(5):
        ref = _captum(tmodel, x, "layer2.1", k)
        np.testing.assert_allclose(ours.values["layer2.1"][:, k], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
