"""What every SAE file format yields: an inference config, where each tensor lives, an identity.

A format reader (SAELens, dictionary_learning, sparsify, a SAELens release) turns a folder into
:class:`SAEFiles`. Nothing is read into memory beyond the config files: :meth:`SAEFiles.load`
materialises an :class:`~saelab.sae.base.SAE`, while the streamed encoder reads blocks of latents
through :attr:`SAEFiles.tensors` without ever holding a whole weight matrix.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from saelab.errors import SAEFileError
from saelab.io import hash_file, stable_hash
from saelab.sae.base import DTYPES, SAE, SAEConfig, canonical_dtype, sae_class

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRef:
    """One SAE parameter inside a file, in SAELens naming and orientation.

    Attributes:
        path: the file holding it (``.safetensors`` or a ``torch.save`` zip such as ``ae.pt``).
        key: the tensor's name inside that file (e.g. ``encoder.weight``).
        transposed: True when the file stores the transpose of the SAELens orientation (SAELens:
            ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``; dictionary_learning's
            ``encoder.weight`` is ``[d_sae, d_in]``, so it is ``transposed`` for ``W_enc``).
        scale: a factor applied on read (e.g. a folded normalisation constant); 1.0 for none.
        broadcast: for a per-latent vector stored as one scalar (dictionary_learning's BatchTopK
            ``threshold``), the length to broadcast it to; 0 when the tensor is stored in full.
    """

    path: Path
    key: str
    transposed: bool = False
    scale: float = 1.0
    broadcast: int = 0


@dataclass
class SAEFiles:
    """An SAE on disk in any supported format, opened but not loaded.

    Attributes:
        cfg: the inference config in SAELens semantics (architecture, d_in, d_sae, fields).
        tensors: SAELens parameter name -> where it lives (``W_enc``, ``b_enc``, ``W_dec``, ...).
            Either every parameter of the architecture, with shapes already checked against
            ``cfg``, or empty when the SAE can only be materialised whole (a legacy SAELens file
            whose ``log_threshold`` / ``scaling_factor`` must be converted, a release read by a
            sae_lens converter): then use :meth:`load`.
        files: every file that decides the codes (configs and weights), for the identity.
        format: the format name (``saelens``, ``dictionary_learning``, ``sparsify``, ``release``).
        source: how the user named it (a folder, or ``release/sae_id``), for messages.
        identity: hash over the format, the converter version and every file in ``files``; the
            cache and unit keys of everything computed from this SAE use it.
        loader: materialises the SAE (``device``, ``dtype``) -> :class:`SAE`.
        extra: reader-specific facts (e.g. ``sparsity``: the path of SAELens'
            ``sparsity.safetensors``; ``hookpoint``; release coordinates).
    """

    cfg: SAEConfig
    tensors: dict[str, TensorRef]
    files: list[Path]
    format: str
    source: str
    identity: str
    loader: Callable[..., SAE] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def load(self, device: str | torch.device = "cpu", dtype: Any = None) -> SAE:
        """The SAE with all weights in memory on ``device`` (``dtype`` overrides the config's)."""
        return self.loader(device=device, dtype=dtype)


# ----- shared by every reader -------------------------------------------------------------------
#: Bumped whenever a reader's mapping from files to an SAE changes (renames, orientation rules,
#: folded constants), so identities of SAEs read by an older converter no longer match.
CONVERTER_VERSION = 1

#: safetensors dtype strings of floating tensors (header ``dtype`` field).
_SAFETENSORS_FLOATS = {"F16", "BF16", "F32", "F64"}
_FINITE_CHECK_CHUNK = 1 << 24  # elements per isfinite pass, so the bool mask stays small
_HASH_MEMO: dict[tuple[str, int, int, int], str] = {}


@dataclass(frozen=True)
class StoredTensor:
    """Shape and dtype of one tensor in a file, read from its header without loading it."""

    shape: tuple[int, ...]
    dtype: str
    floating: bool


def safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """Name -> shape/dtype of every tensor in a ``.safetensors`` file (header only, no data).

    Raises:
        SAEFileError: the file is missing, truncated or not safetensors.
    """
    if not path.is_file():
        raise SAEFileError(f"{path}: missing")
    out: dict[str, StoredTensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                sl = fh.get_slice(name)
                dtype = str(sl.get_dtype())
                out[name] = StoredTensor(tuple(sl.get_shape()), dtype, dtype in _SAFETENSORS_FLOATS)
    except SafetensorError as exc:
        raise SAEFileError(f"{path}: not a readable safetensors file ({exc})") from None
    except OSError as exc:
        raise SAEFileError(f"{path}: cannot read ({exc})") from None
    return out


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON value of ``path``.

    ``what`` completes the message for a missing file: ``{path}: missing; {what}``.

    Raises:
        SAEFileError: the file is missing, unreadable or not valid JSON.
    """
    if not path.is_file():
        raise SAEFileError(f"{path}: missing; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFileError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise SAEFileError(f"{path}: cannot read ({exc})") from None


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object (dict) in ``path``; ``what`` as in :func:`read_json`.

    Raises:
        SAEFileError: as :func:`read_json`, or the value is not a JSON object.
    """
    raw = read_json(path, what)
    if not isinstance(raw, dict):
        raise SAEFileError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def read_torch_state(path: Path) -> dict[str, Any]:
    """The dict saved by ``torch.save`` at ``path``, memory-mapped, never running pickled code.

    Only ``torch.load(weights_only=True, mmap=True)`` is used: the restricted unpickler refuses any
    global other than tensors and plain containers, so a file whose unpickling would call a function
    (``__reduce__`` to ``os.system``, ``open``, ...) raises instead of running it. Tensors stay on
    disk until used (mmap).

    Raises:
        SAEFileError: missing, truncated, legacy (non-zip) or unsafe file, or not a dict.
    """
    if not path.is_file():
        raise SAEFileError(f"{path}: missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        what = f"refers to {match.group(1)}" if match else "holds objects"
        raise SAEFileError(
            f"{path}: refused to unpickle: it {what}, which is not a tensor or plain container, "
            "so loading it would run code; expected a torch.save of a plain state dict of tensors"
        ) from None
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "mmap" in first:
            reason = "it was saved in the legacy (pre-1.6, non-zip) torch format"
        else:
            reason = f"not a readable torch.save zip file ({first})"
        raise SAEFileError(
            f"{path}: {reason}; expected a zip-format torch.save of a state dict"
        ) from None
    except (OSError, EOFError, ValueError) as exc:
        raise SAEFileError(f"{path}: cannot read ({exc})") from None
    if not isinstance(state, dict):
        raise SAEFileError(
            f"{path}: holds a {type(state).__name__}; expected a dict of tensors (a state dict)"
        )
    return state


def read_tensor(
    ref: TensorRef, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The tensor ``ref`` points at, in SAELens orientation, scaled and broadcast, on ``device``.

    Applies, in order: cast to ``dtype`` (if given), transpose (``ref.transposed``), multiply by
    ``ref.scale`` (when not 1), broadcast a scalar to ``[ref.broadcast]`` (when not 0).
    """
    if ref.path.suffix == ".safetensors":
        try:
            with safe_open(str(ref.path), framework="pt", device=str(device)) as fh:
                t = fh.get_tensor(ref.key)
        except SafetensorError as exc:
            raise SAEFileError(f"{ref.path}: tensor '{ref.key}' unreadable ({exc})") from None
    else:
        state = read_torch_state(ref.path)
        if ref.key not in state:
            raise SAEFileError(f"{ref.path}: missing tensor '{ref.key}'")
        t = state[ref.key]
        if not isinstance(t, torch.Tensor):
            raise SAEFileError(
                f"{ref.path}: '{ref.key}' is a {type(t).__name__}; expected a tensor"
            )
        t = t.to(device=device)
    if dtype is not None:
        t = t.to(dtype=dtype)
    if ref.transposed:
        t = t.T
    if ref.scale != 1.0:
        t = t * ref.scale
    if ref.broadcast:
        t = t.reshape(()).expand(ref.broadcast)
    return t.contiguous()


def check_tensor_shapes(
    cfg: SAEConfig,
    tensors: dict[str, TensorRef],
    stored: dict[str, tuple[int, ...]],
    cfg_source: str,
) -> None:
    """Check that ``tensors`` (SAELens name -> ref) are exactly the architecture's parameters and
    that each stored shape, read through the ref, is the expected one.

    ``stored`` maps each SAELens name to the shape of the tensor as it lies in its file.

    Raises:
        SAEFileError: naming the file, the tensor's key in it and the expected shape.
    """
    cls = sae_class(cfg.architecture)
    expected = cls.param_shapes(cfg)
    missing = [k for k in expected if k not in tensors]
    extra = sorted(k for k in tensors if k not in expected)
    if missing or extra:
        files = sorted({str(r.path) for r in tensors.values()}) or ["(no weights file)"]
        raise SAEFileError(
            f"{', '.join(files)}: tensors do not match architecture {cfg.architecture!r} "
            f"(from {cfg_source}): missing {missing}, unexpected {extra}; expected {list(expected)}"
        )
    for name, want in expected.items():
        ref = tensors[name]
        shape = stored[name]
        if ref.broadcast:
            got: tuple[int, ...] = (ref.broadcast,) if math.prod(shape) == 1 else shape
        else:
            got = shape[::-1] if ref.transposed else shape
        if tuple(got) != tuple(want):
            label = f"'{ref.key}'" if ref.key == name else f"'{ref.key}' (saelab's {name})"
            file_want = list(want[::-1]) if ref.transposed else list(want)
            raise SAEFileError(
                f"{ref.path}: tensor {label} has shape {list(shape)}; expected {file_want} for "
                f"d_in={cfg.d_in}, d_sae={cfg.d_sae} (from {cfg_source})"
            )


def check_finite(t: torch.Tensor, name: str, path: Path, label: str | None = None) -> None:
    """Raise SAEFileError if ``t`` has NaN/inf; scans in chunks so the mask stays small.

    ``label`` replaces ``'name'`` in the message (e.g. the key in the file and saelab's name).
    """
    flat = t.reshape(-1)
    n_bad, first = 0, -1
    for start in range(0, flat.numel(), _FINITE_CHECK_CHUNK):
        bad = ~torch.isfinite(flat[start : start + _FINITE_CHECK_CHUNK])
        count = int(bad.sum())
        if count and first < 0:
            first = start + int(bad.nonzero()[0, 0])
        n_bad += count
    if n_bad:
        raise SAEFileError(
            f"{path}: tensor {label or repr(name)} has {n_bad} non-finite value(s) (first at flat "
            f"index {first}); expected finite weights"
        )


def build_sae_from_state(
    cfg: SAEConfig,
    state: dict[str, torch.Tensor],
    device: str | torch.device,
    files: dict[str, Path] | None = None,
) -> SAE:
    """The registered SAE for ``cfg`` holding ``state`` (SAELens names), weights allocated once.

    Built on the ``meta`` device and filled with ``load_state_dict(assign=True)`` (as SAELens'
    ``load_from_disk``). ``files`` names the file each tensor came from: those tensors are checked
    for NaN/inf first (None: already checked).
    """
    cls = sae_class(cfg.architecture)
    for name, t in state.items():
        if files is not None:
            check_finite(t, name, files.get(name, Path("?")))
    sae = cls(cfg, device="meta")
    sae.load_state_dict(state, strict=True, assign=True)
    return sae.to(device=device)


def load_refs(
    cfg: SAEConfig,
    tensors: dict[str, TensorRef],
    device: str | torch.device = "cpu",
    dtype: Any = None,
) -> SAE:
    """Materialise the SAE whose parameters ``tensors`` points at (the loader of most formats).

    Args:
        cfg: inference config; ``cfg.dtype`` is the parameter dtype unless ``dtype`` overrides it.
        tensors: SAELens parameter name -> where it lives.
        device: where the weights go.
        dtype: dtype name or ``torch.dtype`` overriding ``cfg.dtype``.
    """
    cfg = copy.deepcopy(cfg)
    if dtype is not None:
        cfg.dtype = canonical_dtype(dtype, source="load(dtype=...)")
    torch_dtype = DTYPES[cfg.dtype]
    state = {}
    for name, ref in tensors.items():
        state[name] = read_tensor(ref, device, torch_dtype)
        label = f"'{ref.key}'" + ("" if ref.key == name else f" (saelab's {name})")
        check_finite(state[name], name, ref.path, label)
    return build_sae_from_state(cfg, state, device)


def open_ref_folder(
    format_name: str,
    cfg: SAEConfig,
    refs: dict[str, TensorRef],
    folder: Path,
    cfg_path: Path,
    weights_path: Path,
    source: str | None,
    what: str,
) -> SAEFiles:
    """:class:`SAEFiles` of a folder holding one config file and one weights file whose every
    parameter is a :class:`TensorRef` in ``refs`` (loader: :func:`load_refs`).

    The identity covers ``cfg_path`` and ``weights_path``; ``what`` names the SAE in the log line
    ``loaded {what} from {folder}``.
    """

    def loader(device: str | torch.device = "cpu", dtype: Any = None) -> SAE:
        sae = load_refs(cfg, refs, device, dtype)
        log.info("loaded %s from %s", what, folder)
        return sae

    return SAEFiles(
        cfg=cfg,
        tensors=refs,
        files=[cfg_path, weights_path],
        format=format_name,
        source=source or str(folder),
        identity=sae_identity(format_name, [cfg_path, weights_path], folder),
        loader=loader,
    )


def hash_file_memo(path: Path) -> str:
    """Content hash of a file, memoised in-process by (path, size, mtime, inode).

    A ``.json`` file is hashed by its parsed content (``stable_hash``: key order and whitespace do
    not count); any other file by the SHA-256 of its bytes.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASH_MEMO:
        digest = None
        if path.suffix == ".json":
            try:
                digest = "json:" + stable_hash(json.loads(path.read_text(encoding="utf-8")), 64)
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
                digest = None
        _HASH_MEMO[key] = digest or hash_file(path)
    return _HASH_MEMO[key]


def sae_identity(
    format_name: str, files: list[Path], root: Path, options: dict[str, Any] | None = None
) -> str:
    """Identity of an SAE: ``stable_hash`` of the format, :data:`CONVERTER_VERSION`, the content
    hash (:func:`hash_file_memo`) of every file that decides its codes (named relative to ``root``, so moving the folder keeps it) and
    the reader's ``options`` (config overrides, folded constants, release coordinates)."""
    digests = {}
    for p in files:
        try:
            name = p.relative_to(root).as_posix()
        except ValueError:
            name = p.name
        digests[name] = hash_file_memo(p)
    return stable_hash(
        {
            "format": format_name,
            "converter": CONVERTER_VERSION,
            "files": digests,
            "options": options or {},
        },
        length=24,
    )
