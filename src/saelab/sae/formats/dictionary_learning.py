"""dictionary_learning trainer folders: ``ae.pt`` (a ``torch.save`` state dict) + ``config.json``.

Layout (``dictionary_learning/training.py``, ``trainSAE``): ``config.json`` =
``{"trainer": {dict_class, activation_dim, dict_size, k, layer, lm_name, submodule_name,
norm_factor, ...}, "buffer": {...}}``; ``ae.pt`` = ``{name: tensor}`` of the class in ``dict_class``
(``dictionary_learning/dictionary.py`` and ``trainers/*.py``). ``ae.pt`` is read only with
``torch.load(weights_only=True, mmap=True)``, so unpickling never runs code.

Mapping to SAELens semantics (as SAELens' ``dictionary_learning_1`` converter,
``sae_lens/loading/pretrained_sae_loaders.py``; D = activation_dim, F = dict_size):

=========================  ===========  =====================================================
dict_class                 saelab       tensors (file key -> saelab name)
=========================  ===========  =====================================================
AutoEncoder                standard     encoder.weight [F,D] -> W_enc^T, encoder.bias -> b_enc,
                                        decoder.weight [D,F] -> W_dec^T, bias -> b_dec
AutoEncoderTopK            topk (k)     encoder.*, decoder.weight, b_dec (``k``/``threshold``
                                        buffers: per-token top-k is used, as ``encode``'s default)
BatchTopKSAE               jumprelu     as TopK; scalar ``threshold`` broadcast to [F]
MatryoshkaBatchTopKSAE     jumprelu     W_enc [D,F], b_enc, W_dec [F,D], b_dec, scalar threshold
JumpReluAutoEncoder        jumprelu     W_enc, b_enc, W_dec, b_dec, threshold [F];
                                        ``apply_b_dec_to_input`` False (its encode skips b_dec)
GatedAutoEncoder           gated        encoder.weight -> W_enc^T, gate_bias -> b_gate,
                                        mag_bias -> b_mag, r_mag, decoder.weight -> W_dec^T,
                                        decoder_bias -> b_dec
=========================  ===========  =====================================================

Decoder orientation: either ``[D,F]`` or ``[F,D]`` is accepted for the decoder (and encoder)
matrices, decided by shape against ``activation_dim`` / ``dict_size``. When D == F the shape cannot
tell: the encoder is taken in its class's orientation, and the decoder in the orientation whose
latent vectors are unit norm (every dictionary_learning trainer but ``StandardTrainerAprilUpdate``
keeps them so); when neither (or only the non-canonical one, ambiguously) holds, opening fails
with an SAEFileError.

``norm_factor``: when a trainer normalised activations (``x / norm_factor``), dictionary_learning
multiplies the biases (and thresholds) by ``norm_factor`` before writing ``ae.pt``
(``trainSAE`` calls ``ae.scale_biases(norm_factor)``), so the saved SAE takes raw activations and
its codes are ``norm_factor`` times those on normalised inputs; ``load_dictionary`` uses the file
as is. saelab does the same (no rescaling) and keeps ``norm_factor`` in the metadata. A training
*backup* ``ae.pt`` (keys ``step``, ``ae``, ``optimizer``, ``norm_factor``) holds unscaled biases
and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelab.errors import SAEFileError
from saelab.sae.base import DTYPES, SAEConfig, canonical_dtype, check_config
from saelab.sae.formats.base import (
    SAEFiles,
    TensorRef,
    check_tensor_shapes,
    open_ref_folder,
    read_json,
    read_torch_state,
)

log = logging.getLogger(__name__)

FORMAT = "dictionary_learning"
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "ae.pt"

# File layouts of a matrix: latents along columns ([D, F], nn.Linear decoder / nn.Parameter W_enc)
# or along rows ([F, D], nn.Linear encoder / nn.Parameter W_dec). SAELens: W_enc [D,F], W_dec [F,D].
_IN_LAT, _LAT_IN = "in_lat", "lat_in"
_SAELENS_LAYOUT = {"W_enc": _IN_LAT, "W_dec": _LAT_IN}
_UNIT_NORM_RTOL = 1e-3


@dataclass(frozen=True)
class _DictClass:
    """How one dictionary_learning class maps onto a saelab architecture."""

    architecture: str
    apply_b_dec_to_input: bool
    keys: dict[str, str]  # saelab name -> key in ae.pt
    layouts: dict[str, str]  # saelab matrix name -> the class's own layout
    ignored: tuple[str, ...] = ()
    scalar_threshold: bool = False


_LINEAR_LAYOUTS = {"W_enc": _LAT_IN, "W_dec": _IN_LAT}
_PARAM_LAYOUTS = {"W_enc": _IN_LAT, "W_dec": _LAT_IN}
_TOPK_KEYS = {
    "W_enc": "encoder.weight",
    "b_enc": "encoder.bias",
    "W_dec": "decoder.weight",
    "b_dec": "b_dec",
}
_PARAM_KEYS = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}

DICT_CLASSES: dict[str, _DictClass] = {
    "AutoEncoder": _DictClass(
        "standard",
        True,
        {**_TOPK_KEYS, "b_dec": "bias"},
        _LINEAR_LAYOUTS,
    ),
    "AutoEncoderTopK": _DictClass(
        "topk", True, _TOPK_KEYS, _LINEAR_LAYOUTS, ignored=("k", "threshold")
    ),
    "BatchTopKSAE": _DictClass(
        "jumprelu",
        True,
        {**_TOPK_KEYS, "threshold": "threshold"},
        _LINEAR_LAYOUTS,
        ignored=("k",),
        scalar_threshold=True,
    ),
    "MatryoshkaBatchTopKSAE": _DictClass(
        "jumprelu",
        True,
        {**_PARAM_KEYS, "threshold": "threshold"},
        _PARAM_LAYOUTS,
        ignored=("k", "group_sizes"),
        scalar_threshold=True,
    ),
    "JumpReluAutoEncoder": _DictClass(
        "jumprelu", False, {**_PARAM_KEYS, "threshold": "threshold"}, _PARAM_LAYOUTS
    ),
    "GatedAutoEncoder": _DictClass(
        "gated",
        True,
        {
            "W_enc": "encoder.weight",
            "b_gate": "gate_bias",
            "b_mag": "mag_bias",
            "r_mag": "r_mag",
            "W_dec": "decoder.weight",
            "b_dec": "decoder_bias",
        },
        _LINEAR_LAYOUTS,
    ),
}


def read_trainer_config(folder: Path) -> dict[str, Any]:
    """The ``trainer`` object of ``config.json``, with ``dict_class``, ``activation_dim`` and
    ``dict_size`` checked."""
    path = folder / CONFIG_FILENAME
    raw = read_json(
        path, f"a dictionary_learning folder needs {CONFIG_FILENAME} beside {WEIGHTS_FILENAME}"
    )
    trainer = raw.get("trainer") if isinstance(raw, dict) else None
    if not isinstance(trainer, dict):
        raise SAEFileError(f"{path}: missing key 'trainer' (an object with dict_class, ...)")
    dict_class = trainer.get("dict_class")
    if dict_class not in DICT_CLASSES:
        raise SAEFileError(
            f"{path}: key 'trainer.dict_class' has value {dict_class!r}; supported: "
            f"{sorted(DICT_CLASSES)}"
        )
    for key in ("activation_dim", "dict_size"):
        value = trainer.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SAEFileError(
                f"{path}: key 'trainer.{key}' must be a positive integer, got {value!r}"
            )
    return trainer


def open_dictionary_learning(folder: str | Path, source: str | None = None) -> SAEFiles:
    """Open a dictionary_learning trainer folder (``ae.pt`` + ``config.json``) without loading it.

    ``ae.pt`` is memory-mapped to read its keys and shapes; tensors stay on disk.

    Raises:
        SAEFileError: naming the file and key (missing or unknown class, missing tensor, wrong
            shape, unresolvable square decoder, unsafe pickle, ...).
    """
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILENAME
    weights_path = folder / WEIGHTS_FILENAME
    trainer = read_trainer_config(folder)
    spec = DICT_CLASSES[trainer["dict_class"]]
    d_in, d_sae = int(trainer["activation_dim"]), int(trainer["dict_size"])
    if not weights_path.is_file():
        raise SAEFileError(f"{weights_path}: missing; a dictionary_learning folder needs it")
    state = read_torch_state(weights_path)
    if "ae" in state and "optimizer" in state:
        raise SAEFileError(
            f"{weights_path}: is a dictionary_learning training backup (keys 'step', 'ae', "
            "'optimizer'), whose biases are not yet scaled by norm_factor; expected the final "
            "ae.pt written at the end of training"
        )
    where = f"dictionary_learning class {trainer['dict_class']} (from {cfg_path})"
    missing = [key for key in spec.keys.values() if key not in state]
    if missing:
        raise SAEFileError(
            f"{weights_path}: missing tensor(s) {missing} for {where}; found {sorted(state)}"
        )
    unexpected = sorted(set(state) - set(spec.keys.values()) - set(spec.ignored), key=str)
    if unexpected:
        raise SAEFileError(
            f"{weights_path}: unexpected key(s) {unexpected} for {where}; expected "
            f"{sorted(spec.keys.values())}"
        )
    for key in (*spec.keys.values(), *spec.ignored):
        value = state.get(key)
        if key in state and not isinstance(value, torch.Tensor):
            raise SAEFileError(
                f"{weights_path}: '{key}' is a {type(value).__name__}; expected a tensor"
            )
        if key in spec.keys.values() and not value.is_floating_point():  # type: ignore[union-attr]
            raise SAEFileError(
                f"{weights_path}: tensor '{key}' has dtype {value.dtype}; expected floating point"  # type: ignore[union-attr]
            )
    refs: dict[str, TensorRef] = {}
    stored: dict[str, tuple[int, ...]] = {}
    for name, key in spec.keys.items():
        t = state[key]
        shape = tuple(t.shape)
        transposed, broadcast = False, 0
        if name in _SAELENS_LAYOUT:
            layout = _matrix_layout(name, key, t, spec.layouts[name], d_in, d_sae, weights_path)
            transposed = layout != _SAELENS_LAYOUT[name]
        elif name == "threshold" and spec.scalar_threshold and t.numel() == 1 and t.ndim <= 1:
            broadcast = d_sae
            _warn_unset_threshold(float(t.reshape(())), weights_path, key)
        refs[name] = TensorRef(weights_path, key, transposed=transposed, broadcast=broadcast)
        stored[name] = shape
    arch: dict[str, Any] = {}
    if spec.architecture == "topk":
        arch["k"] = _topk_k(trainer, state, cfg_path, weights_path)
    dtype = state[spec.keys["W_enc"]].dtype
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=spec.architecture,
        dtype=canonical_dtype(dtype) if dtype in DTYPES.values() else "float32",
        apply_b_dec_to_input=spec.apply_b_dec_to_input,
        arch=arch,
        metadata=_metadata(trainer),
    )
    cfg = check_config(cfg, str(cfg_path))
    check_tensor_shapes(cfg, refs, stored, str(cfg_path))
    del state
    what = f"dictionary_learning {trainer['dict_class']}"
    return open_ref_folder(FORMAT, cfg, refs, folder, cfg_path, weights_path, source, what)


def _matrix_layout(
    name: str, key: str, t: torch.Tensor, own: str, d_in: int, d_sae: int, path: Path
) -> str:
    """``in_lat`` ([D,F]) or ``lat_in`` ([F,D]) for a stored encoder/decoder matrix ``t``."""
    shape = tuple(t.shape)
    if shape not in ((d_in, d_sae), (d_sae, d_in)):
        raise SAEFileError(
            f"{path}: tensor '{key}' has shape {list(shape)}; expected [{d_in}, {d_sae}] or "
            f"[{d_sae}, {d_in}] (activation_dim={d_in}, dict_size={d_sae})"
        )
    if d_in != d_sae:
        return _IN_LAT if shape == (d_in, d_sae) else _LAT_IN
    if name == "W_enc":
        return own
    # Square decoder: the latents' decoder vectors are the unit-norm axis.
    w = t.detach().to(torch.float64)
    cols_unit = _all_unit(w.norm(dim=0))  # latents along columns: in_lat
    rows_unit = _all_unit(w.norm(dim=1))  # latents along rows: lat_in
    own_unit = cols_unit if own == _IN_LAT else rows_unit
    other_unit = rows_unit if own == _IN_LAT else cols_unit
    if own_unit:
        return own
    if other_unit:
        return _LAT_IN if own == _IN_LAT else _IN_LAT
    raise SAEFileError(
        f"{path}: tensor '{key}' is square [{d_in}, {d_sae}] (activation_dim == dict_size), so "
        "its shape cannot tell which axis holds the latents, and neither its rows nor its columns "
        "are unit norm; expected a decoder with unit-norm latent vectors, or dict_size != "
        "activation_dim"
    )


def _all_unit(norms: torch.Tensor) -> bool:
    return bool(torch.all((norms - 1).abs() <= _UNIT_NORM_RTOL))


def _warn_unset_threshold(value: float, path: Path, key: str) -> None:
    if value < 0:
        log.warning(
            "%s: '%s' is %g (never set during training): every positive pre-activation is kept",
            path,
            key,
            value,
        )


def _topk_k(trainer: dict[str, Any], state: dict[str, Any], cfg_path: Path, path: Path) -> int:
    """k from ``config.json``'s ``trainer.k``, checked against the ``k`` buffer of ``ae.pt``
    (dictionary_learning's ``from_pretrained`` refuses a mismatch the same way)."""
    k_cfg = trainer.get("k")
    k_buf = None
    if isinstance(state.get("k"), torch.Tensor):
        if state["k"].numel() != 1:
            raise SAEFileError(
                f"{path}: buffer 'k' has shape {list(state['k'].shape)}; expected one integer"
            )
        k_buf = int(state["k"].reshape(()))
    if k_cfg is None:
        if k_buf is None:
            raise SAEFileError(f"{cfg_path}: missing key 'trainer.k' (and no 'k' in {path})")
        return k_buf
    if isinstance(k_cfg, bool) or not isinstance(k_cfg, int):
        raise SAEFileError(f"{cfg_path}: key 'trainer.k' must be an integer, got {k_cfg!r}")
    if k_buf is not None and k_buf != k_cfg:
        raise SAEFileError(
            f"{cfg_path}: key 'trainer.k' is {k_cfg} but {path} has k={k_buf}; expected them equal"
        )
    return k_cfg


def _metadata(trainer: dict[str, Any]) -> dict[str, Any]:
    """SAELens-style metadata: the hook (residual stream after ``trainer.layer`` unless the
    submodule names another site), model name and the dictionary_learning facts."""
    meta: dict[str, Any] = {"dictionary_learning_class": trainer["dict_class"]}
    layer = trainer.get("layer")
    submodule = trainer.get("submodule_name")
    site = str(submodule).lower() if submodule is not None else "resid"
    # dictionary_learning names its sites resid_post_layer_L, mlp_out_layer_L, attn_out_layer_L
    kind = next((k for k in ("mlp_out", "attn_out") if k in site), None)
    if kind is None and "resid" not in site:
        kind = "unknown"  # no hook_name: a run must say what it reads (layer + hook_kind)
    if isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 and kind != "unknown":
        meta["hook_name"] = f"blocks.{layer}.hook_{kind or 'resid_post'}"
    for src, dst in (
        ("lm_name", "model_name"),
        ("submodule_name", "dictionary_learning_submodule"),
        ("trainer_class", "dictionary_learning_trainer"),
        ("norm_factor", "norm_factor"),
    ):
        if trainer.get(src) is not None:
            meta[dst] = trainer[src]
    return meta
