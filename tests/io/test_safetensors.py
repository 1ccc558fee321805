"""The NumPy safetensors codec: round trips every dtype, reads and writes files the safetensors package reads and
writes, and reports a truncated file as one clear error."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from jaxequiv.io import CorruptFileError, SafetensorsError, read_safetensors, write_safetensors


def test_round_trip_every_dtype_with_metadata(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(size=(2, 3)).astype(dt) for name, dt in
              [("f64", np.float64), ("f32", np.float32), ("f16", np.float16), ("bf16", ml_dtypes.bfloat16),
               ("f8", ml_dtypes.float8_e4m3fn)]}
    arrays.update(i64=np.arange(5, dtype=np.int64), u8=np.arange(3, dtype=np.uint8), b=np.array([True, False]),
                  scalar=np.float32(2.5).reshape(()), empty=np.zeros((0, 4), np.float32))
    write_safetensors(tmp_path / "t.safetensors", arrays, {"format": "x"})
    got, meta = read_safetensors(tmp_path / "t.safetensors")
    assert meta == {"format": "x"} and sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k].astype(np.float64), v.astype(np.float64))
    raw = (tmp_path / "t.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"format": "x"}
    with pytest.raises(TypeError, match="cannot store tensor 'c'"):
        write_safetensors(tmp_path / "c.safetensors", {"c": np.array([1 + 2j])})


def test_interoperates_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    write_safetensors(tmp_path / "ours.safetensors", arrays, {"k": "v"})
    theirs = st.load_file(tmp_path / "ours.safetensors")
    st.save_file(arrays, tmp_path / "theirs.safetensors")
    mine, _ = read_safetensors(tmp_path / "theirs.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(theirs[k], v)
        np.testing.assert_array_equal(mine[k], v)


def test_truncated_or_foreign_files_are_clear_errors(tmp_path):
    write_safetensors(tmp_path / "ok.safetensors", {"a": np.arange(100, dtype=np.float32)})
    raw = (tmp_path / "ok.safetensors").read_bytes()
    for name, data, why in [("short", raw[:4], "too short"), ("cut", raw[:-8], "truncated"),
                            ("head", raw[:40], "truncated"), ("text", b"\x10\0\0\0\0\0\0\0not json at all!", "JSON")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SafetensorsError, match=why) as e:
            read_safetensors(tmp_path / name)
        assert isinstance(e.value, CorruptFileError) and str(tmp_path / name) in str(e.value)


def test_every_tensor_reaches_jax_without_a_copy(tmp_path):
    """Aligned tensors stay maps of the file, the rest are read into aligned buffers: jax.device_put shares both
    (a misaligned map would be copied, and its pages stay resident beside the copy: twice the file)."""
    import jax

    # 60-byte tensors step through every 4-byte residue mod 64, so at least one lies aligned whatever the header
    arrays = {f"t{i:02d}": np.arange(15, dtype=np.float32) + i for i in range(20)}
    write_safetensors(tmp_path / "a.safetensors", arrays)
    got, _ = read_safetensors(tmp_path / "a.safetensors")

    def is_map(a):
        while a is not None:
            if isinstance(a, np.memmap):
                return True
            a = getattr(a, "base", None)
        return False

    mapped = [k for k, v in got.items() if is_map(v)]
    assert 0 < len(mapped) < len(got)  # both kinds occur here
    for k, v in got.items():
        assert not v.flags.writeable and v.ctypes.data % 64 == 0
        np.testing.assert_array_equal(v, arrays[k])
        assert jax.device_put(v).unsafe_buffer_pointer() == v.ctypes.data
