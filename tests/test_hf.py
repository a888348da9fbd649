"""Hugging Face: with llmcodec.hf enabled, `from_pretrained` reads encoded files and folders
(single file and sharded through the index, an unrelated container beside them) bit-exactly, and
safetensors' own loaders read .llmc files; disabled, everything is as before."""

import json

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch

import llmcodec
import llmcodec.hf
import llmcodec.torch
from llmcodec import files, folders

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _bert():
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=101, max_position_embeddings=64)
    return transformers.BertModel(cfg)


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=97, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def _same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert sa[k].contiguous().view(torch.uint8).numpy().tobytes() == \
            sb[k].contiguous().view(torch.uint8).numpy().tobytes(), k


def _outputs(model):
    ids = torch.arange(12).reshape(2, 6) % 90
    with torch.no_grad():
        out = model(input_ids=ids)
    first = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return first.float().numpy().tobytes()


@pytest.fixture(autouse=True)
def _disabled_after():
    yield
    llmcodec.hf.disable()


@pytest.mark.parametrize("make", [_bert, _llama], ids=["bert", "llama"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_from_pretrained_reads_encoded_folders_bit_exactly(tmp_path, make, dtype, sharded):
    torch.manual_seed(0)
    model = make().to(dtype).eval()
    model.save_pretrained(tmp_path / "orig", **({"max_shard_size": "30KB"} if sharded else {}))
    assert (tmp_path / "orig" / folders.INDEX_NAME).exists() == sharded
    enc = files.encode_file(tmp_path / "orig", tmp_path / "enc")
    llmcodec.save_file({"embeddings.word_embeddings.weight": np.zeros(3, np.float32)}, enc / "model-int8.llmc")
    with llmcodec.hf.enabled():
        got = type(model).from_pretrained(enc).eval()
    _same_state(got, model)
    # the same outputs as the model loaded from the original files (a model cast in memory differs
    # from a loaded one in buffers no checkpoint holds, such as rotary frequencies)
    assert _outputs(got) == _outputs(type(model).from_pretrained(tmp_path / "orig").eval())
    with pytest.raises(OSError):
        type(model).from_pretrained(enc)  # disabled again


def test_the_non_patching_form_and_plain_folders(tmp_path):
    model = _bert().eval()
    model.save_pretrained(tmp_path / "orig")
    enc = files.encode_file(tmp_path / "orig", tmp_path / "enc")
    before = safetensors.safe_open
    _same_state(llmcodec.hf.from_pretrained(transformers.AutoModel, enc), model)
    assert safetensors.safe_open is before
    llmcodec.hf.enable()
    llmcodec.hf.enable()  # idempotent
    _same_state(transformers.AutoModel.from_pretrained(tmp_path / "orig"), model)  # plain safetensors still work
    llmcodec.hf.disable()
    assert safetensors.safe_open is before and safetensors.torch.safe_open is before
    import transformers.modeling_utils as mu
    assert mu.safe_open is before


def test_safetensors_own_loaders_read_llmc_files(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    path = tmp_path / "x.llmc"
    llmcodec.torch.save_file(tensors, path, metadata={"format": "pt"})
    with llmcodec.hf.enabled():
        for got in (safetensors.torch.load_file(path), safetensors.torch.load(path.read_bytes())):
            assert got.keys() == tensors.keys()
            assert all(torch.equal(got[k].view(torch.uint8), tensors[k].view(torch.uint8)) for k in tensors)
        with safetensors.safe_open(str(tmp_path / "x.safetensors"), "pt") as f:  # the original's name
            assert f.keys() == ["a", "b"] and f.metadata() == {"format": "pt"}
            assert f.get_slice("a")[1:].tolist() == [[3.0, 4.0, 5.0]]


def test_an_index_decides_what_open_reads(tmp_path):
    src = tmp_path / "ck"
    src.mkdir()
    safetensors.numpy.save_file({"a": np.ones(3, np.float32)}, str(src / "m-1.safetensors"))
    safetensors.numpy.save_file({"b": np.ones(2, np.int8)}, str(src / "m-2.safetensors"))
    (src / folders.INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": {"a": "m-1.safetensors",
                                                                                     "b": "m-2.safetensors"}}))
    enc = files.encode_file(src, tmp_path / "enc")
    llmcodec.save_file({"a": np.zeros(1, np.float32)}, enc / "unrelated.llmc")
    with llmcodec.open(enc) as f:
        assert f.keys() == ["a", "b"] and f.get_tensor("a").tolist() == [1.0, 1.0, 1.0]
    assert sorted(llmcodec.load_file(enc)) == ["a", "b"]
    (enc / "m-2.llmc").unlink()
    with pytest.raises(llmcodec.FormatError, match="m-2"):
        llmcodec.open(enc)
    (enc / folders.INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(llmcodec.FormatError, match="outside"):
        llmcodec.open(enc)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_from_pretrained_reads_a_fine_tune_stored_against_its_base(tmp_path, sharded):
    torch.manual_seed(0)
    base = _llama().to(torch.bfloat16).eval()
    base.save_pretrained(tmp_path / "base", **({"max_shard_size": "30KB"} if sharded else {}))
    tuned = _llama().to(torch.bfloat16).eval()
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_((torch.randn_like(p.float()) * 1e-3).to(p.dtype))
    tuned.save_pretrained(tmp_path / "tuned", **({"max_shard_size": "30KB"} if sharded else {}))
    enc = files.encode_file(tmp_path / "tuned", tmp_path / "enc", base=tmp_path / "base")
    assert sum(f.stat().st_size for f in folders.shards(enc)) < 0.9 * sum(
        f.stat().st_size for f in (tmp_path / "tuned").glob("*.safetensors"))
    with pytest.raises(llmcodec.BaseError):
        llmcodec.hf.from_pretrained(type(tuned), enc)
    got = llmcodec.hf.from_pretrained(type(tuned), enc, base=tmp_path / "base").eval()
    _same_state(got, tuned)
    with llmcodec.hf.enabled(base=tmp_path / "base"):
        _same_state(transformers.AutoModelForCausalLM.from_pretrained(enc), tuned)
