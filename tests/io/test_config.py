"""Config dataclasses <-> JSON: round trips (tuples, nested configs, array scalars), strict unknown-key errors."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxequiv.io import DictConfig, from_dict, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    width: int = 4
    rates: tuple[float, ...] = (0.1, 0.2)


@dataclasses.dataclass(frozen=True)
class Outer(DictConfig):
    name: str = "x"
    lr: float = 1e-3
    blocks: tuple[int, ...] = (2, 2)
    grid: tuple[tuple[int, int], ...] = ((1, 2), (3, 4))
    inner: Inner = Inner()
    maybe: Inner | None = None
    size: int | None = None


def test_round_trip_through_json():
    cfg = Outer(name="y", lr=2, blocks=(1, 2, 3), inner=Inner(8, (0.5,)), maybe=Inner(), size=7)
    d = cfg.to_dict()
    assert d == {"name": "y", "lr": 2.0, "blocks": [1, 2, 3], "grid": [[1, 2], [3, 4]],
                 "inner": {"width": 8, "rates": [0.5]}, "maybe": {"width": 4, "rates": [0.1, 0.2]}, "size": 7}
    assert isinstance(d["lr"], float)  # a field annotated float is written as a float
    back = Outer.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and hash(back) == hash(cfg) and isinstance(back.inner, Inner)
    assert from_dict(Outer, {"maybe": None}).maybe is None


def test_array_scalars_become_python_numbers():
    d = to_dict(Outer(lr=jnp.float32(0.25), size=np.int64(3), blocks=np.array([1, 2])))
    assert d["lr"] == 0.25 and type(d["lr"]) is float and type(d["size"]) is int and d["blocks"] == [1, 2]
    json.dumps(d)


def test_unknown_keys_and_non_objects_are_named():
    with pytest.raises(ValueError, match=r"unknown Outer field\(s\) \['widht'\] in cfg.json; known fields are "
                                         r"\['blocks', 'grid'"):
        from_dict(Outer, {"widht": 3}, where="cfg.json")
    with pytest.raises(ValueError, match=r"unknown Inner field\(s\) \['depth'\] in cfg.json.inner"):
        from_dict(Outer, {"inner": {"depth": 1}}, where="cfg.json")
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        from_dict(Outer, [1, 2])


def test_the_package_configs_use_it():
    from jaxequiv.models.transformer import TransformerConfig
    from jaxequiv.sae import STSAE

    cfg = TransformerConfig(vocab_size=5, n_layer=1, n_head=1, d_model=4, n_ctx=3)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    sae = STSAE(d_in=3, d_sae=6, theta=jnp.float32(0.5), l1=0)
    assert sae.config_dict() == to_dict(sae) and sae.config_dict()["l1"] == 0.0 and sae.config_dict()["theta"] == 0.5


def test_from_preset_reads_one_entry_and_names_the_presets(tmp_path):
    from jaxequiv.io import from_preset

    @dataclasses.dataclass(frozen=True)
    class Settings:
        steps: int = 1
        sizes: tuple[int, ...] = ()

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"quick": {"steps": 2, "sizes": [1, 2]}, "full": {"steps": 9}}))
    assert from_preset(Settings, str(path), "quick") == Settings(2, (1, 2))
    assert from_preset(Settings, str(path), "full") == Settings(9)
    assert from_preset(Settings, str(path), "quick", steps=5) == Settings(5, (1, 2))  # overrides win
    unknown = r"unknown Settings field\(s\) \['stepz'\] in .*\['quick'\] with overrides \['stepz'\]"
    with pytest.raises(ValueError, match=unknown):
        from_preset(Settings, str(path), "quick", stepz=5)
    with pytest.raises(ValueError, match=r"no preset 'paper'; it has \['full', 'quick'\]"):
        from_preset(Settings, str(path), "paper")
    path.write_text(json.dumps({"quick": {"step": 2}}))
    with pytest.raises(ValueError, match=r"unknown Settings field\(s\) \['step'\]"):
        from_preset(Settings, str(path), "quick")
