"""Splicing at hook points (``replace_hook``) and downstream fidelity (``splice_fidelity``) on tiny
random GPT-2, Llama, Gemma-2, GPT-NeoX (causal-LM folders) and BERT, against hand computations:
one text at a time, the module's forward monkeypatched, cross-entropy by
``torch.nn.functional.cross_entropy``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saelab.activations import HOOK_KINDS, find_blocks, hook_name, load_model
from saelab.activations.extract import special_token_ids
from saelab.activations.hooks import capture_hooks, hook_key, replace_hook
from saelab.errors import ConfigError
from saelab.evals.splice import reconstruct, splice_fidelity
from saelab.sae.base import SAEConfig, build_sae
from tiny_models import (
    HIDDEN,
    N_LAYERS,
    build_tiny_causal_lm,
    build_tiny_model,
)

ARCHS = ["gpt2", "llama", "gemma2", "neox", "bert"]
CAUSAL = ["gpt2", "llama", "gemma2", "neox"]
TEXTS = [
    "the cat sat on the mat",
    "dog",
    "a big red dog runs over the small blue house under the old tree",
    "bird sings loud",
    "the quick zebra jumps",  # unknown words
]
# Test-side knowledge: the module whose output is each hook's value (block-relative path).
END = {
    "gpt2": {"attn_out": "attn", "mlp_out": "mlp"},
    "llama": {"attn_out": "self_attn", "mlp_out": "mlp"},
    "gemma2": {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"},
    "neox": {"attn_out": "attention", "mlp_out": "mlp"},
    "bert": {"attn_out": "attention.output.dense", "mlp_out": "output.dense"},
}


@pytest.fixture(scope="module", autouse=True)
def _hash_memo_in_tmp_one_thread(tmp_path_factory: pytest.TempPathFactory):
    """load_model memoises file hashes under $SAELAB_CACHE: keep it out of the user's cache.
    Tiny models run fastest on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAELAB_CACHE", str(tmp_path_factory.mktemp("memo")))
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _build_causal(folder: Path, arch: str) -> Path:
    return build_tiny_causal_lm(folder, arch, seed=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("splice_models")
    out = {arch: _build_causal(root / arch, arch) for arch in CAUSAL}
    out["bert"] = build_tiny_model(root / "bert", "bert")
    out["gpt2_base"] = build_tiny_model(root / "gpt2_base", "gpt2")
    return out


@pytest.fixture(scope="module")
def handles(folders):
    return {arch: load_model(str(folders[arch]), lm_head=True) for arch in ARCHS}


def _module(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _cfg(architecture: str, d_sae: int, **arch) -> SAEConfig:
    return SAEConfig(d_in=HIDDEN, d_sae=d_sae, architecture=architecture, arch=arch)


def identity_sae():
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    sae = build_sae(_cfg("standard", 2 * HIDDEN))
    eye = torch.eye(HIDDEN)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def zero_sae():
    sae = build_sae(_cfg("standard", 16))
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def random_sae(seed: int = 3):
    sae = build_sae(_cfg("topk", 64, k=4), seed=seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        sae.b_dec.copy_(0.1 * torch.randn(HIDDEN, generator=gen))
        sae.W_dec.mul_(2.0)
    return sae


def _batch(handle, texts):
    tok = handle.tokenizer
    ids = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    real = torch.tensor([[j < len(i) for j in range(width)] for i in ids])
    return {"input_ids": input_ids, "attention_mask": real.long()}, real


def _out(handle, output) -> torch.Tensor:
    return output.logits if handle.has_lm_head else output.last_hidden_state


# ---- replace_hook ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_replacement_keeps_outputs_and_sees_the_captured_value(arch, handles):
    handle = handles[arch]
    blocks = find_blocks(handle.model)
    inputs, real = _batch(handle, TEXTS)
    positions = real & (torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) < 0.7)
    with torch.no_grad():
        for layer in range(N_LAYERS):
            for kind in HOOK_KINDS:
                name = hook_name(layer, kind)
                with capture_hooks(blocks, [name], stop_early=False) as got:
                    clean = _out(handle, handle.model(**inputs))
                captured = got[hook_key(layer, kind)][positions]
                seen: list[torch.Tensor] = []

                def identity(rows: torch.Tensor, seen=seen) -> torch.Tensor:
                    seen.append(rows.clone())
                    return rows

                with replace_hook(blocks, name, identity, positions) as rep:
                    first = _out(handle, handle.model(**inputs))
                    torch.testing.assert_close(seen[-1], captured, rtol=0, atol=0)
                    seen.clear()
                    second = _out(handle, handle.model(**inputs))
                assert rep.passes == 2
                assert len(seen) == 1, (name, len(seen))  # chain learned: fn runs once per pass
                torch.testing.assert_close(seen[0], captured, rtol=0, atol=0)
                torch.testing.assert_close(first, clean, rtol=0, atol=0)
                torch.testing.assert_close(second, clean, rtol=0, atol=0)
                # hooks are gone: a plain forward is clean
                torch.testing.assert_close(
                    _out(handle, handle.model(**inputs)), clean, rtol=0, atol=0
                )


def _patch_output(monkeypatch, module: nn.Module, edit) -> None:
    """Monkeypatch ``module.forward`` so that its hidden state (first element) goes through edit."""
    forward = module.forward

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return edit(out)
        return (edit(out[0]), *out[1:])

    monkeypatch.setattr(module, "forward", patched)


def _end_module(handle, arch: str, layer: int, kind: str) -> nn.Module:
    block = find_blocks(handle.model)[layer]
    return block if kind == "resid_post" else _module(block, END[arch][kind])


@pytest.mark.parametrize("arch", ARCHS)
def test_replacement_equals_editing_the_module_output(arch, handles, monkeypatch):
    handle = handles[arch]
    inputs, real = _batch(handle, TEXTS)
    positions = real.clone()
    positions[:, 0] = False

    def affine(rows: torch.Tensor) -> torch.Tensor:
        return 2.0 * rows + 0.5

    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[positions] = affine(h[positions])
        return h

    layer = 1
    for kind in HOOK_KINDS:
        with torch.no_grad():
            # a fresh context: the first pass must already replace the right value
            with replace_hook(find_blocks(handle.model), hook_name(layer, kind), affine, positions):
                spliced = _out(handle, handle.model(**inputs))
            with monkeypatch.context() as mp:
                _patch_output(mp, _end_module(handle, arch, layer, kind), edit)
                expected = _out(handle, handle.model(**inputs))
            clean = _out(handle, handle.model(**inputs))
        torch.testing.assert_close(spliced, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(spliced, clean, atol=1e-3)


def test_replace_hook_checks_shapes(handles):
    handle = handles["llama"]
    blocks = find_blocks(handle.model)
    inputs, real = _batch(handle, TEXTS)
    with torch.no_grad():
        with (
            pytest.raises(ConfigError, match="positions to replace"),
            replace_hook(blocks, "blocks.0.hook_mlp_out", torch.zeros_like, real[:, :2]),
        ):
            handle.model(**inputs)
        with (
            pytest.raises(ConfigError, match=r"replacement at blocks\.0\.hook_resid_post"),
            replace_hook(blocks, 0, lambda r: r[:, :3], real),
        ):
            handle.model(**inputs)


# ---- load_model(lm_head=True) ---------------------------------------------------------------


def test_lm_head_loads_only_where_the_checkpoint_has_one(folders, handles):
    for arch in CAUSAL:
        assert handles[arch].has_lm_head
        assert handles[arch].model.get_output_embeddings() is not None
        assert handles[arch].n_layers == N_LAYERS
    assert not handles["bert"].has_lm_head
    base = load_model(str(folders["gpt2_base"]), lm_head=True)
    assert not base.has_lm_head and not hasattr(base.model, "lm_head")
    plain = load_model(str(folders["llama"]))
    assert not plain.has_lm_head and not hasattr(plain.model, "lm_head")
    assert plain.model_id == handles["llama"].model_id  # same files, same activations


# ---- splice_fidelity: causal LMs ------------------------------------------------------------


def _three_runs(handle, module, sae, ids, keep, monkeypatch) -> dict:
    """Model outputs of one text ``ids`` ``[1, S]``: clean, and with ``module``'s output replaced
    at ``keep`` by the SAE's forward and by zeros (its forward monkeypatched)."""
    outputs = {}
    for name, fn in (("clean", None), ("sae", sae), ("zero", torch.zeros_like)):

        def edit(h, fn=fn):
            h = h.clone()
            h[keep] = fn(h[keep])
            return h

        with torch.no_grad(), monkeypatch.context() as mp:
            if fn is not None:
                _patch_output(mp, module, edit)
            outputs[name] = handle.model(input_ids=ids)
    return outputs


def _by_hand_lm(handle, arch, sae, hook, texts, monkeypatch, include_special=False) -> dict:
    """Each text alone; the hook's module output edited by a monkeypatched forward; CE by
    F.cross_entropy over positions t whose input token is kept and t < len - 1; KL by the formula."""
    layer, kind = handle.check_hook(hook)
    module = _end_module(handle, arch, layer, kind)
    specials = special_token_ids(handle.tokenizer)
    sums = dict.fromkeys(("clean", "sae", "zero", "kl_sae", "kl_zero"), 0.0)
    n_ce = n_kl = 0
    for text in texts:
        ids = torch.tensor([handle.tokenizer(text)["input_ids"]])
        keep = torch.ones_like(ids, dtype=torch.bool)
        if not include_special:
            keep &= ~torch.isin(ids, specials)
        outputs = _three_runs(handle, module, sae, ids, keep, monkeypatch)
        logits = {name: out.logits[0].double() for name, out in outputs.items()}
        ce_pos = keep[0, :-1]
        targets = ids[0, 1:][ce_pos]
        n_ce += int(ce_pos.sum())
        n_kl += int(keep.sum())
        lp_clean = F.log_softmax(logits["clean"], -1)[keep[0]]
        for name in ("clean", "sae", "zero"):
            sums[name] += float(
                F.cross_entropy(logits[name][:-1][ce_pos], targets, reduction="sum")
            )
            if name != "clean":
                lp = F.log_softmax(logits[name], -1)[keep[0]]
                sums[f"kl_{name}"] += float((lp_clean.exp() * (lp_clean - lp)).sum())
    ce = {k: sums[k] / n_ce for k in ("clean", "sae", "zero")}
    kl_sae, kl_zero = sums["kl_sae"] / n_kl, sums["kl_zero"] / n_kl
    return {
        "ce_loss_without_sae": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_with_ablation": ce["zero"],
        "ce_loss_score": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "kl_div_with_sae": kl_sae,
        "kl_div_with_ablation": kl_zero,
        "kl_div_score": (kl_zero - kl_sae) / kl_zero,
        "n_tokens": n_kl,
        "n_ce_tokens": n_ce,
    }


@pytest.mark.parametrize(
    ("arch", "hook"),
    [
        ("llama", "blocks.1.hook_resid_post"),
        ("gemma2", "blocks.1.hook_mlp_out"),
        ("gpt2", "blocks.1.hook_resid_post"),
        ("neox", "blocks.2.hook_attn_out"),
    ],
)
def test_lm_metrics_match_a_hand_computation(arch, hook, handles, monkeypatch):
    handle, sae = handles[arch], random_sae()
    got = splice_fidelity(handle, sae, hook, TEXTS, batch_size=2)
    want = _by_hand_lm(handle, arch, sae, hook, TEXTS, monkeypatch)
    assert set(got) == {*want, "n_texts"}
    for key, value in want.items():
        # float32 logits: means agree to ~1e-5; a score divides two small differences of them
        rel = 1e-3 if key.endswith("_score") else 1e-4
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-7), key
    assert got["n_texts"] == len(TEXTS)
    assert got["kl_div_with_sae"] > 1e-6  # the splice changed the output


@pytest.mark.parametrize("arch", CAUSAL)
def test_identity_and_zero_saes_give_scores_one_and_zero(arch, handles):
    handle = handles[arch]
    for hook in ("blocks.1.hook_resid_post", "blocks.1.hook_attn_out"):
        ident = splice_fidelity(handle, identity_sae(), hook, TEXTS, batch_size=3)
        assert ident["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
        assert ident["ce_loss_with_sae"] == pytest.approx(ident["ce_loss_without_sae"], abs=1e-6)
        assert ident["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-7)
        assert ident["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
        zero = splice_fidelity(handle, zero_sae(), hook, TEXTS, batch_size=3)
        assert zero["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
        assert zero["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
        assert zero["kl_div_with_ablation"] > 0


def test_special_tokens_are_neither_spliced_nor_averaged(handles, monkeypatch):
    handle = handles["llama"]  # "<s> w1 ... wn": BOS at position 0
    lengths = [len(handle.tokenizer(t)["input_ids"]) for t in TEXTS]
    hook, sae = "blocks.0.hook_resid_post", random_sae(5)
    got = splice_fidelity(handle, sae, hook, TEXTS)
    assert got["n_tokens"] == sum(n - 1 for n in lengths)  # BOS left out
    assert got["n_ce_tokens"] == sum(n - 2 for n in lengths)  # ... and the last token
    # the ablation too replaces only the non-special positions (the hand computation leaves BOS)
    want = _by_hand_lm(handle, "llama", sae, hook, TEXTS, monkeypatch)
    assert got["ce_loss_with_ablation"] == pytest.approx(want["ce_loss_with_ablation"], rel=1e-4)
    every = splice_fidelity(handle, sae, hook, TEXTS, include_special_tokens=True)
    assert every["n_tokens"] == sum(lengths)
    assert every["n_ce_tokens"] == sum(n - 1 for n in lengths)
    want = _by_hand_lm(handle, "llama", sae, hook, TEXTS, monkeypatch, include_special=True)
    for key in ("ce_loss_with_sae", "ce_loss_with_ablation", "kl_div_with_sae"):
        assert every[key] == pytest.approx(want[key], rel=1e-4), key


def test_absent_metrics_are_absent(handles, folders):
    gpt2 = handles["gpt2"]  # no BOS: "dog" is one token, nothing to predict inside the text
    got = splice_fidelity(gpt2, random_sae(), 1, ["dog", "cat"])
    assert got["n_ce_tokens"] == 0 and got["n_tokens"] == 2
    assert not any(k.startswith("ce_loss") for k in got)
    assert "kl_div_score" in got
    ident = splice_fidelity(gpt2, identity_sae(), 1, ["the cat sat"])
    zero_ident = splice_fidelity(gpt2, zero_sae(), 1, ["the cat sat"])
    assert "ce_loss_score" in ident and "ce_loss_score" in zero_ident
    assert splice_fidelity(gpt2, random_sae(), 1, []) == {
        "n_tokens": 0,
        "n_texts": 0,
        "n_ce_tokens": 0,
    }
    base = load_model(str(folders["gpt2_base"]))  # a decoder without its head: pooled cosine
    got = splice_fidelity(base, random_sae(), 1, TEXTS)
    assert "pooled_cossim_sae" in got and not any(k.startswith(("ce_", "kl_")) for k in got)
    with pytest.raises(ConfigError, match="d_in"):
        splice_fidelity(
            gpt2, build_sae(SAEConfig(d_in=8, d_sae=4, architecture="standard")), 1, TEXTS
        )
    with pytest.raises(ConfigError, match="batch_size"):
        splice_fidelity(gpt2, random_sae(), 1, TEXTS, batch_size=0)


# ---- splice_fidelity: encoders --------------------------------------------------------------


def _by_hand_pooled(handle, sae, hook, texts, monkeypatch) -> dict:
    layer, kind = handle.check_hook(hook)
    module = _end_module(handle, "bert", layer, kind)
    specials = special_token_ids(handle.tokenizer)
    cos = {"sae": [], "zero": []}
    n_tokens = 0
    for text in texts:
        ids = torch.tensor([handle.tokenizer(text)["input_ids"]])
        keep = ~torch.isin(ids, specials)
        if not keep.any():
            continue
        n_tokens += int(keep.sum())
        outputs = _three_runs(handle, module, sae, ids, keep, monkeypatch)
        emb = {name: out.last_hidden_state[0].double().mean(0) for name, out in outputs.items()}
        for name in ("sae", "zero"):
            cos[name].append(float(F.cosine_similarity(emb["clean"], emb[name], dim=0)))
    c_sae, c_zero = (sum(v) / len(v) for v in (cos["sae"], cos["zero"]))
    return {
        "pooled_cossim_sae": c_sae,
        "pooled_cossim_zero": c_zero,
        "pooled_cossim_score": (c_sae - c_zero) / (1 - c_zero),
        "n_tokens": n_tokens,
        "n_texts": len(cos["sae"]),
    }


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_attn_out"])
def test_encoder_pooled_cosine_matches_a_hand_computation(hook, handles, monkeypatch):
    handle = handles["bert"]
    texts = [*TEXTS, ""]  # "" is [CLS] [SEP] only: nothing spliced, left out of the mean
    sae = random_sae()
    got = splice_fidelity(handle, sae, hook, texts, batch_size=2)
    want = _by_hand_pooled(handle, sae, hook, texts, monkeypatch)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["n_texts"] == len(TEXTS)
    assert got["n_tokens"] == sum(len(handle.tokenizer(t)["input_ids"]) - 2 for t in texts)
    ident = splice_fidelity(handle, identity_sae(), hook, texts)
    assert ident["pooled_cossim_sae"] == pytest.approx(1.0, abs=1e-6)
    assert ident["pooled_cossim_score"] == pytest.approx(1.0, abs=1e-6)
    zero = splice_fidelity(handle, zero_sae(), hook, texts)
    assert zero["pooled_cossim_score"] == pytest.approx(0.0, abs=1e-6)


def test_sequence_level_sae_is_encoded_text_by_text():
    sae = build_sae(_cfg("ihtp", 48, k=2), seed=2)
    x = torch.randn(9, HIDDEN, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([0, 4, 4, 9])
    got = reconstruct(sae, x, offsets)
    for a, b in ((0, 4), (4, 9)):
        _, state = sae.preprocess(x[a:b])
        f = sae.encode_texts(x[a:b], torch.tensor([0, b - a]))
        torch.testing.assert_close(got[a:b], sae.decode(f, state))
    whole = sae.decode(sae.encode_texts(x, torch.tensor([0, 9])), None)
    assert not torch.allclose(got, whole, atol=1e-4)  # the text boundary matters


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_many_saes_share_the_clean_and_zero_passes(arch, handles):
    """Several SAEs at once give each SAE's own numbers (clean and zero passes shared)."""
    from saelab.evals.splice import splice_fidelity_many

    handle = handles[arch]
    texts = ["the cat sat on the mat", "a big red dog runs", "bird sings loud", "old tree"]
    saes = {"r3": random_sae(3), "r5": random_sae(5), "id": identity_sae()}
    many = splice_fidelity_many(handle, saes, "blocks.1.hook_resid_post", texts, batch_size=2)
    for sid, sae in saes.items():
        one = splice_fidelity(handle, sae, "blocks.1.hook_resid_post", texts, batch_size=2)
        assert many[sid].keys() == one.keys()
        for key, value in one.items():
            assert many[sid][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert many["r3"] != many["r5"]
