"""SAELens releases: ``{release, sae_id}`` resolved through ``sae_lens`` and the Hugging Face cache.

The release is looked up in sae_lens' bundled directory (``pretrained_saes.yaml``, through
``sae_lens.loading.pretrained_saes_directory``: repo id, folder, converter, config overrides,
``norm_scaling_factor``). Files come from ``huggingface_hub.hf_hub_download``, so with
``HF_HUB_OFFLINE=1`` they are read from the local hub cache (``HF_HUB_CACHE`` / ``HF_HOME``,
``models--org--name/snapshots/<rev>/...`` with ``refs/main``) and nothing is downloaded.

Releases whose converter is ``sae_lens``, ``dictionary_learning_1`` or ``sparsify`` are opened with
saelab's own readers on the cached folder (nothing loaded until :meth:`SAEFiles.load`). Any other
converter (Gemma Scope's ``gemma_2``, ``llama_scope``, ...) is run by sae_lens itself when the SAE
is loaded (``SAE.from_pretrained_with_cfg_and_sparsity``) and its state dict handed to saelab; such
an SAE's identity covers its config, release coordinates and the cached hub revision.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
import json
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from saelab.errors import SAEFileError, SaelabError
from saelab.sae.base import CORE_KEYS, SAE, SAEConfig, check_config, sae_class
from saelab.sae.formats.base import SAEFiles, build_sae_from_state, sae_identity

log = logging.getLogger(__name__)

FORMAT = "release"
#: Converters whose files saelab reads itself -> the files each needs (optional ones last).
_OWN_READERS = {
    "sae_lens": ("cfg.json", "sae_weights.safetensors"),
    "dictionary_learning_1": ("config.json", "ae.pt"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}


def _sae_lens() -> tuple[ModuleType, ModuleType]:
    """sae_lens' directory and loader modules; SaelabError when sae_lens is not installed."""
    if importlib.util.find_spec("sae_lens") is None:
        raise SaelabError(
            "loading an SAE by {release, sae_id} needs the sae-lens package "
            "(pip install sae-lens); or download the SAE folder and give its 'path'"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        directory = importlib.import_module("sae_lens.loading.pretrained_saes_directory")
        loaders = importlib.import_module("sae_lens.loading.pretrained_sae_loaders")
    return directory, loaders


def _hub_file(repo_id: str, filename: str, *, optional: bool = False) -> Path | None:
    """Local path of ``filename`` of hub repo ``repo_id`` (from the cache when offline)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError as exc:
        if optional:
            return None
        where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
        mode = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise SAEFileError(
            f"{repo_id}/{filename}: not in {where}{mode} and could not be downloaded "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    except EntryNotFoundError:
        if optional:
            return None
        raise SAEFileError(f"{repo_id}/{filename}: no such file in the hub repo") from None
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        if optional:
            log.debug("optional %s/%s unavailable: %s", repo_id, filename, exc)
            return None
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SAEFileError(
            f"{repo_id}/{filename}: cannot download ({type(exc).__name__}: {first})"
        ) from None


def _hub_revision(repo_id: str) -> str | None:
    """The commit ``refs/main`` points at in the local hub cache, if cached."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def resolve_release(release: str, sae_id: str) -> dict[str, Any]:
    """sae_lens' coordinates of a release SAE: repo id, folder, converter, overrides, norm factor.

    Raises:
        SaelabError: sae_lens is not installed.
        SAEFileError: unknown release or sae_id (with the closest names).
    """
    directory, loaders = _sae_lens()
    entries = directory.get_pretrained_saes_directory()
    if release not in entries:
        if "/" not in release:
            close = difflib.get_close_matches(release, list(entries), n=5)
            raise SAEFileError(
                f"release {release!r}: not in sae_lens' pretrained SAE directory and not a hub "
                f"repo id (org/name); closest: {close}"
            )
    elif sae_id not in entries[release].saes_map:
        ids = list(entries[release].saes_map)
        close = difflib.get_close_matches(sae_id, ids, n=5) or ids[:5]
        raise SAEFileError(
            f"release {release!r}: sae_id {sae_id!r} not found ({len(ids)} ids); e.g. {close}"
        )
    try:
        conversion = loaders.get_conversion_loader_name(release)
    except ValueError as exc:
        raise SAEFileError(f"release {release!r}: {exc}") from None
    repo_id, folder = directory.get_repo_id_and_folder_name(release, sae_id)
    return {
        "release": release,
        "sae_id": sae_id,
        "repo_id": repo_id,
        "folder": str(folder).strip("/"),
        "conversion": conversion,
        "overrides": directory.get_config_overrides(release, sae_id),
        "norm_scaling_factor": directory.get_norm_scaling_factor(release, sae_id),
    }


def open_release(release: str, sae_id: str) -> SAEFiles:
    """Open SAE ``sae_id`` of SAELens release ``release`` (a directory name or a hub repo id).

    Raises:
        SaelabError: sae_lens is not installed.
        SAEFileError: unknown release / sae_id, files neither cached nor downloadable, bad files.
    """
    coords = resolve_release(release, sae_id)
    source = f"{release}/{sae_id}"
    if coords["conversion"] not in _OWN_READERS:
        return open_with_sae_lens(coords)
    from saelab.sae.formats import dictionary_learning, saelens, sparsify

    folder = coords["folder"]
    needed = _OWN_READERS[coords["conversion"]]
    paths = [_hub_file(coords["repo_id"], f"{folder}/{n}" if folder else n) for n in needed]
    local = paths[0].parent  # type: ignore[union-attr]
    options = {k: coords[k] for k in ("release", "sae_id", "repo_id", "folder", "conversion")}
    if coords["conversion"] == "sae_lens":
        _hub_file(
            coords["repo_id"],
            f"{folder}/sparsity.safetensors" if folder else "sparsity.safetensors",
            optional=True,
        )
        files = saelens.open_saelens(
            local,
            cfg_overrides=coords["overrides"],
            norm_scaling_factor=coords["norm_scaling_factor"],
            source=source,
            options=options,
        )
    else:
        if coords["conversion"] == "dictionary_learning_1":
            files = dictionary_learning.open_dictionary_learning(local, source=source)
        else:
            files = sparsify.open_sparsify(local, source=source)
        _apply_overrides(files, coords["overrides"], source)
        files.identity = sae_identity(
            FORMAT,
            files.files,
            local,
            {**options, "reader": files.format, "overrides": coords["overrides"]},
        )
    files.extra.update(release=release, sae_id=sae_id, repo_id=coords["repo_id"])
    files.format = FORMAT
    return files


def _apply_overrides(files: SAEFiles, overrides: dict[str, Any], source: str) -> None:
    """A release's ``config_overrides``: config keys replace the config's, others go to metadata."""
    if not overrides:
        return
    cfg = copy.deepcopy(files.cfg)
    arch_fields = sae_class(cfg.architecture).arch_fields
    for key, value in overrides.items():
        if key in CORE_KEYS and key not in ("architecture", "metadata", "device"):
            setattr(cfg, key, value)
        elif key in arch_fields:
            cfg.arch[key] = value
        else:
            cfg.metadata[key] = value
    files.cfg = check_config(cfg, f"release {source} config_overrides")


def open_with_sae_lens(coords: dict[str, Any]) -> SAEFiles:
    """An SAE that sae_lens' own converter reads (``coords`` from :func:`resolve_release`).

    Only the config is fetched now (sae_lens' config getter); the weights are converted by
    ``SAE.from_pretrained_with_cfg_and_sparsity`` when the SAE is loaded. ``tensors`` is empty.
    """
    _, loaders = _sae_lens()
    import sae_lens

    release, sae_id = coords["release"], coords["sae_id"]
    source = f"{release}/{sae_id}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = loaders.load_sae_config_from_huggingface(release, sae_id)
    except SaelabError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SAEFileError(
            f"release {source}: sae_lens could not read its config ({type(exc).__name__}: {first})"
        ) from None
    cfg = _config_from_sae_lens(raw, coords["norm_scaling_factor"], sae_lens.__version__, source)
    options = {
        **{k: coords[k] for k in ("release", "sae_id", "repo_id", "folder", "conversion")},
        "config": json.loads(json.dumps(raw, default=str)),
        "revision": _hub_revision(coords["repo_id"]),
        "sae_lens": sae_lens.__version__,
    }

    def loader(device: str | torch.device = "cpu", dtype: Any = None) -> SAE:
        from saelab.sae.base import canonical_dtype

        want = canonical_dtype(dtype or cfg.dtype, source="load(dtype=...)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sl_sae, _, _ = sae_lens.SAE.from_pretrained_with_cfg_and_sparsity(
                    release, sae_id, device=str(device), dtype=want
                )
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise SAEFileError(
                f"release {source}: sae_lens could not load it ({type(exc).__name__}: {first})"
            ) from None
        d = sl_sae.cfg.to_dict()
        loaded = _config_from_sae_lens(d, None, sae_lens.__version__, source)
        loaded.dtype = want
        state = {k: v.detach() for k, v in sl_sae.state_dict().items()}
        return build_sae_from_state(loaded, state, device, {})

    return SAEFiles(
        cfg=cfg,
        tensors={},
        files=[],
        format=FORMAT,
        source=source,
        identity=sae_identity(FORMAT, [], Path("."), options),
        loader=loader,
        extra={"release": release, "sae_id": sae_id, "repo_id": coords["repo_id"]},
    )


def _config_from_sae_lens(
    raw: dict[str, Any], norm_scaling_factor: float | None, version: str, source: str
) -> SAEConfig:
    """saelab config from a sae_lens config dict (v6 ``to_dict`` or a converter's flat dict)."""
    d = copy.deepcopy(raw)
    if not isinstance(d.get("metadata"), dict):
        d["metadata"] = {}
    if d["metadata"].get("sae_lens_version") is None:
        d["metadata"]["sae_lens_version"] = version  # already in v6 layout: no pre-6 conversion
    if d.get("normalize_activations") == "expected_average_only_in" and norm_scaling_factor:
        d["normalize_activations"] = "none"  # sae_lens folds the factor when loading
    return SAEConfig.from_saelens_dict(d, source=f"release {source}")
