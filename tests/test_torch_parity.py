"""`llmcodec.torch` behaves as `safetensors.torch` on the same models and data: the same names kept
and recorded by `save_model`, the same (missing, unexpected) and the same bytes after `load_model`
(casts included), the same refusals. Every comparison is of bytes."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import safetensors.torch as st  # noqa: E402
from safetensors import safe_open  # noqa: E402

import llmcodec  # noqa: E402
import llmcodec.torch as lt  # noqa: E402


def raw(t) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def state_bytes(model) -> dict[str, bytes]:
    return {k: raw(v) for k, v in model.state_dict().items()}


def bert(dtype=torch.float32):
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    return transformers.BertModel(config).to(dtype)


def llama(dtype=torch.float32):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=32, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).to(dtype)


class Tied(torch.nn.Module):
    """An encoder and decoder sharing one matrix, and a buffer."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6, dtype=dtype)
        self.head = torch.nn.Linear(6, 10, bias=False, dtype=dtype)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.arange(3, dtype=dtype))


MODELS = {"bert": bert, "llama": llama, "tied": Tied}


def made(kind: str, dtype, seed: int):
    torch.manual_seed(seed)
    return MODELS[kind](dtype)


def both_saved(model, tmp_path, metadata=None):
    st.save_model(model, str(tmp_path / "m.safetensors"), metadata=dict(metadata) if metadata else None)
    lt.save_model(model, tmp_path / "m.llmc", metadata=metadata)
    return tmp_path / "m.safetensors", tmp_path / "m.llmc"


# --- safe_open's keys(), offset_keys(), metadata() ---


def test_keys_are_sorted_offset_keys_in_file_order_metadata_none_when_empty(tmp_path):
    tensors = {"z": torch.zeros(2), "a": torch.ones(3), "m": torch.arange(4)}
    lt.save_file(tensors, tmp_path / "t.llmc")
    st.save_file(tensors, str(tmp_path / "t.safetensors"))
    with llmcodec.open(tmp_path / "t.llmc") as f, safe_open(str(tmp_path / "t.safetensors"), "pt") as g:
        assert f.keys() == g.keys() == ["a", "m", "z"]
        assert f.offset_keys() == ["z", "a", "m"]  # as given; safetensors orders its file by dtype, then name
        assert f.metadata() is None and g.metadata() is None
    lt.save_file(tensors, tmp_path / "m.llmc", {"k": "v"})
    with llmcodec.open(tmp_path / "m.llmc") as f:
        assert f.metadata() == {"k": "v"}


# --- save_file, save_model ---


@pytest.mark.parametrize("make", [
    lambda: (lambda a: {"x": a, "y": a})(torch.zeros(4)),
    lambda: (lambda a: {"x": a, "y": a[1:]})(torch.zeros(4)),
    lambda: (lambda a: {"x": a, "y": a.view(2, 2)})(torch.zeros(4)),
])
def test_save_file_refuses_tensors_sharing_memory_as_safetensors(tmp_path, make):
    with pytest.raises(RuntimeError, match="share memory"):
        st.save_file(make(), str(tmp_path / "t.safetensors"))
    with pytest.raises(llmcodec.InvalidArgumentError, match="share memory.*'x', 'y'.*save_model"):
        lt.save_file(make(), tmp_path / "t.llmc")
    with pytest.raises(llmcodec.InvalidArgumentError, match="save_model"):
        lt.save(make())
    assert not (tmp_path / "t.llmc").exists()


def test_save_file_takes_disjoint_parts_of_one_storage_as_safetensors(tmp_path):
    a = torch.arange(8, dtype=torch.float32)
    tensors = {"x": a[:4], "y": a[4:]}
    st.save_file(tensors, str(tmp_path / "t.safetensors"))
    lt.save_file(tensors, tmp_path / "t.llmc")
    back = lt.load_file(tmp_path / "t.llmc")
    assert raw(back["x"]) == raw(a[:4]) and raw(back["y"]) == raw(a[4:])


@pytest.mark.parametrize("kind", MODELS)
def test_save_model_keeps_and_records_the_names_safetensors_keeps(tmp_path, kind):
    model = made(kind, torch.float32, 0)
    ours_meta = {"user": "x"}
    a, b = both_saved(model, tmp_path, ours_meta)
    assert ours_meta == {"user": "x"}  # the caller's dict is not written into
    with safe_open(str(a), "pt") as g, llmcodec.open(b, "pt") as f:
        assert f.keys() == g.keys() and f.metadata() == g.metadata()
        for name in g.keys():
            assert raw(f.get_tensor(name)) == raw(g.get_tensor(name)), name
        if kind != "bert":  # the dropped name of the tied pair, recorded
            dropped = "model.embed_tokens.weight" if kind == "llama" else "head.weight"
            assert dropped not in f.keys() and f.metadata()[dropped] in f.keys()


def test_save_model_keeps_what_the_caller_wrote_in_the_metadata(tmp_path):
    lt.save_model(Tied(), tmp_path / "m.llmc", {"head.weight": "mine"})
    with llmcodec.open(tmp_path / "m.llmc") as f:
        assert f.keys() == ["embed.weight", "scale"] and f.metadata() == {"head.weight": "mine"}


# --- load_model ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", MODELS)
def test_load_model_gives_what_safetensors_gives(tmp_path, kind, dtype):
    a, b = both_saved(made(kind, dtype, 0), tmp_path)
    theirs, ours = made(kind, dtype, 1), made(kind, dtype, 1)
    got_st = st.load_model(theirs, str(a))
    got_lt = lt.load_model(ours, b)
    assert got_lt == ([], []) and (sorted(got_st[0]), got_st[1]) == ([], [])
    assert state_bytes(ours) == state_bytes(theirs) == state_bytes(made(kind, dtype, 0))
    if kind != "bert":
        assert ours.get_submodule("lm_head" if kind == "llama" else "head").weight.data_ptr() == \
            ours.get_submodule("model.embed_tokens" if kind == "llama" else "embed").weight.data_ptr()


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("file_dtype,model_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                                    (torch.float32, torch.float16)])
def test_load_model_casts_as_safetensors(tmp_path, kind, file_dtype, model_dtype):
    a, b = both_saved(made(kind, file_dtype, 0), tmp_path)
    theirs, ours = made(kind, model_dtype, 1), made(kind, model_dtype, 1)
    pointers = {k: v.data_ptr() for k, v in ours.state_dict().items()}
    st.load_model(theirs, str(a))
    assert lt.load_model(ours, b) == ([], [])
    assert state_bytes(ours) == state_bytes(theirs)
    assert {k: v.data_ptr() for k, v in ours.state_dict().items()} == pointers  # copied into, not replaced
    assert all(v.dtype == model_dtype for v in ours.state_dict().values() if v.is_floating_point())


def test_load_model_in_place_writes_the_model_memory(tmp_path):
    model = made("llama", torch.bfloat16, 0)
    lt.save_model(model, tmp_path / "m.llmc")
    dst = made("llama", torch.bfloat16, 1)
    pointers = {k: v.data_ptr() for k, v in dst.state_dict().items()}
    assert lt.load_model(dst, tmp_path / "m.llmc", threads=1) == ([], [])
    assert {k: v.data_ptr() for k, v in dst.state_dict().items()} == pointers
    assert state_bytes(dst) == state_bytes(model)


def test_load_model_takes_a_file_with_both_names_of_tied_weights(tmp_path):
    """A file written by save_file from a state dict with copies: the second name is unexpected."""
    src = made("tied", torch.float32, 0)
    tensors = {k: v.clone() for k, v in src.state_dict().items()}
    st.save_file(tensors, str(tmp_path / "m.safetensors"))
    lt.save_file(tensors, tmp_path / "m.llmc")
    theirs, ours = made("tied", torch.float32, 1), made("tied", torch.float32, 1)
    with pytest.raises(RuntimeError, match='Unexpected key.*"head.weight"'):
        st.load_model(theirs, str(tmp_path / "m.safetensors"))
    with pytest.raises(lt.ModelMismatchError, match='Unexpected key.*"head.weight"'):
        lt.load_model(ours, tmp_path / "m.llmc")
    assert state_bytes(ours) == state_bytes(theirs) == state_bytes(src)  # loaded, then refused, as safetensors
    missing, unexpected = st.load_model(made("tied", torch.float32, 1), str(tmp_path / "m.safetensors"), strict=False)
    got = lt.load_model(ours, tmp_path / "m.llmc", strict=False)
    assert got == (sorted(missing), unexpected) == ([], ["head.weight"])


def bert_file_with_position_ids(tmp_path):
    """What older sentence-transformers checkpoints hold: the position_ids buffer, which BertModel
    now registers as non-persistent (not in its state dict)."""
    model = made("bert", torch.float32, 0)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    assert "embeddings.position_ids" not in tensors
    tensors["embeddings.position_ids"] = torch.arange(32).unsqueeze(0)
    del tensors["pooler.dense.bias"]
    st.save_file(tensors, str(tmp_path / "old.safetensors"))
    lt.save_file(tensors, tmp_path / "old.llmc")
    return model


def test_strict_refuses_and_lists_the_same_names_as_safetensors(tmp_path):
    bert_file_with_position_ids(tmp_path)
    with pytest.raises(RuntimeError) as theirs:
        st.load_model(made("bert", torch.float32, 1), str(tmp_path / "old.safetensors"))
    with pytest.raises(lt.ModelMismatchError) as ours:
        lt.load_model(made("bert", torch.float32, 1), tmp_path / "old.llmc")
    assert isinstance(ours.value, RuntimeError) and isinstance(ours.value, llmcodec.InvalidArgumentError)
    assert str(ours.value).split("\n")[1:] == str(theirs.value).split("\n")[1:]  # the same lines, after the first
    assert 'Missing key(s) in state_dict: "pooler.dense.bias"' in str(ours.value)
    assert 'Unexpected key(s) in state_dict: "embeddings.position_ids"' in str(ours.value)


def test_not_strict_returns_the_same_names_and_bytes_as_safetensors(tmp_path):
    bert_file_with_position_ids(tmp_path)
    theirs, ours = made("bert", torch.float32, 1), made("bert", torch.float32, 1)
    missing, unexpected = st.load_model(theirs, str(tmp_path / "old.safetensors"), strict=False)
    assert lt.load_model(ours, tmp_path / "old.llmc", strict=False) == (sorted(missing), unexpected)
    assert unexpected == ["embeddings.position_ids"] and missing == {"pooler.dense.bias"}
    assert state_bytes(ours) == state_bytes(theirs)


def test_a_bert_saved_by_save_model_loads_strictly(tmp_path):
    """Non-persistent buffers (position_ids, token_type_ids) are in neither the file nor the state dict."""
    model = made("bert", torch.float32, 0)
    lt.save_model(model, tmp_path / "m.llmc")
    dst = made("bert", torch.float32, 1)
    assert lt.load_model(dst, tmp_path / "m.llmc", strict=True) == ([], [])
    assert state_bytes(dst) == state_bytes(model)
    ids = torch.tensor([[1, 5, 7, 2]])
    assert raw(dst.eval()(ids).last_hidden_state) == raw(model.eval()(ids).last_hidden_state)


def test_another_shape_is_refused_as_safetensors_refuses_it(tmp_path):
    lt.save_file({"weight": torch.zeros(3, 4), "bias": torch.ones(3)}, tmp_path / "m.llmc")
    st.save_file({"weight": torch.zeros(3, 4), "bias": torch.ones(3)}, str(tmp_path / "m.safetensors"))
    theirs, ours = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ours.load_state_dict(theirs.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch for weight") as a:
        st.load_model(theirs, str(tmp_path / "m.safetensors"))
    with pytest.raises(lt.ModelMismatchError, match="size mismatch for weight") as b:
        lt.load_model(ours, tmp_path / "m.llmc")
    assert str(a.value) in str(b.value)
    assert state_bytes(ours) == state_bytes(theirs)  # the bias is loaded in both


def test_a_model_with_load_hooks_loads_through_them(tmp_path):
    """A pre-hook renaming an old key: load_state_dict sees every decoded tensor, as in safetensors."""

    class Renamed(torch.nn.Linear):
        def __init__(self):
            super().__init__(4, 2)
            self._register_load_state_dict_pre_hook(self._rename)

        @staticmethod
        def _rename(state, prefix, *args):
            if prefix + "w" in state:
                state[prefix + "weight"] = state.pop(prefix + "w")

    tensors = {"w": torch.randn(2, 4), "bias": torch.randn(2)}
    st.save_file(tensors, str(tmp_path / "m.safetensors"))
    lt.save_file(tensors, tmp_path / "m.llmc")
    theirs, ours = Renamed(), Renamed()
    missing, unexpected = st.load_model(theirs, str(tmp_path / "m.safetensors"))
    assert lt.load_model(ours, tmp_path / "m.llmc") == (sorted(missing), unexpected) == ([], [])
    assert state_bytes(ours) == state_bytes(theirs) and raw(ours.weight) == raw(tensors["w"])


def test_meta_device_models_load_with_assign(tmp_path):
    src = made("llama", torch.bfloat16, 0)
    lt.save_model(src, tmp_path / "m.llmc")
    with torch.device("meta"):
        model = llama(torch.bfloat16)
    with pytest.raises(lt.ModelMismatchError, match="meta device.*assign=True"):
        lt.load_model(model, tmp_path / "m.llmc")
    assert lt.load_model(model, tmp_path / "m.llmc", assign=True) == ([], [])
    assert state_bytes(model) == state_bytes(src)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert not any(p.is_meta for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # assign keeps requires_grad


def test_assign_takes_the_file_tensors_as_they_are(tmp_path):
    src = made("tied", torch.float32, 0)
    lt.save_model(src, tmp_path / "m.llmc")
    dst = made("tied", torch.bfloat16, 1)
    assert lt.load_model(dst, tmp_path / "m.llmc", assign=True) == ([], [])
    assert dst.embed.weight.dtype == torch.float32 and dst.head.weight is dst.embed.weight
    assert state_bytes(dst) == state_bytes(src)


def test_device_names_where_tensors_are_decoded(tmp_path):
    src = made("tied", torch.float32, 0)
    lt.save_model(src, tmp_path / "m.llmc")
    for device in ["cpu", torch.device("cpu")]:
        dst = made("tied", torch.bfloat16, 1)
        assert lt.load_model(dst, tmp_path / "m.llmc", device=device) == ([], [])
    with pytest.raises(llmcodec.InvalidArgumentError, match="device"):
        lt.load_model(made("tied", torch.float32, 1), tmp_path / "m.llmc", device="nowhere")
    if not torch.cuda.is_available():
        dst = made("tied", torch.float32, 1)
        before = state_bytes(dst)
        with pytest.raises(llmcodec.InvalidArgumentError, match="cuda"):
            lt.load_model(dst, tmp_path / "m.llmc", device="cuda")
        assert state_bytes(dst) == before


def test_load_model_reads_a_sharded_folder(tmp_path):
    src = made("llama", torch.float32, 0)
    state = {k: v for k, v in src.state_dict().items() if k != "model.embed_tokens.weight"}
    folder = tmp_path / "enc"
    folder.mkdir()
    names = sorted(state)
    lt.save_file({k: state[k] for k in names[:5]}, folder / "a.llmc")
    lt.save_file({k: state[k] for k in names[5:]}, folder / "b.llmc")
    dst = made("llama", torch.float32, 1)
    assert lt.load_model(dst, folder) == ([], [])
    assert state_bytes(dst) == state_bytes(src)


# --- save / load on bytes ---


def test_save_and_load_round_trip_bytes_bit_exact():
    tensors = {"bf16": torch.randn(5, 3, dtype=torch.bfloat16), "f32": torch.randn(7),
               "f8": torch.randn(4).to(torch.float8_e5m2), "i64": torch.arange(-3, 3),
               "bool": torch.tensor([1, 0, 1]).bool(),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4, dtype=torch.float16)}
    data = lt.save(tensors, {"k": "v"})
    assert isinstance(data, bytes) and llmcodec.open(data).metadata() == {"k": "v"}
    for given in (data, bytearray(data), memoryview(data)):
        back = lt.load(given)
        assert list(back) == list(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and raw(back[k]) == raw(v), k


def test_load_refuses_what_is_not_bytes(tmp_path):
    lt.save_file({"w": torch.zeros(2)}, tmp_path / "w.llmc")
    for wrong in [str(tmp_path / "w.llmc"), tmp_path / "w.llmc", None, [1, 2]]:
        with pytest.raises(llmcodec.InvalidArgumentError, match="bytes"):
            lt.load(wrong)


def test_load_of_broken_bytes_raises_an_llmcodec_error():
    """Every truncation, and every byte changed, is refused, or (a byte no reader looks at) gives
    the same tensors."""
    tensors = {"w": torch.randn(6, 5, dtype=torch.bfloat16), "b": torch.arange(4, dtype=torch.int32)}
    data = lt.save(tensors, {"k": "v"})
    want = {k: raw(v) for k, v in tensors.items()}
    for end in range(len(data)):
        with pytest.raises(llmcodec.LlmcodecError):
            lt.load(data[:end])
    accepted = 0
    for i in range(len(data)):
        broken = bytearray(data)
        broken[i] ^= 0x5A
        try:
            back = lt.load(bytes(broken), threads=1)
        except llmcodec.LlmcodecError:
            continue
        accepted += 1
        assert {k: raw(v) for k, v in back.items()} == want, i
    assert accepted < len(data) // 10


def test_load_takes_max_memory():
    data = lt.save({"w": torch.zeros(1 << 16)})
    with pytest.raises(llmcodec.LimitExceededError, match="max_memory"):
        lt.load(data, max_memory=1 << 10)
    assert raw(lt.load(data, max_memory=1 << 22)["w"]) == bytes(4 << 16)


def test_hf_load_patch_reads_llmcodec_bytes():
    import llmcodec.hf

    data = lt.save({"w": torch.arange(3.0)})
    with llmcodec.hf.enabled():
        assert raw(st.load(data)["w"]) == raw(torch.arange(3.0))
        assert raw(st.load(st.save({"w": torch.ones(2)}))["w"]) == raw(torch.ones(2))


def test_no_warning_when_loading_a_real_model(tmp_path):
    lt.save_model(made("llama", torch.float32, 0), tmp_path / "m.llmc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lt.load_model(made("llama", torch.float32, 1), tmp_path / "m.llmc")
