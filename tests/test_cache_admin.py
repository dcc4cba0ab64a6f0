"""``saelab cache``: list the cache (what, size, last used) and prune it by age or size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from saelab.pipeline.cache import list_cache, parse_age, parse_size, prune_cache


def _entries(root, now):
    """Two activation files and one SAE folder, last used 1, 10 and 40 days ago."""
    acts = root / "activations" / "tiny-model"
    acts.mkdir(parents=True)
    paths = []
    for name, days, rows in (("a", 1, 10), ("b", 40, 50)):
        parts = {"model_id": "tiny@1", "layer": 2, "n_texts": rows, "pooling": "mean"}
        path = acts / f"{name}.safetensors"
        save_file(
            {"pooled": torch.zeros(rows, 8)},
            str(path),
            metadata={"saelab.key_parts": json.dumps(parts)},
        )
        os.utime(path, (now - days * 86400,) * 2)
        paths.append(path)
    sae = root / "saes" / "key1"
    sae.mkdir(parents=True)
    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 32, "metadata": {"hook_name": "h"}}
    (sae / "cfg.json").write_text(json.dumps(cfg))
    (sae / "sae_weights.safetensors").write_bytes(b"x" * 1000)
    for f in sae.iterdir():
        os.utime(f, (now - 10 * 86400,) * 2)
    return paths, sae


def test_list_and_prune_by_age_then_size(tmp_path):
    now = time.time()
    (recent, old), sae = _entries(tmp_path, now)
    entries = list_cache(tmp_path)
    assert [e.path for e in entries] == [recent, sae, old]  # most recently used first
    assert entries[0].what == "tiny@1 layer 2, 10 texts, mean pooling"
    assert entries[1].kind == "sae" and "topk" in entries[1].what and entries[1].bytes > 1000
    assert entries[2].bytes == old.stat().st_size
    # dry run removes nothing
    gone = prune_cache(tmp_path, older_than=30 * 86400, dry_run=True, now=now)
    assert [e.path for e in gone] == [old] and old.exists()
    gone = prune_cache(tmp_path, older_than=30 * 86400, now=now)
    assert [e.path for e in gone] == [old] and not old.exists()
    # to fit a size, the least recently used go first: the SAE (10 days) before the 1-day file
    gone = prune_cache(tmp_path, max_bytes=recent.stat().st_size, now=now)
    assert [e.path for e in gone] == [sae] and not sae.exists() and recent.exists()
    assert [e.path for e in list_cache(tmp_path)] == [recent]


def test_sizes_and_ages_parse():
    assert parse_size("2GB") == 2 << 30 and parse_size("1.5K") == 1536 and parse_size("7") == 7
    assert parse_size("500MiB") == 500 << 20
    assert (
        parse_age("30d") == 30 * 86400
        and parse_age("12h") == 12 * 3600
        and parse_age("2") == 2 * 86400
    )
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")
    with pytest.raises(ValueError, match="age"):
        parse_age("soon")


def test_cli_lists_and_prunes(tmp_path):
    (_recent, old), sae = _entries(tmp_path, time.time())

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "saelab.cli", "cache", *args, "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    shown = cli()
    assert shown.returncode == 0, shown.stderr
    assert "3 entries" in shown.stdout and "tiny@1 layer 2" in shown.stdout
    dry = cli("prune", "--older-than", "20d", "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout and old.exists()
    done = cli("prune", "--older-than", "20d")
    assert done.returncode == 0 and not old.exists() and sae.exists()
    bad = cli("prune", "--max-size", "lots")
    assert bad.returncode == 2 and "size 'lots'" in bad.stderr and "Traceback" not in bad.stderr
    none = cli("prune")
    assert none.returncode == 2 and "--max-size" in none.stderr
