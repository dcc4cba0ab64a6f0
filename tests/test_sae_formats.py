"""SAE file formats: SAELens, dictionary_learning, sparsify and SAELens releases (offline hub cache),
format detection, and the identity that keys everything computed from an SAE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.errors import SAEFileError, SaelabError
from saelab.sae import (
    SAEConfig,
    build_sae,
    detect_format,
    load_sae,
    open_sae,
    read_sparsity,
    save_sae,
)
from saelab.sae.formats import read_tensor
from saelab.sae.formats.release import open_with_sae_lens, resolve_release

D, F = 12, 40
K = 5
REV = "a" * 40


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _x(n: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit_cols(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=0, keepdim=True)


def _topk_scatter(post: torch.Tensor, k: int) -> torch.Tensor:
    v, i = post.topk(k, dim=-1)
    return torch.zeros_like(post).scatter_(-1, i, v)


# ----- dictionary_learning ----------------------------------------------------------------------
def _dl_state(dict_class: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes of dictionary_learning's ``dict_class``."""
    g = _gen(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.5

    dec_lin = _unit_cols(r(D, F))  # nn.Linear(F, D).weight: [D, F], unit-norm columns
    if dict_class == "AutoEncoder":
        return {
            "bias": r(D),
            "encoder.weight": r(F, D),
            "encoder.bias": r(F),
            "decoder.weight": dec_lin,
        }
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {
            "b_dec": r(D),
            "encoder.weight": r(F, D),
            "encoder.bias": r(F),
            "decoder.weight": dec_lin,
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.3),
        }
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {
            "W_enc": r(D, F),
            "b_enc": r(F),
            "W_dec": dec_lin.T.contiguous(),
            "b_dec": r(D),
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.25),
            "group_sizes": torch.tensor([10, 30]),
        }
    if dict_class == "JumpReluAutoEncoder":
        return {
            "W_enc": r(D, F),
            "b_enc": r(F),
            "W_dec": dec_lin.T.contiguous(),
            "b_dec": r(D),
            "threshold": r(F).abs(),
        }
    assert dict_class == "GatedAutoEncoder"
    return {
        "decoder_bias": r(D),
        "encoder.weight": r(F, D),
        "r_mag": r(F),
        "gate_bias": r(F),
        "mag_bias": r(F),
        "decoder.weight": dec_lin,
    }


def _dl_reference(dict_class: str, sd: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and reconstruction as dictionary_learning's classes compute them
    (``dictionary.py``, ``trainers/top_k.py``, ``batch_top_k.py``, ``matryoshka_batch_top_k.py``;
    threshold classes with their default ``use_threshold=True``)."""
    relu = torch.relu
    if dict_class == "AutoEncoder":
        f = relu((x - sd["bias"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
        return f, f @ sd["decoder.weight"].T + sd["bias"]
    if dict_class == "AutoEncoderTopK":
        post = relu((x - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
        f = _topk_scatter(post, int(sd["k"]))
        return f, f @ sd["decoder.weight"].T + sd["b_dec"]
    if dict_class == "BatchTopKSAE":
        post = relu((x - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
        f = post * (post > sd["threshold"])
        return f, f @ sd["decoder.weight"].T + sd["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])
        f = post * (post > sd["threshold"])
        return f, f @ sd["W_dec"] + sd["b_dec"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ sd["W_enc"] + sd["b_enc"]  # no b_dec subtraction
        f = relu(pre * (pre > sd["threshold"]))
        return f, f @ sd["W_dec"] + sd["b_dec"]
    x_enc = (x - sd["decoder_bias"]) @ sd["encoder.weight"].T
    gate = (x_enc + sd["gate_bias"] > 0).float()
    f = gate * relu(sd["r_mag"].exp() * x_enc + sd["mag_bias"])
    return f, f @ sd["decoder.weight"].T + sd["decoder_bias"]


def _dl_as_saelab(dict_class: str, sd: dict) -> torch.nn.Module:
    """saelab's own SAE built from the same tensors (mapping written out by hand)."""
    arch = {
        "AutoEncoder": ("standard", {}),
        "AutoEncoderTopK": ("topk", {"k": K}),
        "BatchTopKSAE": ("jumprelu", {}),
        "MatryoshkaBatchTopKSAE": ("jumprelu", {}),
        "JumpReluAutoEncoder": ("jumprelu", {}),
        "GatedAutoEncoder": ("gated", {}),
    }[dict_class]
    cfg = SAEConfig(
        d_in=D,
        d_sae=F,
        architecture=arch[0],
        arch=arch[1],
        apply_b_dec_to_input=dict_class != "JumpReluAutoEncoder",
    )
    sae = build_sae(cfg)
    if "encoder.weight" in sd:
        p = {"W_enc": sd["encoder.weight"].T, "W_dec": sd["decoder.weight"].T}
    else:
        p = {"W_enc": sd["W_enc"], "W_dec": sd["W_dec"], "b_enc": sd["b_enc"]}
    p["b_dec"] = sd.get("b_dec", sd.get("bias", sd.get("decoder_bias")))
    if "encoder.bias" in sd:
        p["b_enc"] = sd["encoder.bias"]
    if "threshold" in sd and arch[0] == "jumprelu":
        p["threshold"] = sd["threshold"].expand(F) if sd["threshold"].ndim == 0 else sd["threshold"]
    if dict_class == "GatedAutoEncoder":
        p.update(b_gate=sd["gate_bias"], b_mag=sd["mag_bias"], r_mag=sd["r_mag"])
    sae.load_state_dict({k: v.contiguous() for k, v in p.items()})
    return sae


def _write_dl(folder: Path, dict_class: str, sd: dict, **trainer: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "ae.pt")
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "trainer_class": "SomeTrainer",
            "activation_dim": D,
            "dict_size": F,
            "layer": 2,
            "lm_name": "org/tiny-model",
            "submodule_name": "resid_post_layer_2",
            **({"k": K} if "k" in sd else {}),
            **trainer,
        },
        "buffer": {"ctx_len": 128},
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


DL_CLASSES = [
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
    "GatedAutoEncoder",
]


@pytest.mark.parametrize("dict_class", DL_CLASSES)
def test_dictionary_learning_codes_match_its_classes_and_saelab(tmp_path, dict_class):
    sd = _dl_state(dict_class)
    folder = _write_dl(tmp_path / "trainer_0", dict_class, sd)
    assert detect_format(folder) == "dictionary_learning"
    files = open_sae(folder)
    assert files.format == "dictionary_learning"
    assert files.cfg.metadata["hook_name"] == "blocks.2.hook_resid_post"
    assert files.cfg.metadata["model_name"] == "org/tiny-model"
    sae = files.load()
    x = _x()
    ref_f, ref_x_hat = _dl_reference(dict_class, sd, x)
    with torch.no_grad():
        f = sae.encode(x)
        own = _dl_as_saelab(dict_class, sd).encode(x)
        x_hat = sae.decode(f)
    assert (f != 0).any() and (f == 0).any()
    torch.testing.assert_close(f, ref_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f, own, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x_hat, ref_x_hat, atol=1e-5, rtol=1e-5)
    # every stored tensor is reachable through its TensorRef, in SAELens orientation
    for name, ref in files.tensors.items():
        torch.testing.assert_close(read_tensor(ref), sae.state_dict()[name])


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "JumpReluAutoEncoder"])
def test_dictionary_learning_either_decoder_orientation(tmp_path, dict_class):
    sd = _dl_state(dict_class, seed=3)
    key = "decoder.weight" if "decoder.weight" in sd else "W_dec"
    flipped = {**sd, key: sd[key].T.contiguous()}
    a = open_sae(_write_dl(tmp_path / "a", dict_class, sd)).load()
    b = open_sae(_write_dl(tmp_path / "b", dict_class, flipped)).load()
    torch.testing.assert_close(a.W_dec, b.W_dec)
    x = _x()
    torch.testing.assert_close(a(x), _dl_reference(dict_class, sd, x)[1], atol=1e-5, rtol=1e-5)


def test_dictionary_learning_square_decoder_resolved_by_unit_norm_or_refused(tmp_path):
    """activation_dim == dict_size: the decoder's unit-norm axis holds the latents."""
    g = _gen(4)
    n = D
    dec = _unit_cols(torch.randn(n, n, generator=g))  # canonical [D, F], unit-norm columns
    sd = {
        "bias": torch.randn(n, generator=g),
        "encoder.weight": torch.randn(n, n, generator=g),
        "encoder.bias": torch.randn(n, generator=g),
        "decoder.weight": dec,
    }

    def write(name: str, state: dict) -> Path:
        folder = _write_dl(tmp_path / name, "AutoEncoder", state)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["trainer"]["dict_size"] = n
        (folder / "config.json").write_text(json.dumps(cfg))
        return folder

    canonical = open_sae(write("canonical", sd)).load()
    flipped = open_sae(write("flipped", {**sd, "decoder.weight": dec.T.contiguous()})).load()
    torch.testing.assert_close(canonical.W_dec, dec.T)
    torch.testing.assert_close(flipped.W_dec, dec.T)
    with pytest.raises(SAEFileError, match=r"ae\.pt: tensor 'decoder.weight' is square"):
        open_sae(write("neither", {**sd, "decoder.weight": dec * 3}))


def test_dictionary_learning_norm_factor_is_already_folded(tmp_path):
    """dictionary_learning trains on x / nf and saves biases (and thresholds) times nf
    (``scale_biases(norm_factor)``): the file's codes on raw x are nf times the normalised ones."""
    nf = 3.5
    sd = _dl_state("JumpReluAutoEncoder", seed=5)
    scaled = {
        **sd,
        "b_enc": sd["b_enc"] * nf,
        "b_dec": sd["b_dec"] * nf,
        "threshold": sd["threshold"] * nf,
    }
    folder = _write_dl(tmp_path / "t", "JumpReluAutoEncoder", scaled, norm_factor=nf)
    files = open_sae(folder)
    assert files.cfg.metadata["norm_factor"] == nf
    x = _x() * 4
    f_norm, xhat_norm = _dl_reference("JumpReluAutoEncoder", sd, x / nf)
    with torch.no_grad():
        sae = files.load()
        torch.testing.assert_close(sae.encode(x), f_norm * nf, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), xhat_norm * nf, atol=1e-5, rtol=1e-5)


# ----- sparsify ---------------------------------------------------------------------------------
def _sparsify_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    w_dec = torch.randn(F, D, generator=g)
    return {
        "encoder.weight": torch.randn(F, D, generator=g) * 0.5,
        "encoder.bias": torch.randn(F, generator=g) * 0.1,
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.randn(D, generator=g) * 0.2,
    }


def _write_sparsify(folder: Path, sd: dict, **cfg: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "sae.safetensors"))
    base = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": F,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
    }
    (folder / "cfg.json").write_text(json.dumps({**base, **cfg}))
    return folder


def _sparsify_reference(sd: dict, x: torch.Tensor, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """``SparseCoder.encode`` (x - b_dec, ReLU(linear), top-k) and ``decode`` (f W_dec + b_dec)."""
    post = torch.relu((x - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    f = _topk_scatter(post, k)
    return f, f @ sd["W_dec"] + sd["b_dec"]


def test_sparsify_codes_match_sparsify_and_saelab(tmp_path):
    sd = _sparsify_state()
    folder = _write_sparsify(tmp_path / "layers.3", sd)
    assert detect_format(folder) == "sparsify"
    files = open_sae(folder)
    assert files.cfg.architecture == "topk" and files.cfg.arch["k"] == K
    assert files.cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"
    sae = files.load()
    own = build_sae(SAEConfig(d_in=D, d_sae=F, architecture="topk", arch={"k": K}))
    own.load_state_dict(
        {
            "W_enc": sd["encoder.weight"].T.contiguous(),
            "b_enc": sd["encoder.bias"],
            "W_dec": sd["W_dec"],
            "b_dec": sd["b_dec"],
        }
    )
    x = _x()
    ref_f, ref_x_hat = _sparsify_reference(sd, x)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), ref_f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.encode(x), own.encode(x))
        torch.testing.assert_close(sae(x), ref_x_hat, atol=1e-5, rtol=1e-5)
    # num_latents 0 -> d_in * expansion_factor (sparsify's rule)
    folder2 = _write_sparsify(tmp_path / "other", sd, num_latents=0, expansion_factor=3)
    with pytest.raises(
        SAEFileError,
        match=r"'encoder.weight' \(saelab's W_enc\) has shape \[40, 12\]; expected \[36, 12\]",
    ):
        open_sae(folder2)


def test_sparsify_root_lists_hookpoints_and_one_is_picked(tmp_path):
    root = tmp_path / "run"
    sd1, sd2 = _sparsify_state(1), _sparsify_state(2)
    _write_sparsify(root / "layers.1", sd1)
    _write_sparsify(root / "layers.2", sd2, k=3)
    (root / "config.json").write_text(json.dumps({"model": "org/tiny-model"}))
    assert detect_format(root) == "sparsify"
    with pytest.raises(
        SAEFileError, match=r"several hookpoints \['layers.1', 'layers.2'\].*hookpoint"
    ):
        open_sae(root)
    with pytest.raises(
        SAEFileError, match=r"hookpoint 'layers.9' not found.*\['layers.1', 'layers.2'\]"
    ):
        open_sae({"path": str(root), "hookpoint": "layers.9"})
    picked = open_sae({"path": str(root), "hookpoint": "layers.2"})
    direct = open_sae(root / "layers.2")
    assert picked.identity == direct.identity and picked.cfg.arch["k"] == 3
    assert picked.cfg.metadata["model_name"] == "org/tiny-model"
    x = _x()
    torch.testing.assert_close(
        picked.load().encode(x), _sparsify_reference(sd2, x, 3)[0], atol=1e-5, rtol=1e-5
    )


# ----- SAELens folders --------------------------------------------------------------------------
def _saelens_sae(architecture: str = "topk", arch: dict | None = None, seed: int = 0):
    arch = {"k": K} if arch is None else arch
    cfg = SAEConfig(
        d_in=D,
        d_sae=F,
        architecture=architecture,
        arch=arch,
        metadata={"hook_name": "blocks.2.hook_resid_post", "model_name": "tiny"},
    )
    sae = build_sae(cfg)
    g = _gen(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
            if name == "threshold":
                p.abs_()
    return sae


def _sae_lens():
    warnings.filterwarnings("ignore", category=UserWarning)
    import sae_lens

    return sae_lens


def test_saelens_sparsity_file_and_codes_agree_with_sae_lens(tmp_path):
    sae = _saelens_sae("jumprelu", {})
    freq = torch.rand(F, generator=_gen(9))
    freq[0] = 0.0
    folder = save_sae(sae, tmp_path / "sae", sparsity=freq)
    stored = load_file(folder / "sparsity.safetensors")["sparsity"]
    torch.testing.assert_close(stored, torch.log10(freq.double() + 1e-10).float())
    assert float(stored[0]) == pytest.approx(-10.0)
    torch.testing.assert_close(read_sparsity(folder), stored)
    files = open_sae(folder)
    assert files.format == "saelens" and files.extra["sparsity"] == folder / "sparsity.safetensors"
    assert set(files.tensors) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    with pytest.raises(ValueError, match="shape"):
        save_sae(sae, tmp_path / "bad", sparsity=torch.rand(F + 1))
    sl = _sae_lens().SAE.load_from_disk(str(folder))
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(load_sae(folder).encode(x), sl.encode(x))


def test_detect_format_of_files_inside_and_of_unknown_folders(tmp_path):
    folder = save_sae(_saelens_sae(), tmp_path / "s")
    assert detect_format(folder / "cfg.json") == "saelens"
    assert detect_format(folder / "sae_weights.safetensors") == "saelens"
    dl = _write_dl(tmp_path / "dl", "AutoEncoder", _dl_state("AutoEncoder"))
    assert detect_format(dl / "ae.pt") == "dictionary_learning"
    assert open_sae(dl / "ae.pt").identity == open_sae(dl).identity
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        SAEFileError, match=r"empty: no SAE files found.*SAELens.*dictionary_learning.*sparsify"
    ):
        detect_format(empty)
    trainers = tmp_path / "sweep"
    _write_dl(trainers / "trainer_0", "AutoEncoder", _dl_state("AutoEncoder"))
    with pytest.raises(SAEFileError, match=r"dictionary_learning trainers \['trainer_0'\]"):
        open_sae(trainers)
    # a forced format reads the folder with that reader
    with pytest.raises(SAEFileError, match=r"config.json: missing"):
        open_sae({"path": str(folder), "format": "dictionary_learning"})


# ----- identity ---------------------------------------------------------------------------------
def _edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_identity_covers_every_file_that_decides_the_codes(tmp_path):
    folder = save_sae(_saelens_sae(), tmp_path / "sae")
    first = open_sae(folder).identity
    assert open_sae(folder).identity == first  # stable
    moved = tmp_path / "elsewhere" / "sae"
    shutil.copytree(folder, moved)
    assert open_sae(moved).identity == first  # content, not location
    _edit_json(moved / "cfg.json", lambda d: d.update(k=K + 1))
    assert open_sae(moved).identity != first
    _edit_json(moved / "cfg.json", lambda d: d.update(k=K))
    assert open_sae(moved).identity == first
    _edit_json(moved / "cfg.json", lambda d: d.update(apply_b_dec_to_input=False))
    assert open_sae(moved).identity != first
    # a sparsity file does not decide the codes
    save_sae(_saelens_sae(), moved, sparsity=torch.full((F,), 0.1))
    assert open_sae(moved).identity == first
    # weights
    t = load_file(folder / "sae_weights.safetensors")
    t["b_enc"][0] += 1
    save_file(t, str(folder / "sae_weights.safetensors"))
    assert open_sae(folder).identity != first
    # dictionary_learning: config.json (k) and ae.pt both count; so does the format
    sd = _dl_state("AutoEncoderTopK")
    dl = _write_dl(
        tmp_path / "dl", "AutoEncoderTopK", {k: v for k, v in sd.items() if k != "k"}, k=K
    )
    before = open_sae(dl).identity
    _edit_json(dl / "config.json", lambda d: d["trainer"].update(k=K - 1))
    assert open_sae(dl).identity != before


# ----- releases through sae_lens and an offline hub cache ---------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty local hub cache; the hub is offline."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_folder(cache: Path, repo_id: str, folder_name: str, src: Path) -> Path:
    """Lay ``src``'s files out as the hub cache does: models--org--name/snapshots/<rev>/<folder>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / REV / folder_name
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    return snap


def _fake_releases(monkeypatch, entries: dict) -> None:
    """Add releases to sae_lens' pretrained SAE directory (every module that looks it up)."""
    sl = _sae_lens()
    from sae_lens.loading import pretrained_saes_directory as psd

    real = psd.get_pretrained_saes_directory
    directory = dict(real())
    for release, (repo_id, conversion, saes) in entries.items():
        directory[release] = psd.PretrainedSAELookup(
            release=release,
            repo_id=repo_id,
            model="tiny",
            conversion_func=conversion,
            saes_map=saes,
            expected_var_explained={},
            expected_l0={},
            neuronpedia_id={},
            norm_scaling_factor={},
            config_overrides=None,
        )
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("sae_lens")
            and getattr(module, "get_pretrained_saes_directory", None) is real
        ):
            monkeypatch.setattr(module, "get_pretrained_saes_directory", lambda: directory)
    assert sl is not None


GPT2_RELEASE = ("gpt2-small-res-jb", "blocks.0.hook_resid_pre")


def test_release_from_offline_hub_cache_matches_sae_lens(hub, tmp_path):
    sl = _sae_lens()
    coords = resolve_release(*GPT2_RELEASE)
    assert coords["conversion"] == "sae_lens"
    sae = _saelens_sae("topk", {"k": K})
    freq = torch.rand(F, generator=_gen(2))
    src = save_sae(sae, tmp_path / "src", sparsity=freq)
    _cache_folder(hub, coords["repo_id"], coords["folder"], src)
    files = open_sae({"release": GPT2_RELEASE[0], "sae_id": GPT2_RELEASE[1]})
    assert files.format == "release" and files.source == "/".join(GPT2_RELEASE)
    assert set(files.tensors) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    # the release's config_overrides land in the metadata
    assert files.cfg.metadata["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    ours = files.load()
    theirs, _, log_sparsity = sl.SAE.from_pretrained_with_cfg_and_sparsity(*GPT2_RELEASE)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(log_sparsity, read_sparsity(files.extra["sparsity"]))
    # the same SAE through sae_lens' own converter (the path of Gemma Scope & co.)
    via = open_with_sae_lens(coords)
    assert via.tensors == {} and via.identity != files.identity
    with torch.no_grad():
        torch.testing.assert_close(via.load().encode(x), ours.encode(x))


def test_release_errors(hub, tmp_path, monkeypatch):
    with pytest.raises(SAEFileError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        open_sae({"release": GPT2_RELEASE[0], "sae_id": GPT2_RELEASE[1]})
    with pytest.raises(
        SAEFileError, match=r"sae_id 'blocks.0.hook_resid_prex' not found.*blocks.0.hook_resid_pre"
    ):
        open_sae({"release": GPT2_RELEASE[0], "sae_id": "blocks.0.hook_resid_prex"})
    with pytest.raises(
        SAEFileError, match=r"release 'gpt2-small-res-jbb'.*closest.*gpt2-small-res-jb"
    ):
        open_sae({"release": "gpt2-small-res-jbb", "sae_id": "x"})
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sae_lens" else real_find_spec(name, *a),
    )
    with pytest.raises(SaelabError, match="needs the sae-lens package"):
        open_sae({"release": GPT2_RELEASE[0], "sae_id": GPT2_RELEASE[1]})


def test_dictionary_learning_and_sparsify_releases_match_sae_lens(hub, tmp_path, monkeypatch):
    """Releases converted by sae_lens' ``dictionary_learning_1`` loader (read from the offline
    cache by both libraries) give the same codes in saelab and sae_lens."""
    sl = _sae_lens()
    saes = {c: c for c in DL_CLASSES}
    _fake_releases(
        monkeypatch,
        {
            "saelab-test-dl": ("saelab-test/dl", "dictionary_learning_1", saes),
            "saelab-test-sparsify": ("saelab-test/sparsify", "sparsify", {"layers.1": "layers.1"}),
        },
    )
    x = _x()
    for i, dict_class in enumerate(DL_CLASSES):
        sd = _dl_state(dict_class, seed=10 + i)
        src = _write_dl(tmp_path / dict_class, dict_class, sd)
        _cache_folder(hub, "saelab-test/dl", dict_class, src)
        files = open_sae({"release": "saelab-test-dl", "sae_id": dict_class})
        assert files.format == "release" and files.tensors
        ours = files.load()
        theirs = sl.SAE.from_pretrained("saelab-test-dl", dict_class)
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                ours.encode(x), _dl_reference(dict_class, sd, x)[0], atol=1e-5, rtol=1e-5
            )
    sd = _sparsify_state(7)
    _cache_folder(hub, "saelab-test/sparsify", "layers.1", _write_sparsify(tmp_path / "sp", sd))
    files = open_sae({"release": "saelab-test-sparsify", "sae_id": "layers.1"})
    with torch.no_grad():
        torch.testing.assert_close(
            files.load().encode(x), _sparsify_reference(sd, x)[0], atol=1e-5, rtol=1e-5
        )


def test_release_offline_through_environment_variables(tmp_path):
    """HF_HOME + HF_HUB_OFFLINE=1 in a fresh process: the cache is found from the environment."""
    hf_home = tmp_path / "hf"
    coords_repo, coords_folder = "jbloom/GPT2-Small-SAEs-Reformatted", GPT2_RELEASE[1]
    src = save_sae(_saelens_sae(), tmp_path / "src")
    _cache_folder(hf_home / "hub", coords_repo, coords_folder, src)
    code = (
        "import json, torch; from saelab.sae import open_sae; "
        f"f = open_sae({{'release': {GPT2_RELEASE[0]!r}, 'sae_id': {GPT2_RELEASE[1]!r}}}); "
        "s = f.load(); print(json.dumps([f.identity, s.d_sae]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    identity, d_sae = json.loads(r.stdout.strip().splitlines()[-1])
    assert d_sae == F and len(identity) == 24


# ----- the pipeline keys loaded SAEs by their identity ------------------------------------------
def test_editing_cfg_k_recomputes_the_sae_units(tmp_path):
    from saelab.config import RunConfig
    from saelab.pipeline.run import run_pipeline
    from tiny_models import HIDDEN, build_tiny_model, write_word_dataset

    model = build_tiny_model(tmp_path / "gpt2", "gpt2")
    write_word_dataset(tmp_path / "words.csv", 160, seed=1)
    cfg = SAEConfig(
        d_in=HIDDEN,
        d_sae=4 * HIDDEN,
        architecture="topk",
        arch={"k": 4},
        metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"},
    )
    folder = save_sae(build_sae(cfg, seed=3), tmp_path / "sae")
    run_cfg = RunConfig.model_validate(
        {
            "cache_dir": str(tmp_path / "cache"),
            "model": {"name": str(model), "batch_size": 16},
            "layers": [1],
            "data": {"datasets": [str(tmp_path / "words.csv")], "max_train": 40},
            "saes": [{"id": "loaded", "path": str(folder)}],
            "probes": {"ks": [1, 2]},
            "executor": "serial",
        }
    )
    first = run_pipeline(run_cfg, tmp_path / "run", progress=False)
    n_sae = int((first.results.method == "sae").sum())
    assert n_sae > 0 and first.n_units_done_before == 0
    again = run_pipeline(run_cfg, tmp_path / "run", progress=False)
    assert again.n_units_done_before == again.n_units
    _edit_json(folder / "cfg.json", lambda d: d.update(k=2))
    edited = run_pipeline(run_cfg, tmp_path / "run", progress=False)
    # the baseline unit is reused; every SAE unit is recomputed under a new key
    assert edited.n_units_done_before == edited.n_units - 1
    old_keys = set(first.results[first.results.method == "sae"].unit_config)
    new_keys = set(edited.results[edited.results.method == "sae"].unit_config)
    assert old_keys.isdisjoint(new_keys)


def test_saelens_norm_scaling_factor_fold_and_legacy_tensors(tmp_path):
    """``expected_average_only_in`` with a release's factor s: W_enc*s, W_dec/s, b_dec/s (SAELens
    ``fold_activation_norm_scaling_factor``), i.e. codes of s*x; legacy ``log_threshold`` files are
    materialised whole."""
    from saelab.sae.formats.saelens import open_saelens

    sae = _saelens_sae("jumprelu", {})
    folder = save_sae(sae, tmp_path / "sae")
    _edit_json(
        folder / "cfg.json", lambda d: d.update(normalize_activations="expected_average_only_in")
    )
    with pytest.raises(SAEFileError, match="expected_average_only_in"):
        open_sae(folder)
    s = 2.5
    files = open_saelens(folder, norm_scaling_factor=s)
    assert files.cfg.normalize_activations == "none" and files.tensors["W_enc"].scale == s
    x = _x()
    with torch.no_grad():
        folded = files.load()
        torch.testing.assert_close(folded.encode(x), sae.encode(s * x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(folded(x), sae(s * x) / s, atol=1e-5, rtol=1e-5)
    legacy = save_sae(sae, tmp_path / "legacy")
    t = load_file(legacy / "sae_weights.safetensors")
    t["log_threshold"] = t.pop("threshold").log()
    save_file(t, str(legacy / "sae_weights.safetensors"))
    opened = open_sae(legacy)
    assert opened.tensors == {}
    with torch.no_grad():
        torch.testing.assert_close(opened.load().encode(x), sae.encode(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("submodule", "hook"),
    [
        ("resid_post_layer_2", "blocks.2.hook_resid_post"),
        ("mlp_out_layer_2", "blocks.2.hook_mlp_out"),
        ("attn_out_layer_2", "blocks.2.hook_attn_out"),
        ("embed", None),  # a site saelab cannot name: no hook, the run must say what it reads
    ],
)
def test_dictionary_learning_site_becomes_the_hook(tmp_path, submodule, hook):
    folder = _write_dl(
        tmp_path / "dl", "AutoEncoder", _dl_state("AutoEncoder"), submodule_name=submodule
    )
    assert open_sae(folder).cfg.metadata.get("hook_name") == hook


def test_dictionary_learning_k_buffer_must_be_one_number(tmp_path):
    sd = _dl_state("AutoEncoderTopK")
    sd["k"] = torch.tensor([K, K])
    folder = _write_dl(tmp_path / "dl", "AutoEncoderTopK", sd)
    with pytest.raises(SAEFileError, match="buffer 'k'"):
        open_sae(folder)
