"""Hook points beyond the residual stream (attn_out, mlp_out) and the special-token rule of mean
pooling, on tiny random GPT-2, Llama, Gemma-2, GPT-NeoX (parallel and sequential residual), BERT,
and the real MiniLM."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformers import AutoModel

import saelab.activations.cache as cache_module
from saelab.activations import (
    HOOK_KINDS,
    ActivationCache,
    extract,
    find_blocks,
    find_sublayer,
    hook_key,
    hook_name,
    key_of,
    load_model,
    mean_mask,
    parse_hook,
    parse_hook_name,
)
from saelab.errors import ConfigError, ModelError
from tiny_models import N_LAYERS, build_tiny_model, tiny_config, tiny_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "dog",
    "a big red dog runs over the small blue house under the old tree",
    "the quick zebra jumps",  # unknown words
]
ARCHS = ["gpt2", "llama", "gemma2", "neox", "neox_sequential", "bert"]
SUBLAYER_HOOKS = [hook_name(layer, kind) for layer in range(N_LAYERS) for kind in HOOK_KINDS]
# Test-side knowledge of each architecture (the library has no such table): the module whose
# output a test hook reads as the raw sublayer output, and the norm applied to it before the
# residual add (Gemma-2's post-norms), or None.
RAW = {
    "gpt2": {"attn_out": ("attn", None), "mlp_out": ("mlp", None)},
    "llama": {"attn_out": ("self_attn", None), "mlp_out": ("mlp", None)},
    "gemma2": {
        "attn_out": ("self_attn", "post_attention_layernorm"),
        "mlp_out": ("mlp", "post_feedforward_layernorm"),
    },
    "neox": {"attn_out": ("attention", None), "mlp_out": ("mlp", None)},
    "neox_sequential": {"attn_out": ("attention", None), "mlp_out": ("mlp", None)},
    "bert": {"attn_out": ("attention.output.dense", None), "mlp_out": ("output.dense", None)},
}


@pytest.fixture(scope="module", autouse=True)
def _memo_dir_and_threads(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SAELAB_CACHE", str(tmp_path_factory.mktemp("memo")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


def _build(folder: Path, arch: str) -> Path:
    if arch != "neox_sequential":
        return build_tiny_model(folder, arch)
    config = tiny_config("neox")
    config.use_parallel_residual = False
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tiny_tokenizer("neox").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def handles(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hook_models")
    return {arch: load_model(str(_build(root / arch, arch))) for arch in ARCHS}


def _module(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _first(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _plain_forward(handle, text: str, arch: str) -> dict:
    """One text alone, full forward, with the test's own hooks: the input of block 0, the output
    of every block, and each sublayer's raw output (then its post-norm when the model has one)."""
    blocks = find_blocks(handle.model)
    got: dict = {}
    hooks = [
        blocks[0].register_forward_pre_hook(
            lambda _m, a, k: got.__setitem__("input", (a[0] if a else k["hidden_states"])[0]),
            with_kwargs=True,
        )
    ]
    for layer, block in enumerate(blocks):
        hooks.append(
            block.register_forward_hook(
                lambda _m, _i, o, layer=layer: got.__setitem__(("resid_post", layer), _first(o)[0])
            )
        )
        for kind, (path, _) in RAW[arch].items():
            hooks.append(
                _module(block, path).register_forward_hook(
                    lambda _m, _i, o, key=(kind, layer): got.__setitem__(key, _first(o)[0])
                )
            )
    try:
        with torch.no_grad():
            handle.model(**handle.tokenizer(text, return_tensors="pt"))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for layer, block in enumerate(blocks):
            for kind, (_, norm) in RAW[arch].items():
                if norm is not None:
                    got[(kind, layer)] = _module(block, norm)(got[(kind, layer)])
    return got


# ---- names ----------------------------------------------------------------------------------


def test_hook_names_and_kinds():
    assert HOOK_KINDS == ("resid_post", "attn_out", "mlp_out")
    assert hook_name(3, "mlp_out") == "blocks.3.hook_mlp_out"
    assert parse_hook("blocks.12.hook_attn_out") == (12, "attn_out")
    assert parse_hook("blocks.0.hook_resid_post") == (0, "resid_post")
    assert parse_hook(4) == (4, "resid_post") and parse_hook(" 7 ") == (7, "resid_post")
    assert hook_key(2, "resid_post") == 2 and hook_key(2, "mlp_out") == "blocks.2.hook_mlp_out"
    assert key_of("blocks.2.hook_resid_post") == 2
    assert key_of("blocks.2.hook_attn_out") == "blocks.2.hook_attn_out"
    for bad in ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "-1", "", "layers.1.mlp", True]:
        with pytest.raises(ConfigError, match="cannot read a hook"):
            parse_hook(bad)
    with pytest.raises(ConfigError, match="hook kind"):
        hook_name(1, "resid_pre")
    # the layer-only parser keeps refusing other kinds: a layer never silently means an MLP hook
    with pytest.raises(ConfigError, match="cannot read a layer"):
        parse_hook_name("blocks.1.hook_mlp_out")


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(HOOK_KINDS))
def test_hook_roundtrip(layer, kind):
    assert parse_hook(hook_name(layer, kind)) == (layer, kind)
    assert key_of(hook_key(layer, kind)) == hook_key(layer, kind)


# ---- where the sublayers are ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_find_sublayer_paths(arch, handles):
    block = find_blocks(handles[arch].model)[1]
    for kind, (path, _) in RAW[arch].items():
        site = find_sublayer(block, kind)
        assert site.path == path
        assert site.source is _module(block, path)
    if arch == "gemma2":  # the post-norms are among the modules that may follow the output
        names = {id(m) for m in find_sublayer(block, "mlp_out").followers}
        assert id(block.post_feedforward_layernorm) in names


def test_find_sublayer_error_names_children():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixer = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)

    with pytest.raises(ModelError, match=r"attention of Block.*children are: mixer, norm"):
        find_sublayer(Block(), "attn_out")
    with pytest.raises(ModelError, match=r"MLP of Block.*named mlp"):
        find_sublayer(Block(), "mlp_out")


# ---- what the hooks read --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_sublayers_add_up_to_the_residual_stream(arch, handles):
    """Every captured attn_out / mlp_out equals the test's own read of the sublayer (after
    Gemma-2's post-norm), and the three hooks relate as the architecture says:
    pre-norm: resid_post[L] = resid_post[L-1] + attn_out[L] + mlp_out[L];
    BERT: resid_post[L] = LN_mlp(LN_attn(resid_post[L-1] + attn_out[L]) + mlp_out[L])."""
    handle = handles[arch]
    blocks = find_blocks(handle.model)
    got = extract(
        handle, TEXTS, SUBLAYER_HOOKS, "mean", batch_size=3, keep_tokens=True, progress=False
    )
    assert list(got) == [
        hook_key(layer, kind)
        for layer in range(N_LAYERS)
        for kind in ("attn_out", "mlp_out", "resid_post")
    ]
    offsets = got[0].offsets
    for i, text in enumerate(TEXTS):
        plain = _plain_forward(handle, text, arch)
        rows = slice(int(offsets[i]), int(offsets[i + 1]))
        previous = plain["input"]
        for layer in range(N_LAYERS):
            resid = got[layer].tokens[rows]
            attn = got[hook_name(layer, "attn_out")].tokens[rows]
            mlp = got[hook_name(layer, "mlp_out")].tokens[rows]
            torch.testing.assert_close(resid, plain[("resid_post", layer)], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(attn, plain[("attn_out", layer)], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(mlp, plain[("mlp_out", layer)], atol=1e-6, rtol=1e-5)
            with torch.no_grad():
                if arch == "bert":
                    block = blocks[layer]
                    mid = block.attention.output.LayerNorm(previous + attn)
                    expected = block.output.LayerNorm(mid + mlp)
                else:
                    expected = previous + attn + mlp
            torch.testing.assert_close(resid, expected, atol=2e-6, rtol=1e-5)
            # not vacuous: each sublayer moves the stream far more than the tolerance
            assert attn.abs().max() > 1e-3 and mlp.abs().max() > 1e-3
            previous = resid


def test_gemma2_hooks_read_after_the_post_norms(handles):
    """Gemma-2's attn_out / mlp_out are the post-norm outputs (TransformerLens, Gemma Scope), not
    the raw sublayer outputs, which differ from them."""
    handle = handles["gemma2"]
    block = find_blocks(handle.model)[1]
    raw: dict[str, torch.Tensor] = {}
    hooks = [
        block.self_attn.register_forward_hook(lambda _m, _i, o: raw.__setitem__("attn", o[0][0])),
        block.mlp.register_forward_hook(lambda _m, _i, o: raw.__setitem__("mlp", o[0])),
    ]
    try:
        with torch.no_grad():
            handle.model(**handle.tokenizer(TEXTS[0], return_tensors="pt"))
    finally:
        for h in hooks:
            h.remove()
    got = extract(
        handle,
        TEXTS[:1],
        ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"],
        "mean",
        keep_tokens=True,
        progress=False,
    )
    attn, mlp = got["blocks.1.hook_attn_out"].tokens, got["blocks.1.hook_mlp_out"].tokens
    with torch.no_grad():
        torch.testing.assert_close(attn, block.post_attention_layernorm(raw["attn"]))
        torch.testing.assert_close(mlp, block.post_feedforward_layernorm(raw["mlp"]))
    assert (attn - raw["attn"]).abs().max() > 0.1 and (mlp - raw["mlp"]).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_sublayer_hooks_stop_early_and_batch_alone_alike(arch, handles):
    """Asking for mlp_out of block 1 runs no later block; one hook alone, in batches, equals the
    same hook read together with others."""
    handle = handles[arch]
    calls = []
    last = find_blocks(handle.model)[N_LAYERS - 1]
    spy = last.register_forward_hook(lambda *_: calls.append(1))
    try:
        alone = extract(
            handle, TEXTS, ["blocks.1.hook_mlp_out"], "last", batch_size=2, progress=False
        )
    finally:
        spy.remove()
    assert calls == [] and list(alone) == ["blocks.1.hook_mlp_out"]
    together = extract(handle, TEXTS, [0, *SUBLAYER_HOOKS[:6]], "last", progress=False)
    torch.testing.assert_close(
        alone["blocks.1.hook_mlp_out"].pooled, together["blocks.1.hook_mlp_out"].pooled
    )
    with pytest.raises(ModelError, match=r"valid layers are 0\.\.2"):
        extract(handle, TEXTS, ["blocks.3.hook_attn_out"], "last", progress=False)


# ---- special tokens in mean pooling ---------------------------------------------------------


def test_mean_mask_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    special = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    keep, fallback = mean_mask(mask, special, include_special_tokens=False)
    assert keep.int().tolist() == [[0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert fallback.tolist() == [False, True, False]  # row 1 is all special: it keeps them
    keep, fallback = mean_mask(mask, special, include_special_tokens=True)
    assert torch.equal(keep, mask) and not fallback.any()


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_mean_pooling_leaves_out_special_tokens(arch, handles, caplog):
    handle = handles[arch]
    texts = [*TEXTS, ""] if arch == "bert" else TEXTS  # BERT: "" is [CLS] [SEP] only
    hooks = [1, "blocks.1.hook_mlp_out"]
    with caplog.at_level(logging.DEBUG, logger="saelab.activations.extract"):
        out = extract(handle, texts, hooks, "mean", batch_size=2, keep_tokens=True, progress=False)
    both = extract(
        handle, texts, hooks, "mean", batch_size=2, progress=False, include_special_tokens=True
    )
    n_special = int(out[1].special.sum())
    assert n_special == {"bert": 2 * len(texts), "llama": len(texts), "gpt2": 0}[arch]
    for key in (1, "blocks.1.hook_mlp_out"):
        acts = out[key]
        for i in range(len(texts)):
            rows = slice(int(acts.offsets[i]), int(acts.offsets[i + 1]))
            tokens, special = acts.tokens[rows], acts.special[rows]
            kept = tokens[~special] if (~special).any() else tokens
            torch.testing.assert_close(acts.pooled[i], kept.mean(0), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(both[key].pooled[i], tokens.mean(0), atol=1e-6, rtol=1e-5)
        assert torch.isfinite(acts.pooled).all()
        if arch == "gpt2":  # nothing special: the option changes nothing
            torch.testing.assert_close(acts.pooled, both[key].pooled, atol=0, rtol=0)
        else:
            assert (acts.pooled[0] - both[key].pooled[0]).abs().max() > 1e-4
    fell_back = [r for r in caplog.records if "only of special tokens" in r.getMessage()]
    if arch == "bert":
        assert fell_back and "rows [4]" in fell_back[0].getMessage()
        assert fell_back[0].levelno == logging.DEBUG
    else:
        assert not fell_back
    # last-token pooling reads the last real token whatever it is (the paper's rule)
    last = extract(handle, texts, [1], "last", keep_tokens=True, progress=False)[1]
    torch.testing.assert_close(last.pooled, last.tokens[last.offsets[1:] - 1])


# ---- the cache keys the hook kind and the special-token choice ------------------------------


def test_cache_keys_hook_kind_and_special_tokens(tmp_path, handles, monkeypatch):
    handle = handles["neox"]
    calls: list[list] = []
    real = cache_module.extract
    monkeypatch.setattr(
        cache_module,
        "extract",
        lambda h, t, layers, *a, **k: calls.append(list(layers)) or real(h, t, layers, *a, **k),
    )
    cache = ActivationCache(tmp_path)
    hooks = [1, "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    assert not cache.has(handle, TEXTS, hooks, "mean")
    first = cache.get_or_extract(handle, TEXTS, hooks, "mean", progress=False)
    assert calls == [["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", 1]]  # forward order
    files = sorted((tmp_path / "activations" / "neox").glob("*.safetensors"))
    assert len(files) == 3  # one file per hook kind
    assert cache.has(handle, TEXTS, hooks, "mean")
    again = cache.get_or_extract(handle, TEXTS, list(reversed(hooks)), "mean", progress=False)
    assert len(calls) == 1 and list(again) == list(first)
    for key in first:
        assert torch.equal(first[key].pooled, again[key].pooled)
    assert not torch.equal(first[1].pooled, first["blocks.1.hook_mlp_out"].pooled)
    # the other choice of special tokens is another file, for every hook
    assert not cache.has(handle, TEXTS, hooks, "mean", include_special_tokens=True)
    cache.get_or_extract(
        handle,
        TEXTS,
        ["blocks.1.hook_mlp_out"],
        "mean",
        include_special_tokens=True,
        progress=False,
    )
    assert calls[-1] == ["blocks.1.hook_mlp_out"]
    parts = cache.key_parts(
        handle,
        cache_module.hash_texts(TEXTS),
        len(TEXTS),
        "blocks.1.hook_mlp_out",
        "mean",
        128,
        "left",
        False,
        True,
    )
    assert (parts["layer"], parts["hook"], parts["special_tokens"]) == (
        1,
        "blocks.1.hook_mlp_out",
        "include",
    )
    assert cache.path_for(handle, parts).is_file()


# ---- the real MiniLM ------------------------------------------------------------------------


@pytest.mark.integration
def test_minilm_hooks_and_mean_pooling():
    handle = load_model()
    texts = ["Margaret of Clisson", "Q: What is 2+2?\nA: 4", "A short headline about Iran"]
    layer = 3
    hooks = [layer - 1, layer, hook_name(layer, "attn_out"), hook_name(layer, "mlp_out")]
    got = extract(handle, texts, hooks, "mean", keep_tokens=True, progress=False)
    block = find_blocks(handle.model)[layer]
    with torch.no_grad():
        mid = block.attention.output.LayerNorm(got[layer - 1].tokens + got[hooks[2]].tokens)
        expected = block.output.LayerNorm(mid + got[hooks[3]].tokens)
    torch.testing.assert_close(got[layer].tokens, expected, atol=2e-5, rtol=1e-4)
    # mean pooling leaves out [CLS] and [SEP]: the mean of the hidden states between them
    enc = handle.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = handle.model(**enc, output_hidden_states=True).hidden_states[layer + 1]
    for i in range(len(texts)):
        n = int(enc["attention_mask"][i].sum())
        torch.testing.assert_close(
            got[layer].pooled[i], hidden[i, 1 : n - 1].mean(0), atol=1e-5, rtol=1e-4
        )
    assert int(got[layer].special.sum()) == 2 * len(texts)


# ---- the run: an SAE's own hook, the special-token choice in keys and rows ------------------


def test_sae_hook_names_from_config_and_metadata():
    from types import SimpleNamespace

    from saelab.config import RunConfig
    from saelab.pipeline.run import sae_hook_names

    def sae(hook: str | None):
        return SimpleNamespace(cfg=SimpleNamespace(metadata={"hook_name": hook} if hook else {}))

    cfg = RunConfig.model_validate(
        {
            "layers": [1, 2],
            "saes": [
                {"id": "mlp", "path": "x", "layer": 1},
                {"id": "none", "path": "x", "layer": 2},
                {"id": "forced", "path": "x", "layer": 2, "hook_kind": "attn_out"},
                {"id": "z", "path": "x", "layer": 1},
            ],
        }
    )
    saes = {
        ("mlp", 1): sae("blocks.1.hook_mlp_out"),
        ("none", 2): sae(None),
        ("forced", 2): sae("blocks.2.hook_resid_post"),
    }
    assert sae_hook_names(cfg, saes) == {
        ("mlp", 1): "blocks.1.hook_mlp_out",
        ("none", 2): "blocks.2.hook_resid_post",  # names no hook: the residual stream
        ("forced", 2): "blocks.2.hook_attn_out",  # the config's hook_kind wins
    }
    with pytest.raises(ConfigError, match=r"attn\.hook_z.*saes\.z\.hook_kind"):
        sae_hook_names(cfg, {**saes, ("z", 1): sae("blocks.1.attn.hook_z")})
    trained = RunConfig.model_validate({"saes": [{"id": "t", "train": {}, "hook_kind": "mlp_out"}]})
    with pytest.raises(ConfigError, match=r"saes\.t\.hook_kind"):
        sae_hook_names(trained, {})


@pytest.mark.parametrize("special_tokens", ["exclude", "include"])
def test_run_reads_the_sae_hook_and_records_special_tokens(tmp_path, special_tokens):
    """A loaded SAE that names blocks.1.hook_mlp_out is probed on the MLP output (its unit says
    so), baselines on the residual stream; both mean-pool with the run's special-token choice,
    which is in the activation key and in every result row."""
    from saelab.config import RunConfig
    from saelab.pipeline.inputs import DatasetInputs
    from saelab.pipeline.run import plan_run, prepare_run, run_pipeline
    from saelab.sae import SAEConfig, build_sae, encode_rows, save_sae
    from tiny_models import HIDDEN, write_word_dataset

    model = build_tiny_model(tmp_path / "bert", "bert")
    write_word_dataset(tmp_path / "words.csv", 130, seed=1)
    sae_cfg = SAEConfig(
        d_in=HIDDEN,
        d_sae=2 * HIDDEN,
        architecture="standard",
        metadata={"hook_name": "blocks.1.hook_mlp_out", "model_name": "tiny"},
    )
    save_sae(build_sae(sae_cfg, seed=3), tmp_path / "mlp_sae")
    cfg = RunConfig.model_validate(
        {
            "name": "hooks",
            "cache_dir": str(tmp_path / "cache"),
            "model": {"name": str(model), "batch_size": 16},
            "layers": [1],
            "pooling_special_tokens": special_tokens,
            "data": {"datasets": [str(tmp_path / "words.csv")], "max_train": 16},
            "saes": [{"id": "mlp", "path": str(tmp_path / "mlp_sae"), "layer": 1}],
            "probes": {"ks": [1, 2], "baselines": ["logreg"]},
            "executor": "serial",
        }
    )
    include = special_tokens == "include"
    run = prepare_run(cfg, progress=False)
    assert run.pooling == "mean" and run.include_special_tokens is include
    assert run.sae_hooks == {("mlp", 1): "blocks.1.hook_mlp_out"}
    assert run.hooks == [1, "blocks.1.hook_mlp_out"]
    assert run.activation_key["special_tokens"] == special_tokens
    units = plan_run(run)
    sae_unit = next(u for u in units if u.spec.kind == "sae")
    base_unit = next(u for u in units if u.spec.kind == "baseline")
    assert sae_unit.spec.hook_name == "blocks.1.hook_mlp_out"
    assert base_unit.spec.hook_name == "blocks.1.hook_resid_post"
    plan = sae_unit.plan
    inputs = DatasetInputs(plan, units, run.read_activations, run.encode, run.skipped)
    texts = [plan.dataset.prompts[i] for i in plan.rows]
    direct = extract(
        run.handle,
        texts,
        [1, "blocks.1.hook_mlp_out"],
        "mean",
        keep_tokens=True,
        progress=False,
        include_special_tokens=include,
    )
    torch.testing.assert_close(
        torch.from_numpy(inputs.features(base_unit)), direct[1].pooled, atol=1e-6, rtol=1e-5
    )
    expected = encode_rows(
        run.saes[("mlp", 1)],
        direct["blocks.1.hook_mlp_out"],
        "mean",
        "pool_codes",
        include_special_tokens=include,
    )
    got = inputs.features(sae_unit)
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-5
    # the residual stream's codes are something else: the unit really reads the MLP output
    resid = encode_rows(run.saes[("mlp", 1)], direct[1], "mean", "pool_codes")
    assert abs(got - resid).max() > 1e-3
    res = run_pipeline(cfg, tmp_path / f"run_{special_tokens}", progress=False).results
    assert (res.pooling_special_tokens == special_tokens).all()
    assert set(res[res.method == "sae"].hook_name) == {"blocks.1.hook_mlp_out"}
    assert set(res[res.method != "sae"].hook_name) == {"blocks.1.hook_resid_post"}
