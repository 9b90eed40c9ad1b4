"""The GGUF reader against gguf's own writer and reader, and against malformed files."""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGUFValueType as V

from pyggml.backends.quants import dequantize
from pyggml.graph.dtypes import DType, is_quantized
from pyggml.model.gguf_file import GGUFError, GGUFFile

UNICODE = "héllo ✓ 世界"


# ---- a tiny llama written by gguf.GGUFWriter, read back and compared with gguf.GGUFReader

def quantizable_types() -> list[DType]:
    """The block types gguf.quants.quantize can produce."""
    kinds = []
    for dtype in DType:
        if dtype in (DType.F32, DType.F16) or dtype not in GGML_QUANT_SIZES:
            continue
        try:
            gguf.quants.quantize(np.zeros((1, GGML_QUANT_SIZES[dtype][0]), np.float32), dtype)
        except (NotImplementedError, ValueError):
            continue
        kinds.append(dtype)
    return kinds


def k_quant_rows(model: GGUFFile, dtype: DType, rows: int) -> np.ndarray:
    """The first rows of a reference model's tensor of this type (real blocks, as gguf cannot make them)."""
    info = next(i for i in model.tensors.values() if i.dtype == dtype and len(i.shape) == 2)
    return np.array(model.tensor_data(info.name)[:rows])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, gemma3_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, DType]]]:
    """A small llama GGUF with every kind of metadata value and tensor type; returns (path, written tensors)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -30000)
    writer.add_uint32("test.u32", 4_000_000_000)
    writer.add_int32("test.i32", -2_000_000_000)
    writer.add_uint64("test.u64", 2**63 + 5)
    writer.add_int64("test.i64", -(2**62))
    writer.add_float32("test.f32", 0.1)
    writer.add_float64("test.f64", 0.1)
    writer.add_bool("test.bool", True)
    writer.add_string("test.str", UNICODE)
    writer.add_array("test.strs", ["a", UNICODE, " ", "<0x0A>"])
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_array("test.floats", [0.5, -1.25])
    writer.add_array("test.bools", [True, False, True])
    writer.add_key_value("test.u64s", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
    writer.add_key_value("test.u8s", [0, 255], V.ARRAY, sub_type=V.UINT8)
    writer.add_array("test.nested", [[1, 2], [3]])

    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[np.ndarray, DType]] = {
        "f32.weight": (rng.standard_normal((3, 64)).astype(np.float32), DType.F32),
        "f16.weight": (rng.standard_normal((2, 3, 64)).astype(np.float16), DType.F16),
        "i32.weight": (rng.integers(-9, 9, (2, 2, 2, 8)).astype(np.int32), DType.I32),
        "f64.weight": (rng.standard_normal(5), DType.F64),
    }
    values = rng.standard_normal((4, 256)).astype(np.float32)
    for dtype in quantizable_types():
        tensors[f"{dtype.name.lower()}.weight"] = (gguf.quants.quantize(values, dtype), dtype)
    reference = GGUFFile(gemma3_path)
    for dtype in (DType.Q4_K, DType.Q6_K, DType.Q5_0, DType.Q8_0):
        tensors[f"real_{dtype.name.lower()}.weight"] = (k_quant_rows(reference, dtype, 3), dtype)
    for name, (array, dtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=dtype if array.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, tensors


def test_metadata_matches_gguf_reader(tiny) -> None:
    path, _ = tiny
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    fields = {name: field for name, field in theirs.fields.items() if not name.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, field in fields.items():
        if field.types[:2] == [V.ARRAY, V.ARRAY]:
            continue  # gguf's contents() flattens nested arrays; see test_metadata_python_types
        value = ours.metadata[key]
        expected = field.contents()
        if isinstance(value, np.ndarray):
            assert value.tolist() == expected, key
            assert value.dtype == np.dtype(gguf.GGUFReader.gguf_scalar_to_np[field.types[-1]]), key
        else:
            assert value == expected, key
    assert ours.version == 3 and ours.architecture == "llama" and ours.alignment == 32


def test_metadata_python_types(tiny) -> None:
    meta = GGUFFile(tiny[0]).metadata
    assert meta["test.u64"] == 2**63 + 5 and type(meta["test.u64"]) is int
    assert meta["test.i8"] == -100 and type(meta["test.i8"]) is int
    assert type(meta["test.f32"]) is float and meta["test.f32"] == float(np.float32(0.1))
    assert meta["test.f64"] == 0.1
    assert meta["test.bool"] is True
    assert meta["test.str"] == UNICODE
    assert meta["test.strs"] == ["a", UNICODE, " ", "<0x0A>"]
    assert meta["test.ints"].dtype == np.int32 and meta["test.floats"].dtype == np.float32
    assert meta["test.bools"].tolist() == [True, False, True]
    assert meta["test.u64s"].dtype == np.uint64 and meta["test.u64s"].tolist() == [1, 2**40]
    assert [a.tolist() for a in meta["test.nested"]] == [[1, 2], [3]]


def test_tensors_match_gguf_reader(tiny) -> None:
    path, written = tiny
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    assert list(ours.tensors) == [t.name for t in theirs.tensors] == list(written)
    for tensor in theirs.tensors:
        info = ours.tensors[tensor.name]
        assert info.shape == tuple(int(n) for n in reversed(tensor.shape))  # NumPy order
        assert info.dtype == tensor.tensor_type
        assert info.offset == tensor.data_offset
        assert info.nbytes == tensor.n_bytes
        data = ours.tensor_data(tensor.name)
        assert data.tobytes() == np.asarray(tensor.data).tobytes()
        assert not data.flags.writeable


def test_tensor_data_shapes_and_values(tiny) -> None:
    path, written = tiny
    ours = GGUFFile(path)
    for name, (array, dtype) in written.items():
        info, data = ours.tensors[name], ours.tensor_data(name)
        if is_quantized(dtype):  # (rows..., bytes per row)
            block_size, type_size = GGML_QUANT_SIZES[dtype]
            assert data.shape == array.shape and data.dtype == np.uint8
            assert info.shape == array.shape[:-1] + (array.shape[-1] // type_size * block_size,)
            expected = gguf.quants.dequantize(array, dtype)
        elif dtype == DType.BF16:  # written as bytes, read as uint16 elements
            assert data.dtype == np.uint16 and data.tobytes() == array.tobytes()
            expected = gguf.quants.dequantize(array, dtype)
        else:
            assert data.shape == array.shape == info.shape and data.dtype == array.dtype
            expected = array.astype(np.float32)
        np.testing.assert_array_equal(dequantize(data, dtype, info.shape), expected.reshape(info.shape))


def test_reference_models_open(smollm2_path: Path, gemma3_path: Path) -> None:
    smollm2, gemma3 = GGUFFile(smollm2_path), GGUFFile(gemma3_path)
    assert smollm2.architecture == "llama" and gemma3.architecture == "gemma3"
    assert len(smollm2.tensors) == 272 and len(gemma3.tensors) == 236
    assert smollm2.tensors["token_embd.weight"].shape == (49152, 576)
    assert smollm2.tensors["token_embd.weight"].dtype == DType.Q8_0
    assert gemma3.tensors["token_embd.weight"].shape == (262144, 640)
    assert gemma3.tensor_data("token_embd.weight").shape == (262144, 680)
    tokens, scores = gemma3.metadata["tokenizer.ggml.tokens"], gemma3.metadata["tokenizer.ggml.scores"]
    assert len(tokens) == 262144 and tokens[2] == "<bos>"
    assert scores.dtype == np.float32 and scores.shape == (262144,)
    assert gemma3.metadata["tokenizer.ggml.token_type"].dtype == np.int32
    assert smollm2.metadata["tokenizer.ggml.merges"][0] == "Ġ t"


# ---- malformed files, built byte by byte

def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tensor_info(name: str, ne: list[int], type_id: int, offset: int) -> bytes:
    return gstr(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)


ARCH_KV = kv("general.architecture", V.STRING, gstr("llama"))
TOKENS_KV = kv("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 3) + gstr("a") + gstr("bc") + gstr(""))
A_INFO = tensor_info("a.weight", [8, 4], DType.F32, 0)     # 128 bytes
B_INFO = tensor_info("b.weight", [32, 2], DType.Q8_0, 128)  # 68 bytes


def build(kvs: list[bytes] = (ARCH_KV, TOKENS_KV), infos: list[bytes] = (A_INFO, B_INFO), *,
          magic: bytes = b"GGUF", version: int = 3, n_tensors: int | None = None, n_kv: int | None = None,
          data: bytes = bytes(range(196))) -> bytes:
    """A GGUF file: header, key/values, tensor infos, padding to 32, then data."""
    header = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head = header + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % 32) + data


def write(tmp_path: Path, content: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def assert_gguf_error(path: Path, match: str) -> None:
    with pytest.raises(GGUFError, match=match) as info:
        GGUFFile(path)
    assert str(path) in str(info.value)


def test_hand_built_file_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, build())
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    assert ours.metadata["tokenizer.ggml.tokens"] == theirs.fields["tokenizer.ggml.tokens"].contents() == ["a", "bc", ""]
    assert [t.name for t in theirs.tensors] == list(ours.tensors)
    assert ours.tensors["b.weight"].shape == (2, 32)
    assert ours.tensor_data("a.weight").tobytes() == bytes(range(128))


def test_truncated_anywhere(tmp_path: Path) -> None:
    content = build()
    data_end = len(content)  # the last tensor ends exactly at the end of the file
    for size in list(range(0, data_end - 196 + 8)) + [data_end - 100, data_end - 1]:
        assert_gguf_error(write(tmp_path, content[:size]), "truncated|empty|past the end")


@pytest.mark.parametrize("kwargs, match", [
    ({"magic": b"GGML"}, "not a GGUF file"),
    ({"version": 99}, "unsupported GGUF version 99"),
    ({"version": 1}, "unsupported GGUF version 1"),
    ({"version": 3 << 24}, "big-endian"),
    ({"n_tensors": 2**62}, "absurd tensor count"),
    ({"n_kv": 2**60}, "absurd metadata count"),
    ({"kvs": [struct.pack("<Q", 2**62) + b"key"]}, "truncated"),
    ({"kvs": [kv("k", V.STRING, struct.pack("<Q", 2**40) + b"abc")]}, "truncated"),
    ({"kvs": [kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 2**40))]}, "absurd string count"),
    ({"kvs": [kv("k", V.ARRAY, struct.pack("<IQ", V.UINT32, 2**61))]}, "absurd element count"),
    ({"kvs": [kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 2) + struct.pack("<Q", 2**50) + bytes(8))]},
     "absurd string length"),
    ({"kvs": [kv("k", 13, b"")]}, "unknown value type 13"),
    ({"kvs": [kv("k", V.ARRAY, struct.pack("<IQ", 99, 1))]}, "unknown value type 99"),
    ({"kvs": [ARCH_KV, ARCH_KV]}, "duplicate metadata key"),
    ({"kvs": [kv("general.alignment", V.UINT32, struct.pack("<I", 3))]}, "power of two"),
    ({"kvs": [kv("general.alignment", V.STRING, gstr("32"))]}, "power of two"),
    ({"infos": [tensor_info("a.weight", [8, 4], 99, 0)]}, "unknown type id 99"),
    ({"infos": [tensor_info("a.weight", [8, 4], 4, 0)]}, "unknown type id 4"),
    ({"infos": [tensor_info("a.weight", [1, 1, 1, 1, 8], DType.F32, 0)]}, "5 dimensions"),
    ({"infos": [A_INFO, tensor_info("b.weight", [32, 2], DType.Q8_0, 2**40)]}, "past the end"),
    ({"infos": [A_INFO, tensor_info("b.weight", [32, 2], DType.Q8_0, 100)]}, "alignment"),
    ({"infos": [A_INFO, tensor_info("b.weight", [32, 2], DType.Q8_0, 96)]}, "overlap"),
    ({"infos": [A_INFO, tensor_info("a.weight", [32, 2], DType.Q8_0, 128)]}, "duplicate tensor name"),
    ({"infos": [A_INFO, tensor_info("b.weight", [32, 3], DType.Q8_0, 128)]}, "past the end"),
    ({"infos": [A_INFO, tensor_info("b.weight", [33, 2], DType.Q8_0, 128)]}, "block size"),
    ({"infos": [tensor_info("a.weight", [2**40, 2**40], DType.F32, 0)]}, "past the end"),
])
def test_malformed(tmp_path: Path, kwargs: dict, match: str) -> None:
    assert_gguf_error(write(tmp_path, build(**kwargs)), match)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert_gguf_error(tmp_path / "missing.gguf", "cannot open")
    assert_gguf_error(tmp_path, "cannot open")


def test_missing_architecture_and_tensor(tmp_path: Path) -> None:
    model = GGUFFile(write(tmp_path, build(kvs=[TOKENS_KV])))
    with pytest.raises(GGUFError, match="general.architecture"):
        model.architecture
    with pytest.raises(GGUFError, match="no tensor named 'c.weight'"):
        model.tensor_data("c.weight")


def test_undecodable_strings_keep_their_bytes(tmp_path: Path) -> None:
    token = b"\xff\xfeok"
    content = build(kvs=[kv("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 1) + gstr(token))])
    tokens = GGUFFile(write(tmp_path, content)).metadata["tokenizer.ggml.tokens"]
    assert tokens[0].encode("utf-8", "surrogateescape") == token


def test_empty_arrays_and_zero_tensors(tmp_path: Path) -> None:
    content = build(kvs=[kv("e", V.ARRAY, struct.pack("<IQ", V.INT32, 0)), kv("s", V.ARRAY, struct.pack("<IQ", V.STRING, 0))],
                    infos=[], data=b"")
    model = GGUFFile(write(tmp_path, content))
    assert model.metadata["e"].dtype == np.int32 and model.metadata["e"].size == 0
    assert model.metadata["s"] == [] and model.tensors == {}
