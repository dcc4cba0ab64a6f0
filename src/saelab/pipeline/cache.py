"""What the cache holds (activations, trained SAEs), how big, when last used, and pruning it.

Layout under the cache root (``$SAELAB_CACHE``, ``~/.cache/saelab`` or a config's ``cache_dir``):
``activations/<model>/<key>.safetensors`` (one layer of one text set) and ``saes/<key>/`` (one
trained SAE in SAELens format). A run sets an entry's modification time when it reads it, so that
time is "last used". Pruning removes whole entries, least recently used first; a run that needs a
removed entry recomputes it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

log = logging.getLogger(__name__)


@dataclass
class CacheEntry:
    """One cache entry: ``kind`` (``activations`` or ``sae``), its path, size, last use, summary."""

    kind: str
    path: Path
    bytes: int
    last_used: float
    what: str


def _activation_summary(path: Path) -> str:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            parts = json.loads((fh.metadata() or {}).get("saelab.key_parts", "{}"))
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    tokens = " + tokens" if parts.get("keep_tokens") else ""
    return (
        f"{parts.get('model_id', '?')} layer {parts.get('layer', '?')}, "
        f"{parts.get('n_texts', '?')} texts, {parts.get('pooling', '?')} pooling{tokens}"
    )


def _sae_summary(folder: Path) -> str:
    try:
        cfg = json.loads((folder / "cfg.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__})"
    meta = cfg.get("metadata") or {}
    return (
        f"{cfg.get('architecture', '?')} SAE {meta.get('saelab_sae_id', '')} "
        f"d_in {cfg.get('d_in', '?')} -> {cfg.get('d_sae', '?')}, {meta.get('hook_name', '?')}"
    ).replace("  ", " ")


def list_cache(root: Path) -> list[CacheEntry]:
    """Every entry under ``root``, most recently used first."""
    root = Path(root)
    entries: list[CacheEntry] = []
    for path in sorted((root / "activations").glob("*/*.safetensors")):
        st = path.stat()
        entries.append(
            CacheEntry("activations", path, st.st_size, st.st_mtime, _activation_summary(path))
        )
    for folder in sorted(p for p in (root / "saes").glob("*") if p.is_dir()):
        files = [f for f in folder.rglob("*") if f.is_file()]
        used = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
        size = sum(f.stat().st_size for f in files)
        entries.append(CacheEntry("sae", folder, size, used, _sae_summary(folder)))
    entries.sort(key=lambda e: e.last_used, reverse=True)
    return entries


def parse_size(text: str) -> int:
    """``"500MB"``, ``"2G"``, ``"1.5GiB"``, ``"123"`` -> bytes (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1] if raw and raw[-1] in units else ""
    number = raw[:-1] if unit else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"size {text!r}: expected a number with an optional K/M/G/T unit"
        ) from None
    if value < 0:
        raise ValueError(f"size {text!r}: expected a size >= 0")
    return int(value * units[unit])


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"45m"``, ``"90s"`` -> seconds (a bare number is days)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    raw = text.strip().lower()
    unit = raw[-1] if raw and raw[-1] in units else "d"
    number = raw[:-1] if raw and raw[-1] in units else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"age {text!r}: expected a number with an optional s/m/h/d/w unit"
        ) from None
    return value * units[unit]


def prune_cache(
    root: Path,
    max_bytes: int | None = None,
    older_than: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[CacheEntry]:
    """Remove entries unused for ``older_than`` seconds, then the least recently used ones until
    the cache holds at most ``max_bytes``. Returns what was (or, with ``dry_run``, would be)
    removed."""
    now = time.time() if now is None else now
    entries = list_cache(root)
    doomed: list[CacheEntry] = []
    keep: list[CacheEntry] = []
    for e in entries:
        (doomed if older_than is not None and now - e.last_used > older_than else keep).append(e)
    if max_bytes is not None:
        total = sum(e.bytes for e in keep)
        for e in sorted(keep, key=lambda e: e.last_used):  # least recently used first
            if total <= max_bytes:
                break
            doomed.append(e)
            total -= e.bytes
    if not dry_run:
        for e in doomed:
            if e.kind == "sae":
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                e.path.unlink(missing_ok=True)
            log.info("removed %s %s (%d bytes)", e.kind, e.path, e.bytes)
    return doomed
