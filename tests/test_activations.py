"""saelab.activations on tiny random models (GPT-2, Llama, Gemma-2, GPT-NeoX, BERT) and MiniLM."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import saelab.activations.cache as cache_module
import saelab.activations.model as model_module
from saelab.activations import (
    ActivationCache,
    LayerActivations,
    extract,
    find_blocks,
    hook_name,
    load_model,
    parse_hook_name,
    pool_last,
    pool_mean,
    resolve_max_length,
)
from saelab.activations.extract import tokenize
from saelab.activations.model import resolve_dtype
from saelab.errors import ConfigError, DatasetError, ModelError
from tiny_models import (
    HIDDEN,
    N_LAYERS,
    SPECIALS,
    VOCAB,
    build_tiny_model,
)

TEXTS = [
    "the cat sat on the mat",
    "dog",
    "a big red dog runs over the small blue house under the old tree",
    "bird sings",
    "the quick zebra jumps",  # "quick" and "zebra" are unknown words
    "green tree house",
    "new fast cat jumps over slow old dog and the loud bird",
]
ARCHS = ["gpt2", "llama", "gemma2", "neox", "bert"]
# Where each architecture keeps its blocks, to check find_blocks (which knows no such table).
BLOCK_PATHS = {
    "gpt2": "h",
    "llama": "layers",
    "gemma2": "layers",
    "neox": "layers",
    "bert": "encoder.layer",
}


@pytest.fixture(scope="module", autouse=True)
def _memo_dir_and_threads(tmp_path_factory: pytest.TempPathFactory):
    """Keep the weights-hash memo out of the user's cache dir; one torch thread (the models are
    tiny, and spinning thread pools are slow on a busy machine)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SAELAB_CACHE", str(tmp_path_factory.mktemp("memo")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def handles(folders: dict[str, Path]):
    return {arch: load_model(str(folders[arch])) for arch in ARCHS}


def _alone_hidden(handle, text: str, layer: int, max_length: int | None = None) -> torch.Tensor:
    """``hidden_states[layer + 1]`` of a full forward on one text, no padding: ``[S, d]``."""
    tok = handle.tokenizer
    tok.truncation_side = "left"
    try:
        enc = tok(
            [text], return_tensors="pt", truncation=max_length is not None, max_length=max_length
        )
    finally:
        tok.truncation_side = "right"
    with torch.no_grad():
        out = handle.model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            output_hidden_states=True,
        )
    return out.hidden_states[layer + 1][0]


# ---- hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_find_blocks_and_handle(arch, handles, folders):
    handle = handles[arch]
    expected = handle.model
    for part in BLOCK_PATHS[arch].split("."):
        expected = getattr(expected, part)
    assert find_blocks(handle.model) is expected
    assert handle.n_layers == N_LAYERS
    assert handle.d_model == HIDDEN
    assert handle.is_decoder is (arch != "bert")
    assert handle.dtype == torch.float32 and handle.device.type == "cpu"
    assert handle.name == arch
    assert handle.model_id.startswith(f"{arch}@sha256:")
    assert handle.tokenizer.pad_token_id is not None  # eos used as pad when missing
    assert handle.hook_name(2) == "blocks.2.hook_resid_post"


def test_hook_names():
    assert hook_name(0) == "blocks.0.hook_resid_post"
    assert parse_hook_name("blocks.12.hook_resid_post") == 12
    assert parse_hook_name("7") == 7
    assert parse_hook_name(" 3 ") == 3
    for bad in ["blocks.x.hook_resid_post", "blocks.1.hook_mlp_out", "-1", "", "hook_embed"]:
        with pytest.raises(ConfigError, match="cannot read a layer"):
            parse_hook_name(bad)
    with pytest.raises(ConfigError):
        hook_name(-1)


@given(st.integers(min_value=0, max_value=10**6))
def test_hook_name_roundtrip(layer):
    assert parse_hook_name(hook_name(layer)) == layer
    assert parse_hook_name(str(layer)) == layer


# ---- pooling --------------------------------------------------------------------------------


def test_pool_helpers_left_and_right_masks():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert torch.equal(pool_last(hidden, right), hidden[[0, 1], [1, 3]])
    assert torch.equal(pool_last(hidden, left), hidden[[0, 1], [3, 3]])
    single = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]])
    assert torch.equal(pool_last(hidden, single), hidden[[0, 1], [0, 3]])
    assert torch.allclose(pool_mean(hidden, right)[0], hidden[0, :2].mean(0))
    assert torch.allclose(pool_mean(hidden, left)[1], hidden[1, 1:].mean(0))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_last_pooling_any_padding_side(arch, side, handles):
    handle = handles[arch]
    handle.tokenizer.padding_side = side
    try:
        batched = extract(handle, TEXTS, [1], "last", batch_size=4, progress=False)[1].pooled
        alone = torch.cat(
            [extract(handle, [t], [1], "last", progress=False)[1].pooled for t in TEXTS]
        )
    finally:
        handle.tokenizer.padding_side = "right"
    reference = torch.stack([_alone_hidden(handle, t, 1)[-1] for t in TEXTS])
    assert batched.shape == (len(TEXTS), HIDDEN) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-4)
    # Different texts give different vectors (the check above is not vacuous).
    assert (batched[0] - batched[1]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_mean_pooling(arch, handles):
    handle = handles[arch]
    # The last block is excluded: Llama's last hidden_states entry has the final norm applied.
    got = extract(handle, TEXTS, [0, 1], "mean", batch_size=3, progress=False)
    both = extract(
        handle, TEXTS, [0, 1], "mean", batch_size=3, progress=False, include_special_tokens=True
    )
    # By default the special tokens ([CLS] first and [SEP] last; Llama's <s> first) are left out.
    inner = slice(1, -1) if arch == "bert" else slice(1, None)
    for layer in (0, 1):
        alone = [_alone_hidden(handle, t, layer) for t in TEXTS]
        reference = torch.stack([h[inner].mean(0) for h in alone])
        torch.testing.assert_close(got[layer].pooled, reference, atol=1e-5, rtol=1e-4)
        reference = torch.stack([h.mean(0) for h in alone])
        torch.testing.assert_close(both[layer].pooled, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_early_stop_equals_full_forward(arch, handles):
    """Stopping after block 1 equals hidden_states[2] of a full padded forward; block 2 not run."""
    handle = handles[arch]
    calls = []
    last_block = find_blocks(handle.model)[N_LAYERS - 1]
    spy = last_block.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = extract(
            handle,
            TEXTS,
            [1],
            "mean",
            batch_size=len(TEXTS),
            progress=False,
            include_special_tokens=True,
        )[1]
    finally:
        spy.remove()
    assert calls == []
    enc = handle.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = handle.model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            output_hidden_states=True,
        ).hidden_states[2]
    torch.testing.assert_close(
        got.pooled, pool_mean(hidden, enc["attention_mask"]), atol=1e-5, rtol=1e-4
    )
    # The hooks are gone: a later full forward runs every block.
    with torch.no_grad():
        handle.model(input_ids=enc["input_ids"][:1])
    assert calls == []


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_keep_tokens(arch, handles):
    handle = handles[arch]
    got = extract(handle, TEXTS, [0, 1], "mean", batch_size=3, keep_tokens=True, progress=False)
    ids = [handle.tokenizer(t)["input_ids"] for t in TEXTS]
    lengths = torch.tensor([len(x) for x in ids])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    special_ids = {VOCAB[s] for s in SPECIALS} - {VOCAB["[UNK]"]}  # unknown words are text
    expected_special = torch.tensor([i in special_ids for row in ids for i in row])
    for layer in (0, 1):
        acts = got[layer]
        assert torch.equal(acts.offsets, offsets)
        assert acts.tokens.shape == (int(lengths.sum()), HIDDEN)
        assert torch.equal(acts.special, expected_special)
        for i, text in enumerate(TEXTS):
            rows = acts.tokens[offsets[i] : offsets[i + 1]]
            torch.testing.assert_close(
                rows, _alone_hidden(handle, text, layer), atol=1e-5, rtol=1e-4
            )
            kept = rows[~acts.special[offsets[i] : offsets[i + 1]]]  # every text has a word
            torch.testing.assert_close(acts.pooled[i], kept.mean(0), atol=1e-5, rtol=1e-4)
    if arch == "bert":  # [CLS] first and [SEP] last of every text
        first, last = offsets[:-1], offsets[1:] - 1
        assert got[0].special[first].all() and got[0].special[last].all()
        assert int(got[0].special.sum()) == 2 * len(TEXTS)
    elif arch == "llama":  # <s> only
        assert int(got[0].special.sum()) == len(TEXTS)
    else:  # GPT-2 style adds no special token
        assert not got[0].special.any()
    # select_rows re-packs tokens in the order asked.
    sub = got[1].select_rows([2, 0])
    assert torch.equal(sub.tokens[: lengths[2]], got[1].tokens[offsets[2] : offsets[3]])
    assert torch.equal(sub.tokens[lengths[2] :], got[1].tokens[: offsets[1]])
    assert sub.offsets.tolist() == [0, int(lengths[2]), int(lengths[2] + lengths[0])]


def test_truncation_sides(handles):
    handle = handles["bert"]
    text = "the cat sat on the mat"
    left = tokenize(handle.tokenizer, [text], 5, "left")
    right = tokenize(handle.tokenizer, [text], 5, "right")
    v = VOCAB
    assert left.ids.tolist() == [v["[CLS]"], v["on"], v["the"], v["mat"], v["[SEP]"]]
    assert right.ids.tolist() == [v["[CLS]"], v["the"], v["cat"], v["sat"], v["[SEP]"]]
    assert handle.tokenizer.truncation_side == "right"  # restored
    got = extract(handle, [text], [1], "last", max_length=5, progress=False)[1].pooled
    torch.testing.assert_close(got[0], _alone_hidden(handle, text, 1, max_length=5)[-1])


def test_max_length_resolution(handles):
    assert resolve_max_length(handles["bert"], None) == 64  # config max positions
    assert resolve_max_length(handles["llama"], None) == 128
    assert resolve_max_length(handles["llama"], 16) == 16
    with pytest.raises(ModelError, match="exceeds"):
        resolve_max_length(handles["bert"], 65)
    with pytest.raises(ConfigError):
        resolve_max_length(handles["bert"], 0)


def test_extract_input_errors(handles):
    handle = handles["gpt2"]
    with pytest.raises(ModelError, match=r"valid layers are 0\.\.2"):
        extract(handle, TEXTS, [3], "last", progress=False)
    with pytest.raises(ConfigError, match="pooling"):
        extract(handle, TEXTS, [0], "max", progress=False)
    with pytest.raises(DatasetError, match=r"rows \[1\]"):  # GPT-2 style: "" has no token
        extract(handle, ["dog", ""], [0], "last", progress=False)
    with pytest.raises(DatasetError, match="row 1 is int"):
        extract(handle, ["dog", 5], [0], "last", progress=False)
    empty = extract(handle, [], [0, 1], "mean", progress=False)
    assert empty[0].pooled.shape == (0, HIDDEN)


def test_bfloat16_results_are_float32(folders):
    handle = load_model(str(folders["llama"]), dtype="bfloat16")
    assert handle.dtype == torch.bfloat16
    out = extract(handle, TEXTS[:3], [1], "mean", progress=False)[1].pooled
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))


# ---- model loading --------------------------------------------------------------------------


def test_model_errors(tmp_path, handles):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"empty has no config\.json"):
        load_model(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"cannot read .*broken/config\.json"):
        load_model(str(broken))
    model = handles["llama"].model
    model.config.num_hidden_layers = 5
    try:
        with pytest.raises(ModelError, match="no transformer block list found"):
            find_blocks(model)
    finally:
        model.config.num_hidden_layers = N_LAYERS
    with pytest.raises(ModelError, match=r"valid layers are 0\.\.2"):
        handles["llama"].hook_name(3)


def test_model_id_memo_and_change(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "memo"))
    folder = build_tiny_model(tmp_path / "m", "neox", seed=0)
    calls = []
    real_hash = model_module.hash_file
    monkeypatch.setattr(model_module, "hash_file", lambda p: calls.append(p) or real_hash(p))
    first = load_model(str(folder)).model_id
    n_files = len(calls)
    assert n_files >= 3  # weights, config, tokenizer files
    assert json.loads((tmp_path / "memo" / "file_hashes.json").read_text())
    assert load_model(str(folder)).model_id == first
    assert len(calls) == n_files  # memoised: nothing hashed again
    build_tiny_model(folder, "neox", seed=1)  # new weights in the same folder
    second = load_model(str(folder)).model_id
    assert second != first and second.startswith("m@sha256:")


# ---- cache ----------------------------------------------------------------------------------


@pytest.fixture
def spy_extract(monkeypatch):
    """Record the layers of every extract() call the cache makes."""
    calls: list[list[int]] = []
    real = cache_module.extract

    def spy(handle, texts, layers, *args, **kwargs):
        calls.append(list(layers))
        return real(handle, texts, layers, *args, **kwargs)

    monkeypatch.setattr(cache_module, "extract", spy)
    return calls


def test_cache_hit_and_partial_miss(tmp_path, handles, spy_extract):
    handle = handles["llama"]
    cache = ActivationCache(tmp_path)
    first = cache.get_or_extract(handle, TEXTS, [0, 1], "last", progress=False)
    assert spy_extract == [[0, 1]]
    assert (cache.stats.hits, cache.stats.misses) == (0, 2)
    files = sorted((tmp_path / "activations" / "llama").glob("*.safetensors"))
    assert len(files) == 2
    second = cache.get_or_extract(handle, TEXTS, [1, 0], "last", progress=False)
    assert spy_extract == [[0, 1]]  # nothing computed
    assert (cache.stats.hits, cache.stats.misses) == (2, 2)
    for layer in (0, 1):
        assert torch.equal(first[layer].pooled, second[layer].pooled)
    third = cache.get_or_extract(handle, TEXTS, [0, 1, 2], "last", progress=False)
    assert spy_extract == [[0, 1], [2]]  # only the missing layer
    assert list(third) == [0, 1, 2]
    direct = extract(handle, TEXTS, [2], "last", progress=False)[2].pooled
    torch.testing.assert_close(third[2].pooled, direct)


def test_cache_has_checks_every_layer_without_reading_tensors(tmp_path, handles, spy_extract):
    handle = handles["llama"]
    cache = ActivationCache(tmp_path)
    assert not cache.has(handle, TEXTS, [0, 1], "last")
    cache.get_or_extract(handle, TEXTS, [0], "last", progress=False)
    assert cache.has(handle, TEXTS, [0], "last")
    assert not cache.has(handle, TEXTS, [0, 1], "last")  # layer 1 missing
    assert not cache.has(handle, TEXTS[:-1], [0], "last")  # other texts
    assert not cache.has(handle, TEXTS, [0], "last", keep_tokens=True)
    for path in (tmp_path / "activations").rglob("*.safetensors"):
        path.write_bytes(b"not safetensors")
    assert not cache.has(handle, TEXTS, [0], "last")
    assert spy_extract == [[0]]  # has() never extracts


def test_cache_invalidation(tmp_path, handles, spy_extract):
    handle = handles["bert"]
    cache = ActivationCache(tmp_path)
    cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)
    variants = [
        {"texts": TEXTS[:-1]},
        {"texts": [*TEXTS[:-1], TEXTS[-1] + " dog"]},
        {"layers": [0]},
        {"pooling": "last"},
        {"max_length": 8},
        {"truncation_side": "right"},
        {"keep_tokens": True},
        {"include_special_tokens": True},
    ]
    for change in variants:
        args = {"texts": TEXTS, "layers": [1], "pooling": "mean"} | change
        before = cache.stats.misses
        cache.get_or_extract(handle, progress=False, **args)
        assert cache.stats.misses == before + 1, change
    assert len(spy_extract) == 1 + len(variants)
    # max_length=None resolves to the model limit: the same file as the explicit value.
    cache.get_or_extract(handle, TEXTS, [1], "mean", max_length=64, progress=False)
    assert len(spy_extract) == 1 + len(variants)


def test_cache_keep_tokens_roundtrip(tmp_path, handles):
    handle = handles["gpt2"]
    cache = ActivationCache(tmp_path)
    a = cache.get_or_extract(handle, TEXTS, [2], "last", keep_tokens=True, progress=False)[2]
    b = cache.get_or_extract(handle, TEXTS, [2], "last", keep_tokens=True, progress=False)[2]
    assert cache.stats.hits == 1
    assert isinstance(b, LayerActivations) and b.has_tokens
    for field in ("pooled", "tokens", "offsets", "special"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def _damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])


def _damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in (-1, -9, -100):  # tensor bytes are at the end of the file
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_damage_truncate, "unreadable"), (_damage_flip, "digest"), (_damage_header, "unreadable")],
)
def test_cache_corruption_recovered(tmp_path, handles, spy_extract, caplog, damage, reason):
    handle = handles["neox"]
    cache = ActivationCache(tmp_path)
    good = cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)[1].pooled
    (path,) = (tmp_path / "activations" / "neox").glob("*.safetensors")
    damage(path)
    with caplog.at_level(logging.WARNING, logger="saelab.activations.cache"):
        again = cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)[1].pooled
    assert any(str(path) in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert cache.stats.corrupt == 1 and len(spy_extract) == 2
    torch.testing.assert_close(again, good)
    # The rewritten file is good again.
    cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)
    assert len(spy_extract) == 2 and cache.stats.corrupt == 1


def test_cache_key_mismatch_recovered(tmp_path, handles, caplog):
    handle = handles["neox"]
    cache = ActivationCache(tmp_path)
    cache.get_or_extract(handle, TEXTS, [0], "mean", progress=False)
    cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)
    key0 = cache.key_parts(
        handle, cache_module.hash_texts(TEXTS), len(TEXTS), 0, "mean", 128, "left", False
    )
    key1 = {**key0, "layer": 1, "hook": hook_name(1)}
    path0, path1 = cache.path_for(handle, key0), cache.path_for(handle, key1)
    path1.write_bytes(path0.read_bytes())  # layer 0's file under layer 1's name
    with caplog.at_level(logging.WARNING, logger="saelab.activations.cache"):
        got = cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)[1].pooled
    assert any("key parts" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(got, extract(handle, TEXTS, [1], "mean", progress=False)[1].pooled)


# ---- the real MiniLM ------------------------------------------------------------------------


@pytest.mark.integration
def test_minilm_matches_plain_forward():
    handle = load_model()  # DEFAULT_MODEL resolves to the bundled folder
    assert (handle.d_model, handle.n_layers, handle.is_decoder) == (384, 6, False)
    assert handle.model_id.startswith("all-MiniLM-L6-v2@sha256:")
    texts = ["Margaret of Clisson", "Q: What is 2+2?\nA: 4", "A short headline about Iran"]
    # sentence-transformers' mean pooling averages [CLS] and [SEP] too
    got = extract(handle, texts, [5], "mean", progress=False, include_special_tokens=True)[5].pooled
    enc = handle.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = handle.model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    reference = (last * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-4)


def test_cache_wrong_rows_recovered(tmp_path, handles, caplog):
    """A file whose header matches but whose tensors have the wrong number of rows is redone."""
    handle = handles["bert"]
    cache = ActivationCache(tmp_path)
    parts = cache.key_parts(
        handle, cache_module.hash_texts(TEXTS), len(TEXTS), 1, "mean", 64, "left", False
    )
    path = cache.path_for(handle, parts)
    cache._write(path, parts, LayerActivations(pooled=torch.zeros(3, HIDDEN)))
    with caplog.at_level(logging.WARNING, logger="saelab.activations.cache"):
        got = cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)[1].pooled
    assert any(str(path) in r.getMessage() and "(7, 32)" in r.getMessage() for r in caplog.records)
    assert got.shape == (len(TEXTS), HIDDEN) and cache.stats.corrupt == 1
    assert cache.get_or_extract(handle, TEXTS, [1], "mean", progress=False)[1].pooled.equal(got)
