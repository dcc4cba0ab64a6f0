"""Bad SAE files in every format: one SAEFileError naming the file and the tensor or key; an ae.pt
whose unpickling would run code is refused without running it; the CLI exits 2 without a
traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.errors import SAEFileError
from saelab.sae import SAEConfig, build_sae, load_sae, open_sae, save_sae

D, F, K = 12, 40, 5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- builders of good folders -----------------------------------------------------------------
def _saelens(folder: Path) -> Path:
    cfg = SAEConfig(d_in=D, d_sae=F, architecture="topk", arch={"k": K})
    return save_sae(build_sae(cfg, seed=1), folder)


def _dl(folder: Path, dict_class: str = "AutoEncoderTopK") -> Path:
    folder.mkdir(parents=True)
    g = _g(2)
    sd = {
        "b_dec": torch.randn(D, generator=g),
        "encoder.weight": torch.randn(F, D, generator=g),
        "encoder.bias": torch.randn(F, generator=g),
        "decoder.weight": torch.nn.functional.normalize(torch.randn(D, F, generator=g), dim=0),
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(-1.0),
    }
    torch.save(sd, folder / "ae.pt")
    trainer = {"dict_class": dict_class, "activation_dim": D, "dict_size": F, "k": K, "layer": 1}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    return folder


def _sparsify(folder: Path) -> Path:
    folder.mkdir(parents=True)
    g = _g(3)
    sd = {
        "encoder.weight": torch.randn(F, D, generator=g),
        "encoder.bias": torch.randn(F, generator=g),
        "W_dec": torch.randn(F, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }
    save_file(sd, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "num_latents": F, "k": K, "d_in": D, "transcode": False}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


BUILDERS = {"saelens": _saelens, "dictionary_learning": _dl, "sparsify": _sparsify}


# ----- damage ----------------------------------------------------------------------------------
def _json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _st(path: Path, fn) -> None:
    t = load_file(path)
    fn(t)
    save_file(t, str(path))


def _pt(path: Path, fn) -> None:
    t = torch.load(path, weights_only=True)
    fn(t)
    torch.save(t, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _legacy_pt(path: Path) -> None:
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)


# case -> (format, damage(folder), file named in the message, pattern)
CASES = {
    # SAELens
    "sl_missing_tensor": (
        "saelens",
        lambda f: _st(f / "sae_weights.safetensors", lambda t: t.pop("b_enc")),
        "sae_weights.safetensors",
        r"missing \['b_enc'\]",
    ),
    "sl_wrong_shape": (
        "saelens",
        lambda f: _st(
            f / "sae_weights.safetensors", lambda t: t.update(W_dec=torch.zeros(F, D + 1))
        ),
        "sae_weights.safetensors",
        r"tensor 'W_dec' has shape \[40, 13\]; expected \[40, 12\]",
    ),
    "sl_unknown_arch": (
        "saelens",
        lambda f: _json(f / "cfg.json", lambda d: d.update(architecture="mystery")),
        "cfg.json",
        r"key 'architecture'.*'mystery'",
    ),
    "sl_truncated": (
        "saelens",
        lambda f: _truncate(f / "sae_weights.safetensors"),
        "sae_weights.safetensors",
        "not a readable safetensors file",
    ),
    "sl_cfg_not_json": (
        "saelens",
        lambda f: (f / "cfg.json").write_text("{'k': 5,"),
        "cfg.json",
        "not valid JSON",
    ),
    "sl_cfg_missing": ("saelens", lambda f: (f / "cfg.json").unlink(), "cfg.json", "missing"),
    "sl_int_tensor": (
        "saelens",
        lambda f: _st(
            f / "sae_weights.safetensors",
            lambda t: t.update(b_enc=torch.zeros(F, dtype=torch.int32)),
        ),
        "sae_weights.safetensors",
        r"'b_enc' has dtype I32; expected floating point",
    ),
    # dictionary_learning
    "dl_missing_tensor": (
        "dictionary_learning",
        lambda f: _pt(f / "ae.pt", lambda t: t.pop("encoder.bias")),
        "ae.pt",
        r"missing tensor\(s\) \['encoder.bias'\] for dictionary_learning class AutoEncoderTopK",
    ),
    "dl_wrong_vector_shape": (
        "dictionary_learning",
        lambda f: _pt(f / "ae.pt", lambda t: t.update({"encoder.bias": torch.zeros(F + 1)})),
        "ae.pt",
        r"tensor 'encoder.bias' \(saelab's b_enc\) has shape \[41\]; expected \[40\]",
    ),
    "dl_wrong_matrix_shape": (
        "dictionary_learning",
        lambda f: _pt(f / "ae.pt", lambda t: t.update({"decoder.weight": torch.zeros(D, F + 1)})),
        "ae.pt",
        r"tensor 'decoder.weight' has shape \[12, 41\]; expected \[12, 40\] or \[40, 12\]",
    ),
    "dl_unexpected_key": (
        "dictionary_learning",
        lambda f: _pt(f / "ae.pt", lambda t: t.update(W_skip=torch.zeros(D, D))),
        "ae.pt",
        r"unexpected key\(s\) \['W_skip'\]",
    ),
    "dl_unknown_class": (
        "dictionary_learning",
        lambda f: _json(
            f / "config.json", lambda d: d["trainer"].update(dict_class="AutoEncoderNew")
        ),
        "config.json",
        r"key 'trainer.dict_class' has value 'AutoEncoderNew'; supported: \[",
    ),
    "dl_missing_dim": (
        "dictionary_learning",
        lambda f: _json(f / "config.json", lambda d: d["trainer"].pop("activation_dim")),
        "config.json",
        r"key 'trainer.activation_dim' must be a positive integer, got None",
    ),
    "dl_no_trainer": (
        "dictionary_learning",
        lambda f: (f / "config.json").write_text("[1, 2]"),
        "config.json",
        r"missing key 'trainer'",
    ),
    "dl_config_not_json": (
        "dictionary_learning",
        lambda f: (f / "config.json").write_text("trainer: {}"),
        "config.json",
        "not valid JSON",
    ),
    "dl_config_missing": (
        "dictionary_learning",
        lambda f: (f / "config.json").unlink(),
        "config.json",
        "missing; a dictionary_learning folder needs config.json",
    ),
    "dl_truncated": (
        "dictionary_learning",
        lambda f: _truncate(f / "ae.pt"),
        "ae.pt",
        "not a readable torch.save zip file",
    ),
    "dl_legacy_format": (
        "dictionary_learning",
        lambda f: _legacy_pt(f / "ae.pt"),
        "ae.pt",
        r"legacy \(pre-1.6, non-zip\) torch format",
    ),
    "dl_not_a_dict": (
        "dictionary_learning",
        lambda f: torch.save(torch.zeros(3), f / "ae.pt"),
        "ae.pt",
        "holds a Tensor; expected a dict of tensors",
    ),
    "dl_training_backup": (
        "dictionary_learning",
        lambda f: torch.save(
            {
                "step": 10,
                "ae": torch.load(f / "ae.pt", weights_only=True),
                "optimizer": {},
                "norm_factor": 2.0,
            },
            f / "ae.pt",
        ),
        "ae.pt",
        "training backup",
    ),
    "dl_k_mismatch": (
        "dictionary_learning",
        lambda f: _json(f / "config.json", lambda d: d["trainer"].update(k=K - 1)),
        "config.json",
        r"key 'trainer.k' is 4 but .*ae.pt has k=5",
    ),
    "dl_k_too_big": (
        "dictionary_learning",
        lambda f: (
            _json(f / "config.json", lambda d: d["trainer"].update(k=F + 1)),
            _pt(f / "ae.pt", lambda t: t.pop("k")),
        ),
        "config.json",
        r"key 'k' must be in 1..d_sae=40, got 41",
    ),
    "dl_int_tensor": (
        "dictionary_learning",
        lambda f: _pt(
            f / "ae.pt", lambda t: t.update({"encoder.bias": torch.zeros(F, dtype=torch.int64)})
        ),
        "ae.pt",
        r"tensor 'encoder.bias' has dtype torch.int64; expected floating point",
    ),
    # sparsify
    "sp_missing_tensor": (
        "sparsify",
        lambda f: _st(f / "sae.safetensors", lambda t: t.pop("b_dec")),
        "sae.safetensors",
        r"missing \['b_dec'\]",
    ),
    "sp_wrong_shape": (
        "sparsify",
        lambda f: _st(f / "sae.safetensors", lambda t: t.update(W_dec=torch.zeros(D, F))),
        "sae.safetensors",
        r"tensor 'W_dec' has shape \[12, 40\]; expected \[40, 12\]",
    ),
    "sp_truncated": (
        "sparsify",
        lambda f: _truncate(f / "sae.safetensors"),
        "sae.safetensors",
        "not a readable safetensors file",
    ),
    "sp_cfg_not_json": (
        "sparsify",
        lambda f: (f / "cfg.json").write_text("k=5"),
        "cfg.json",
        "not valid JSON",
    ),
    "sp_cfg_missing": ("sparsify", lambda f: (f / "cfg.json").unlink(), "cfg.json", "missing"),
    "sp_missing_d_in": (
        "sparsify",
        lambda f: _json(f / "cfg.json", lambda d: d.pop("d_in")),
        "cfg.json",
        r"key 'd_in' must be an integer >= 1, got None \(missing\)",
    ),
    "sp_transcoder": (
        "sparsify",
        lambda f: _json(f / "cfg.json", lambda d: d.update(transcode=True)),
        "cfg.json",
        r"key 'transcode' is true",
    ),
    "sp_groupmax": (
        "sparsify",
        lambda f: _json(f / "cfg.json", lambda d: d.update(activation="groupmax")),
        "cfg.json",
        r"key 'activation' has value 'groupmax'",
    ),
    "sp_skip_connection": (
        "sparsify",
        lambda f: _st(f / "sae.safetensors", lambda t: t.update(W_skip=torch.zeros(D, D))),
        "sae.safetensors",
        r"tensor 'W_skip' \(a skip connection\)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_raises_one_error_naming_file_and_key(tmp_path, case):
    fmt, damage, filename, pattern = CASES[case]
    folder = BUILDERS[fmt](tmp_path / "sae")
    open_sae(folder).load()  # the undamaged folder loads
    damage(folder)
    with pytest.raises(SAEFileError, match=pattern) as info:
        load_sae(folder)
    assert str(folder / filename) in str(info.value)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_non_finite_weights_are_refused_on_load(tmp_path, fmt):
    folder = BUILDERS[fmt](tmp_path / "sae")
    if fmt == "dictionary_learning":
        _pt(folder / "ae.pt", lambda t: t["encoder.weight"].__setitem__((3, 0), float("nan")))
        file, pattern = "ae.pt", r"tensor 'encoder.weight' \(saelab's W_enc\) has 1 non-finite"
    elif fmt == "sparsify":
        _st(folder / "sae.safetensors", lambda t: t["b_dec"].__setitem__(2, float("inf")))
        file, pattern = (
            "sae.safetensors",
            r"tensor 'b_dec' has 1 non-finite value\(s\) \(first at flat index 2\)",
        )
    else:
        _st(
            folder / "sae_weights.safetensors",
            lambda t: t["W_dec"].__setitem__((1, 1), float("nan")),
        )
        file, pattern = "sae_weights.safetensors", r"tensor 'W_dec' has 1 non-finite"
    files = open_sae(folder)  # shapes are fine: opening does not read the values
    with pytest.raises(SAEFileError, match=pattern) as info:
        files.load()
    assert str(folder / file) in str(info.value)


# ----- an ae.pt whose unpickling would run code ---------------------------------------------------
class _CreatesFile:
    """Pickles to ``open(path, "w")``: unpickling it with the full unpickler creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _malicious_ae(folder: Path, marker: Path) -> Path:
    """A dictionary_learning folder whose ae.pt (zip layout of torch.save) carries the payload.
    ``torch.save`` only asks the object for its ``__reduce__`` recipe; nothing is executed."""
    _dl(folder)
    state = torch.load(folder / "ae.pt", weights_only=True)
    state["encoder.bias"] = _CreatesFile(marker)
    torch.save(state, folder / "ae.pt")
    assert not marker.exists()
    return folder


def test_ae_pt_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    folder = _malicious_ae(tmp_path / "evil", marker)
    for attempt in (
        lambda: open_sae(folder),
        lambda: load_sae(folder),
        lambda: load_sae(folder / "ae.pt"),
    ):
        with pytest.raises(
            SAEFileError,
            match=r"ae\.pt: refused to unpickle: it refers to \S*open\b.*would run code",
        ) as info:
            attempt()
        assert str(folder / "ae.pt") in str(info.value)
        assert not marker.exists()
    # control: the payload is real; the file's pickle calls io.open(marker) on unpickling
    # (read by disassembling the opcodes, never by running an unrestricted unpickler)
    assert ("io", "open", str(marker)) in _pickle_calls(folder / "ae.pt")
    assert not marker.exists()


def _pickle_calls(path: Path) -> set[tuple[str, str, str]]:
    """(module, name, first string argument) of every global the pickle inside a torch.save zip
    imports and then calls with REDUCE, from its opcodes (``pickletools.genops``; nothing runs)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    calls, strings, pending = set(), [], None
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            pending, strings = (strings[-2], strings[-1]), []
        elif op.name == "GLOBAL":
            pending, strings = tuple(arg.split(" ", 1)), []
        elif op.name == "REDUCE" and pending is not None:
            calls.add((*pending, strings[0] if strings else ""))
            pending = None
    return calls


def test_d_in_that_does_not_match_the_model_is_a_file_error(tmp_path):
    from saelab.config import RunConfig
    from saelab.pipeline.saes import load_saes

    folder = _dl(tmp_path / "dl")
    cfg = RunConfig.model_validate(
        {"layers": [1], "saes": [{"id": "dl", "path": str(folder)}], "model": {"name": "tiny"}}
    )
    handle = SimpleNamespace(device="cpu", d_model=D + 4)
    saes: dict = {}

    def timer(_name):
        import contextlib

        return contextlib.nullcontext()

    with pytest.raises(
        SAEFileError, match=r"config.json: the SAE's d_in is 12 but tiny has d_model 16"
    ):
        load_saes(cfg, handle, saes, {}, timer)
    assert saes == {}
    keys: dict = {}
    load_saes(cfg, SimpleNamespace(device="cpu", d_model=D), saes, keys, timer)
    assert list(keys) == [("dl", 1)] and keys[("dl", 1)] == open_sae(folder).identity


def test_cli_exits_2_without_traceback_and_never_runs_the_pickle(tmp_path):
    from tiny_models import build_tiny_model, write_word_dataset

    marker = tmp_path / "PWNED"
    folder = _malicious_ae(tmp_path / "evil", marker)
    model = build_tiny_model(tmp_path / "gpt2", "gpt2")
    write_word_dataset(tmp_path / "words.csv", 120, seed=1)
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "bad_sae",
                "cache_dir": str(tmp_path / "cache"),
                "model": {"name": str(model)},
                "layers": [1],
                "data": {"datasets": [str(tmp_path / "words.csv")], "max_train": 40},
                "saes": [{"id": "evil", "path": str(folder)}],
                "executor": "serial",
            }
        )
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "saelab.cli",
            "run",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--no-report",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "ae.pt" in r.stderr and "refused to unpickle" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not marker.exists()
