"""Tests for saelab.sae: architectures, SAELens format, sparse encoding (training: test_sae_train)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError, DatasetError, SAEFileError
from saelab.sae import (
    SAE,
    GatedSAE,
    JumpReLUSAE,
    SAEConfig,
    StandardSAE,
    TopKSAE,
    build_sae,
    encode_rows,
    known_architectures,
    load_sae,
    read_sae_config,
    register_sae,
    sae_class,
    save_sae,
)
from saelab.sae.base import SAELENS_FORMAT_VERSION

D_IN, D_SAE = 12, 40

ARCHS = [
    ("standard", {}),
    ("topk", {"k": 5}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
    ("gated", {}),
]


def _random_sae(
    architecture: str, arch: dict, normalize: str = "none", seed: int = 0, apply_b_dec: bool = True
) -> SAE:
    cfg = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=architecture,
        arch=dict(arch),
        normalize_activations=normalize,
        apply_b_dec_to_input=apply_b_dec,
        metadata={"hook_name": "blocks.2.hook_resid_post", "model_name": "tiny"},
    )
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
            if name == "threshold":
                p.abs_()
    return sae


def _x(n: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sae_lens():
    warnings.filterwarnings("ignore", category=UserWarning)
    import sae_lens

    return sae_lens


# ----- architectures and registry ----------------------------------------------------------------
def test_forward_formulas_by_hand() -> None:
    x = _x()
    std = _random_sae("standard", {})
    xp = x - std.b_dec
    h = xp @ std.W_enc + std.b_enc
    torch.testing.assert_close(std.encode(x), torch.relu(h))
    torch.testing.assert_close(std(x), torch.relu(h) @ std.W_dec + std.b_dec)

    jr = _random_sae("jumprelu", {})
    h = (x - jr.b_dec) @ jr.W_enc + jr.b_enc
    expect = torch.where(h > jr.threshold, h, torch.zeros_like(h)).clamp_min(0)
    torch.testing.assert_close(jr.encode(x), expect)

    tk = _random_sae("topk", {"k": 5})
    f = tk.encode(x)
    h = (x - tk.b_dec) @ tk.W_enc + tk.b_enc
    assert int((f != 0).sum(dim=1).max()) <= 5
    kth = h.topk(5, dim=1).values[:, -1:]
    torch.testing.assert_close(f, torch.where(h >= kth, h.clamp_min(0), torch.zeros_like(h)))

    gt = _random_sae("gated", {})
    xp = x - gt.b_dec
    gate = (xp @ gt.W_enc + gt.b_gate > 0).float()
    mag = torch.relu(xp @ (gt.W_enc * gt.r_mag.exp()) + gt.b_mag)
    torch.testing.assert_close(gt.encode(x), gate * mag)
    assert not hasattr(gt, "b_enc") or not isinstance(
        getattr(gt, "b_enc", None), torch.nn.Parameter
    )


def test_registry_lists_known_and_accepts_new_architecture(tmp_path: Path) -> None:
    assert {"standard", "topk", "jumprelu", "gated"} <= set(known_architectures())
    with pytest.raises(SAEFileError, match=r"known: .*'gated'.*'topk'"):
        sae_class("batchtopk_nope")

    @register_sae("saelab_test_abs")
    class AbsSAE(SAE):
        def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
            return (sae_in @ self.W_enc + self.b_enc).abs()

    assert sae_class("saelab_test_abs") is AbsSAE
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="saelab_test_abs"), seed=3)
    back = load_sae(save_sae(sae, tmp_path / "abs"))
    assert isinstance(back, AbsSAE)
    torch.testing.assert_close(back.encode(_x()), sae.encode(_x()))
    with pytest.raises(ValueError, match="already registered"):
        register_sae("topk")(AbsSAE)


# ----- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize(("architecture", "arch"), ARCHS)
@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_round_trip(tmp_path: Path, architecture: str, arch: dict, normalize: str) -> None:
    sae = _random_sae(architecture, arch, normalize, apply_b_dec=normalize == "none")
    folder = save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    back = load_sae(folder)
    assert type(back) is type(sae)
    assert back.cfg.metadata.pop("sae_lens_version") == SAELENS_FORMAT_VERSION
    assert back.cfg == sae.cfg
    for name, p in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name
    x = _x()
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(back(x), sae(x), rtol=0, atol=0)
    # also by the weights file path, and with a dtype override
    again = load_sae(folder / "sae_weights.safetensors", dtype="float64")
    assert again.W_dec.dtype == torch.float64 and again.cfg.dtype == "float64"


def test_saved_files_use_saelens_names_and_v6_keys(tmp_path: Path) -> None:
    folder = save_sae(_random_sae("gated", {}), tmp_path / "g")
    tensors = load_file(folder / "sae_weights.safetensors")
    assert {k: list(v.shape) for k, v in tensors.items()} == {
        "W_enc": [D_IN, D_SAE],
        "b_gate": [D_SAE],
        "b_mag": [D_SAE],
        "r_mag": [D_SAE],
        "W_dec": [D_SAE, D_IN],
        "b_dec": [D_IN],
    }
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "gated" and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6


def test_save_replaces_existing_sae_folder_atomically(tmp_path: Path) -> None:
    target = tmp_path / "sae"
    save_sae(_random_sae("standard", {}, seed=1), target)
    second = _random_sae("topk", {"k": 3}, seed=2)
    save_sae(second, target)
    assert load_sae(target).architecture == "topk"
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # no temp or backup folders left
    other = tmp_path / "not_an_sae"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SAEFileError, match=r"not_an_sae.*without cfg.json"):
        save_sae(second, other)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("architecture", "arch"), ARCHS)
def test_our_files_load_in_saelens(tmp_path: Path, architecture: str, arch: dict) -> None:
    sae_lens = _sae_lens()
    sae = _random_sae(architecture, arch, "layer_norm" if architecture == "standard" else "none")
    folder = save_sae(sae, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert theirs.cfg.architecture() == architecture
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), rtol=0, atol=1e-5)
        f = sae.encode(x)
        if sae.cfg.normalize_activations == "none":
            torch.testing.assert_close(theirs.decode(f), sae.decode(f), rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs(x), sae(x), rtol=0, atol=1e-5)


def _saelens_inference_models(sae_lens):
    s = sae_lens
    common = {"d_in": D_IN, "d_sae": D_SAE}
    return [
        s.StandardSAE(s.StandardSAEConfig(**common, normalize_activations="layer_norm")),
        s.TopKSAE(s.TopKSAEConfig(**common, k=4)),
        s.TopKSAE(s.TopKSAEConfig(**common, k=4, rescale_acts_by_decoder_norm=True)),
        s.JumpReLUSAE(s.JumpReLUSAEConfig(**common, apply_b_dec_to_input=False)),
        s.GatedSAE(s.GatedSAEConfig(**common)),
    ]


def test_saelens_saved_files_load_here_and_agree(tmp_path: Path) -> None:
    sae_lens = _sae_lens()
    gen = torch.Generator().manual_seed(5)
    x = _x()
    for i, theirs in enumerate(_saelens_inference_models(sae_lens)):
        with torch.no_grad():
            for name, p in theirs.named_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
                if name == "threshold":
                    p.abs_()
        theirs.cfg.metadata.hook_name = "blocks.4.hook_resid_post"
        folder = tmp_path / f"m{i}"
        theirs.save_model(str(folder))
        ours = load_sae(folder)
        assert ours.architecture == theirs.cfg.architecture()
        assert ours.cfg.metadata["hook_name"] == "blocks.4.hook_resid_post"
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=0, atol=1e-5)
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_saelens_training_saes_saved_both_ways_load_here(tmp_path: Path) -> None:
    sae_lens = _sae_lens()
    cfg = sae_lens.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)
    assert cfg.rescale_acts_by_decoder_norm  # SAELens' training default: norms matter
    train_sae = sae_lens.TopKTrainingSAE(cfg)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in train_sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    x = _x()
    with torch.no_grad():
        expect_codes = train_sae.encode(x)
        expect_out = train_sae(x)
    train_sae.save_model(str(tmp_path / "full"))  # training cfg: extra keys, unfolded norms
    train_sae.save_inference_model(str(tmp_path / "inference"))  # decoder norms folded
    full = load_sae(tmp_path / "full")
    assert full.cfg.metadata["aux_loss_coefficient"] == 1.0  # training-only key kept as metadata
    inference = load_sae(tmp_path / "inference")
    norms = inference.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    with torch.no_grad():
        torch.testing.assert_close(full.encode(x), expect_codes, rtol=0, atol=1e-5)
        torch.testing.assert_close(full(x), expect_out, rtol=0, atol=1e-5)
        torch.testing.assert_close(inference(x), expect_out, rtol=0, atol=1e-5)
        # folded codes are the unfolded ones times the decoder norms (SAELens _fold_norm_topk)
        torch.testing.assert_close(
            inference.encode(x), expect_codes, rtol=0, atol=1e-5
        )  # rescale_acts_by_decoder_norm already multiplied by the norms


def test_pre_6_config_loads(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    gen = torch.Generator().manual_seed(7)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=gen),
        "b_enc": torch.randn(D_SAE, generator=gen),
        "W_dec": torch.randn(D_SAE, D_IN, generator=gen),
        "b_dec": torch.randn(D_IN, generator=gen),
        "scaling_factor": torch.rand(D_SAE, generator=gen) + 0.5,
    }
    save_file(w, str(folder / "sae_weights.safetensors"))
    old_cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.3.hook_resid_pre",
        "hook_point_layer": 3,
        "hook_point_head_index": None,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cuda",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 6},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": True,
        "normalize_activations": False,
        "context_size": 128,
        "sae_lens_training_version": "3.13.0",
    }
    (folder / "cfg.json").write_text(json.dumps(old_cfg))
    sae = load_sae(folder)
    assert isinstance(sae, TopKSAE) and sae.k == 6 and sae.cfg.dtype == "float32"
    assert sae.cfg.metadata["hook_name"] == "blocks.3.hook_resid_pre"
    assert sae.cfg.metadata["hook_layer"] == 3 and sae.cfg.metadata["context_size"] == 128
    x = _x()
    h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    vals, idx = h.topk(6, dim=1)
    f = torch.zeros_like(h).scatter_(1, idx, vals.relu())
    torch.testing.assert_close(sae.encode(x), f)
    # pre-6.0 decode: (f * scaling_factor) @ W_dec + b_dec, folded into W_dec on load
    torch.testing.assert_close(sae(x), (f * w["scaling_factor"]) @ w["W_dec"] + w["b_dec"])
    resaved = json.loads((save_sae(sae, tmp_path / "new") / "cfg.json").read_text())
    assert resaved["architecture"] == "topk" and resaved["k"] == 6
    assert int(resaved["metadata"]["sae_lens_version"].split(".")[0]) >= 6


def test_jumprelu_log_threshold_is_converted(tmp_path: Path) -> None:
    sae = _random_sae("jumprelu", {})
    folder = save_sae(sae, tmp_path / "j")
    tensors = load_file(folder / "sae_weights.safetensors")
    tensors["log_threshold"] = torch.log(tensors.pop("threshold"))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    torch.testing.assert_close(load_sae(folder).threshold.data, sae.threshold.data)


# ----- bad files --------------------------------------------------------------------------------
def _edit_cfg(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _edit_weights(folder: Path, fn) -> None:
    tensors = load_file(folder / "sae_weights.safetensors")
    fn(tensors)
    save_file(tensors, str(folder / "sae_weights.safetensors"))


_DROP = object()


def _nan_first(t: dict) -> None:
    t["W_enc"][0, 3] = float("nan")


BAD_CASES = {
    "cfg_not_json": (
        lambda f: (f / "cfg.json").write_text("{not json"),
        "cfg.json",
        "not valid JSON",
    ),
    "cfg_missing": (lambda f: (f / "cfg.json").unlink(), "cfg.json", "missing"),
    "weights_missing": (
        lambda f: (f / "sae_weights.safetensors").unlink(),
        "sae_weights.safetensors",
        "missing",
    ),
    "weights_corrupt": (
        lambda f: (f / "sae_weights.safetensors").write_bytes(b"\x10\x00garbage"),
        "sae_weights.safetensors",
        "not a readable safetensors",
    ),
    "missing_d_in": (lambda f: _edit_cfg(f, d_in=_DROP), "cfg.json", "'d_in'"),
    "bad_d_sae": (lambda f: _edit_cfg(f, d_sae="many"), "cfg.json", "'d_sae'"),
    "unknown_arch": (lambda f: _edit_cfg(f, architecture="mystery"), "cfg.json", "'architecture'"),
    "missing_k": (lambda f: _edit_cfg(f, k=_DROP), "cfg.json", "'k'"),
    "k_too_big": (lambda f: _edit_cfg(f, k=D_SAE + 1), "cfg.json", "'k'"),
    "bad_norm": (
        lambda f: _edit_cfg(f, normalize_activations="expected_average_only_in"),
        "cfg.json",
        "'normalize_activations'.*expected_average_only_in.*supported",
    ),
    "bad_dtype": (lambda f: _edit_cfg(f, dtype="int8"), "cfg.json", "'dtype'"),
    "missing_tensor": (
        lambda f: _edit_weights(f, lambda t: t.pop("W_dec")),
        "sae_weights.safetensors",
        "missing \\['W_dec'\\]",
    ),
    "extra_tensor": (
        lambda f: _edit_weights(f, lambda t: t.update(bonus=torch.zeros(3))),
        "sae_weights.safetensors",
        "unexpected \\['bonus'\\]",
    ),
    "wrong_shape": (
        lambda f: _edit_weights(f, lambda t: t.update(b_enc=torch.zeros(D_SAE + 1))),
        "sae_weights.safetensors",
        "'b_enc' has shape \\[41\\]; expected \\[40\\]",
    ),
    "non_finite": (
        lambda f: _edit_weights(f, _nan_first),
        "sae_weights.safetensors",
        "'W_enc' has 1 non-finite",
    ),
    "pre6_activation": (
        lambda f: _edit_cfg(f, metadata={}, activation_fn_str="tanh-relu"),
        "cfg.json",
        "'activation_fn'.*tanh-relu",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_raise_sae_file_error_naming_file_and_key(tmp_path: Path, case: str) -> None:
    folder = save_sae(_random_sae("topk", {"k": 5}), tmp_path / "sae")
    damage, filename, pattern = BAD_CASES[case]
    damage(folder)
    with pytest.raises(SAEFileError, match=pattern) as info:
        load_sae(folder)
    assert str(folder / filename) in str(info.value)


def test_missing_folder_and_stray_file(tmp_path: Path) -> None:
    with pytest.raises(SAEFileError, match=r"nowhere.*not found"):
        load_sae(tmp_path / "nowhere")
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(SAEFileError, match=r"weights.bin"):
        load_sae(stray)
    with pytest.raises(SAEFileError, match="expected a JSON object"):
        SAEConfig.from_saelens_dict([1, 2], source="x.json")


def test_read_sae_config_only(tmp_path: Path) -> None:
    folder = save_sae(_random_sae("topk", {"k": 5}), tmp_path / "sae")
    cfg = read_sae_config(folder / "cfg.json")
    assert cfg.arch == {"k": 5, "rescale_acts_by_decoder_norm": False}


# ----- encode_rows ------------------------------------------------------------------------------
def _layer_acts(lengths: list[int], seed: int = 8) -> LayerActivations:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(sum(lengths), D_IN, generator=gen)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    pooled = torch.stack([tokens[offsets[i] : offsets[i + 1]].mean(0) for i in range(len(lengths))])
    return LayerActivations(pooled=pooled, tokens=tokens, offsets=offsets)


LENGTHS = [3, 1, 7, 2, 5, 4, 1, 6]


@pytest.mark.parametrize(("architecture", "arch"), [("topk", {"k": 5}), ("standard", {})])
def test_encode_rows_pool_codes_matches_hand_computation(architecture: str, arch: dict) -> None:
    sae = _random_sae(architecture, arch)
    acts = _layer_acts(LENGTHS)
    out = encode_rows(sae, acts, pooling="mean", mode="pool_codes")
    assert isinstance(out, sp.csr_matrix) and out.shape == (len(LENGTHS), D_SAE)
    assert out.dtype == np.float32 and out.has_canonical_format
    with torch.no_grad():
        expect = torch.stack(
            [
                sae.encode(acts.tokens[acts.offsets[i] : acts.offsets[i + 1]]).mean(0)
                for i in range(len(LENGTHS))
            ]
        )
    np.testing.assert_allclose(out.toarray(), expect.numpy(), rtol=1e-6, atol=1e-6)
    assert out.nnz == int((expect != 0).sum())
    # pooling the activations first (sae-probes) is a different, also sparse, answer
    pooled = encode_rows(sae, acts, pooling="mean", mode="code_pooled")
    with torch.no_grad():
        np.testing.assert_allclose(pooled.toarray(), sae.encode(acts.pooled).numpy(), atol=1e-6)
    assert not np.allclose(pooled.toarray(), out.toarray())


def test_encode_rows_last_and_chunking() -> None:
    sae = _random_sae("topk", {"k": 5})
    acts = _layer_acts(LENGTHS)
    last = encode_rows(sae, acts, pooling="last")
    with torch.no_grad():
        np.testing.assert_array_equal(last.toarray(), sae.encode(acts.pooled).numpy())
    assert last.nnz <= 5 * len(LENGTHS)
    full = encode_rows(sae, acts, pooling="mean").toarray()
    for budget in (1, D_SAE, 3 * D_SAE + 1, 5 * D_SAE):
        chunked = encode_rows(sae, acts, pooling="mean", max_batch_elems=budget)
        np.testing.assert_allclose(chunked.toarray(), full, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(  # matmul blocking differs with the batch size
            encode_rows(sae, acts, pooling="last", max_batch_elems=budget).toarray(),
            last.toarray(),
            rtol=1e-6,
            atol=1e-6,
        )


def test_encode_rows_input_errors() -> None:
    sae = _random_sae("topk", {"k": 5})
    acts = _layer_acts(LENGTHS)
    with pytest.raises(ConfigError, match="token-level"):
        encode_rows(sae, LayerActivations(pooled=acts.pooled), pooling="mean")
    with pytest.raises(ConfigError, match="'pooling'"):
        encode_rows(sae, acts, pooling="max")  # type: ignore[arg-type]
    empty = _layer_acts([2, 3])
    empty.offsets = torch.tensor([0, 0, 5])
    with pytest.raises(DatasetError, match="row 0 has no tokens"):
        encode_rows(sae, empty, pooling="mean")
    narrow = LayerActivations(pooled=torch.zeros(2, D_IN + 1))
    with pytest.raises(ConfigError, match="d_in"):
        encode_rows(sae, narrow, pooling="last")


def test_build_rejects_bad_in_memory_config() -> None:
    with pytest.raises(SAEFileError, match=r"unknown key.*'q'"):
        build_sae(SAEConfig(d_in=4, d_sae=8, architecture="standard", arch={"q": 1}))
    with pytest.raises(SAEFileError, match="'normalize_activations'"):
        build_sae(SAEConfig(d_in=4, d_sae=8, architecture="topk", arch={"k": 2},
                            normalize_activations="whiten"))  # fmt: skip
    assert isinstance(build_sae(SAEConfig(4, 8, "jumprelu")), JumpReLUSAE)
    assert isinstance(build_sae(SAEConfig(4, 8, "gated")), GatedSAE)
    assert isinstance(build_sae(SAEConfig(4, 8, "standard")), StandardSAE)


@pytest.mark.parametrize("budget", [1, D_SAE, 3 * D_SAE + 1, 2**26])
def test_encode_rows_max_codes_skips_special_tokens(budget: int) -> None:
    sae = _random_sae("topk", {"k": 5})
    acts = _layer_acts(LENGTHS)
    special = torch.zeros(acts.tokens.shape[0], dtype=torch.bool)
    special[acts.offsets[:-1]] = True  # first token of every text is "BOS"
    acts = LayerActivations(acts.pooled, acts.tokens, acts.offsets, special)
    out = encode_rows(sae, acts, pooling="last", mode="max_codes", max_batch_elems=budget)
    with torch.no_grad():
        expect = []
        for i, n in enumerate(LENGTHS):
            a, b = int(acts.offsets[i]), int(acts.offsets[i + 1])
            toks = acts.tokens[a + 1 : b] if n > 1 else acts.tokens[a:b]  # 1-token texts keep it
            expect.append(sae.encode(toks).amax(0).clamp_min(0))
    np.testing.assert_allclose(out.toarray(), torch.stack(expect).numpy(), rtol=1e-6, atol=1e-6)
    assert out.has_canonical_format and out.shape == (len(LENGTHS), D_SAE)
