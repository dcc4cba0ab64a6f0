"""``saelab sae train``: texts -> token activations at one hook -> SAEs, outside a probing run.

Texts come from bundled datasets (by name, or ``all``) and from text files: ``.txt`` (one text per
non-empty line) or one column of a ``.csv`` / ``.parquet`` file. They are shuffled (seeded) and
run through the model in chunks until ``max_tokens`` non-special tokens are collected (special
tokens such as CLS, SEP and BOS are left out, as SAE training does). Every SAE of the config then
trains on those tokens and is saved under ``<out>/<id>/`` in SAELens format with
``sparsity.safetensors``, ``training.json`` and ``metrics.jsonl``; ``<out>/<id>.work/`` holds its
checkpoint while it trains, so a rerun resumes, and an SAE already saved with the same config and
corpus is kept. Example config (``saelab sae train sweep.yaml --out runs/sweep``)::

    model: {name: all-MiniLM-L6-v2}
    hook: blocks.3.hook_resid_post        # or blocks.3.hook_mlp_out / hook_attn_out
    datasets: [92_glue_sst2, 5_hist_fig_ismale]
    files: [{path: corpus.parquet, column: text}, {path: notes.txt}]
    max_tokens: 400000
    saes:
      topk32: {architecture: topk, k: 32}
      btk32: {architecture: batchtopk, k: 32}          # saved as jumprelu
      jump: {architecture: jumprelu, l0_coefficient: 1.0}
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saelab.errors import DatasetError
from saelab.sae.training.loop import save_trained, train_sae

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".csv", ".parquet")
_CHUNK_TEXTS = 256


def read_text_file(path: str | Path, column: str | None = None) -> list[str]:
    """Texts of a file: ``.txt`` lines (non-empty), or column ``column`` of a CSV / Parquet file
    (default ``prompt``; missing values dropped). DatasetError naming the file otherwise."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{p}: text file not found")
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DatasetError(f"{p}: unsupported text file; expected one of {list(TEXT_SUFFIXES)}")
    try:
        if suffix == ".txt":
            if column is not None:
                raise DatasetError(f"{p}: a .txt file has no columns (got column {column!r})")
            texts = [line for line in p.read_text("utf-8").splitlines() if line.strip()]
        else:
            col = column or "prompt"
            if suffix == ".csv":
                header = pd.read_csv(p, nrows=0).columns
            else:
                import pyarrow.parquet as pq

                header = pq.read_schema(p).names
            if col not in header:
                raise DatasetError(f"{p}: no column {col!r}; columns are {list(header)}")
            frame = (
                pd.read_csv(p, usecols=[col], dtype=str)
                if suffix == ".csv"
                else pd.read_parquet(p, columns=[col])
            )
            texts = [str(t) for t in frame[col].dropna() if str(t).strip()]
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{p}: cannot read texts ({type(exc).__name__}: {exc})") from None
    if not texts:
        raise DatasetError(f"{p}: no texts")
    return texts


def dataset_texts(
    ds: Any, rows: str = "all", seed: int = 42, max_train: int | None = None
) -> list[str]:
    """Texts of a loaded dataset: ``all`` rows, or the rows of the paper's normal split
    (``saelab.data.normal_split`` with ``seed``): ``train`` its training rows, ``test`` its test
    rows, so texts an SAE trains on never appear among those it is evaluated on."""
    if rows == "all":
        return list(ds.prompts)
    from saelab.data import normal_split
    from saelab.data.splits import MAX_TRAIN

    split = normal_split(
        ds.labels, seed=seed, max_train=max_train or MAX_TRAIN, dataset_name=ds.name
    )
    idx = split.train if rows == "train" else split.test
    return [ds.prompts[i] for i in idx]


def gather_texts(
    datasets: Sequence[str],
    files: Sequence[tuple[str, str | None]],
    max_rows: int = 5000,
    rows: str = "all",
    split_seed: int = 42,
) -> list[str]:
    """Texts of bundled datasets (names, or ``all`` for the 113; ``rows`` and ``split_seed`` as
    :func:`dataset_texts`) and of files ``(path, column)``."""
    from saelab.data import list_bundled, load_dataset

    names: list[str] = []
    for name in datasets:
        if name == "all":
            names.extend(info.name for info in list_bundled())
        else:
            names.append(name)
    texts: list[str] = []
    for name in dict.fromkeys(names):
        texts.extend(dataset_texts(load_dataset(name, max_rows=max_rows), rows, seed=split_seed))
    for path, column in files:
        texts.extend(read_text_file(path, column))
    return texts


def collect_tokens(
    handle: Any,
    texts: Sequence[str],
    hook: str | int,
    max_tokens: int,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Up to ``max_tokens`` non-special token activations ``[T, d_model]`` at ``hook``.

    Texts are visited in a seeded random order, a chunk at a time, so a large corpus is read only
    as far as needed.
    """
    from saelab.activations import extract, key_of

    key = key_of(hook)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    parts: list[torch.Tensor] = []
    have = 0
    bar = tqdm(total=max_tokens, desc="activation tokens", unit="tok", disable=not progress)
    for start in range(0, len(order), _CHUNK_TEXTS):
        chunk = [texts[i] for i in order[start : start + _CHUNK_TEXTS]]
        la = extract(
            handle,
            chunk,
            [hook],
            "mean",
            max_length=max_length,
            batch_size=batch_size,
            keep_tokens=True,
            progress=False,
        )[key]
        tokens = la.tokens if la.special is None else la.tokens[~la.special]
        tokens = tokens[: max_tokens - have]
        parts.append(tokens)
        have += int(tokens.shape[0])
        bar.update(int(tokens.shape[0]))
        if have >= max_tokens:
            break
    bar.close()
    if have == 0:
        raise DatasetError("the texts gave no non-special tokens to train on")
    return torch.cat(parts)


def corpus_key(run: Any) -> str:
    """Hash of what decides the training tokens: model, hook, texts (file contents), caps, seed."""
    from saelab.io import hash_file, stable_hash

    m = run.model
    return stable_hash(
        {
            "model": [m.name, m.revision, m.dtype, m.max_length],
            "hook": str(run.hook),
            "datasets": list(run.datasets),
            "files": [
                (
                    f.path,
                    f.column,
                    hash_file(Path(f.path).expanduser())
                    if Path(f.path).expanduser().is_file()
                    else None,
                )
                for f in run.files
            ],
            "max_rows": run.max_rows,
            "rows": run.rows,
            "split_seed": run.split_seed,
            "max_tokens": run.max_tokens,
            "seed": run.seed,
        }
    )


def train_saes_on_corpus(
    run: Any, out: str | Path, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Train every SAE of ``run`` (a ``saelab.config.SAETrainRunConfig``) into ``out``.

    Returns:
        ``{sae_id: training stats}`` (read back for SAEs already saved with the same config).
    """
    from saelab.activations import hook_name, load_model, parse_hook

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = corpus_key(run)
    todo, done = {}, {}
    for sae_id, tc in run.saes.items():
        stats_file = out / sae_id / "training.json"
        if (out / sae_id / "cfg.json").is_file() and stats_file.is_file():
            stats = json.loads(stats_file.read_text("utf-8"))
            if stats.get("config") == tc.model_dump(mode="json") and stats.get("corpus") == key:
                log.info("SAE %s: already trained in %s", sae_id, out / sae_id)
                done[sae_id] = stats
                continue
        todo[sae_id] = tc
    if not todo:
        return done
    m = run.model
    handle = load_model(
        m.name, device=m.device, dtype=m.dtype, revision=m.revision,
        trust_remote_code=m.trust_remote_code,
    )  # fmt: skip
    texts = gather_texts(
        run.datasets,
        [(f.path, f.column) for f in run.files],
        run.max_rows,
        run.rows,
        run.split_seed,
    )
    max_tokens = run.max_tokens or max(tc.max_tokens for tc in run.saes.values())
    acts = collect_tokens(
        handle, texts, run.hook, max_tokens, seed=run.seed, batch_size=m.batch_size,
        max_length=m.max_length, progress=progress,
    )  # fmt: skip
    log.info("%d texts -> %d tokens x %d at %s", len(texts), acts.shape[0], acts.shape[1], run.hook)
    hook = hook_name(*parse_hook(run.hook))
    for sae_id, tc in todo.items():
        work = out / f"{sae_id}.work"
        result = train_sae(
            acts,
            tc,
            device=handle.device,
            work_dir=work,
            progress=progress,
            metadata={"hook_name": hook, "model_name": m.name, "saelab_sae_id": sae_id},
        )
        result.stats["tokens_collected"] = int(acts.shape[0])
        result.stats["corpus"] = key
        save_trained(result, out / sae_id, work)
        done[sae_id] = result.stats
    return done
