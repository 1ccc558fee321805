"""Array readers: the arrays of good files; one CorruptFileError naming the file for a bad one (never a pickle)."""

import numpy as np
import pytest

from jaxequiv.io import CorruptFileError, read_arrays, read_npy, read_npz, write_safetensors


def test_read_npy_npz_and_safetensors(tmp_path):
    a, b = np.arange(6.0).reshape(2, 3), np.arange(4, dtype=np.int64)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    write_safetensors(tmp_path / "ab.safetensors", {"a": a, "b": b})
    np.testing.assert_array_equal(read_npy(tmp_path / "a.npy"), a)
    m = read_npy(tmp_path / "a.npy", mmap_mode="r")
    assert isinstance(m, np.memmap) and not m.flags.writeable
    for name in ("ab.npz", "ab.safetensors"):
        got = read_arrays(tmp_path / name)
        assert sorted(got) == ["a", "b"]
        np.testing.assert_array_equal(got["a"], a)
        np.testing.assert_array_equal(got["b"], b)
    assert list(read_arrays(tmp_path / "a.npy")) == ["a"]


def test_bad_files_name_the_file_and_never_suggest_pickles(tmp_path):
    np.save(tmp_path / "ok.npy", np.arange(100.0))
    np.savez(tmp_path / "ok.npz", x=np.arange(1000.0))
    raw_npy, raw_npz = (tmp_path / "ok.npy").read_bytes(), (tmp_path / "ok.npz").read_bytes()
    cases = {
        "text.npy": (b"1,2,3\n", "not a .npy file"),
        "empty.npy": (b"", "is empty"),
        "short.npy": (raw_npy[:200], "truncated"),
        "half.npz": (raw_npz[: len(raw_npz) // 2], "truncated or corrupt"),
        "empty.npz": (b"", "is empty"),
        "text.npz": (b"hello", "not a .npz"),
    }
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    cases["objects.npy"] = (None, "Python objects")
    for name, (_, why) in cases.items():
        with pytest.raises(CorruptFileError, match=why) as e:
            read_arrays(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and "allow_pickle" not in msg and "numpy.save" in msg
    with pytest.raises(CorruptFileError, match="delete it"):
        read_npz(tmp_path / "half.npz", hint="delete it")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_arrays(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        (tmp_path / "dir.npz").mkdir()
        read_arrays(tmp_path / "dir.npz")
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(ValueError, match="expected a .npz, .npy or .safetensors"):
        read_arrays(tmp_path / "x.csv")
