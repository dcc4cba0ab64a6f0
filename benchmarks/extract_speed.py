"""Benchmark: saelab's ``extract`` against the plain ``transformers`` way, same texts and model.

The plain way (what sae-probes and most notebooks do, sae_probes_spec.md §1.5 and §7.1): unsorted
batches of 32, a full-depth ``model(**batch, output_hidden_states=True)``, pooled from
``hidden_states[L + 1]``. saelab's way: one tokenisation, length-sorted batches, forward stopped
after block L. Both pool the same way (mean over real tokens, MiniLM's own pooling, or last token),
truncate on the left to the same limit, and the pooled outputs are compared.

Usage: ``python benchmarks/extract_speed.py [--n-texts N] [--layer L] [--repeats R]``.
Writes its section of ``benchmarks/RESULTS.md`` between the extract_speed markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from results_md import RESULTS, write_section

from saelab.activations import DEFAULT_MODEL, extract, load_model, pool_last, pool_mean
from saelab.activations.extract import resolve_max_length
from saelab.activations.model import ModelHandle

T = TypeVar("T")


def sample_texts(n_texts: int, seed: int) -> list[str]:
    """``n_texts`` prompts drawn uniformly (fixed seed) from all rows of the paper's 113 datasets.

    Uniform over rows, so the length mix is the paper's workload: mostly short prompts, a tail of
    long news and code texts.
    """
    from saelab.data import list_bundled, load_dataset

    pool: list[str] = []
    for info in list_bundled():
        pool.extend(load_dataset(info.name).prompts)
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n_texts, len(pool)), replace=False)]


def plain_extract(
    handle: ModelHandle, texts: list[str], layer: int, pooling: str, max_length: int
) -> tuple[torch.Tensor, int, int]:
    """The plain way: unsorted batches of 32, full forward, ``hidden_states[layer + 1]``.

    Returns the pooled ``[N, d]`` float32, the number of real tokens and of positions computed
    (real + padding).
    """
    tokenizer, model = handle.tokenizer, handle.model
    previous, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    pool = pool_mean if pooling == "mean" else pool_last
    pooled, n_real, n_positions = [], 0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(texts), 32):
                batch = tokenizer(
                    texts[start : start + 32],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(handle.device)
                hidden = model(**batch, output_hidden_states=True).hidden_states[layer + 1]
                mask = batch["attention_mask"]
                pooled.append(pool(hidden, mask).float().cpu())
                n_real += int(mask.sum())
                n_positions += mask.numel()
    finally:
        tokenizer.truncation_side = previous
    return torch.cat(pooled), n_real, n_positions


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of one call, and its result."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--pooling", choices=["mean", "last"], default="mean")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)

    handle = load_model(args.model)
    texts = sample_texts(args.n_texts, args.seed)
    max_length = resolve_max_length(handle, None)
    layer, pooling = handle.check_layer(args.layer), args.pooling

    def ours() -> torch.Tensor:
        return extract(
            handle,
            texts,
            [layer],
            pooling,
            max_length=max_length,
            batch_size=args.batch_size,
            progress=False,
            include_special_tokens=True,  # the plain way averages every real token
        )[layer].pooled

    def plain() -> tuple[torch.Tensor, int, int]:
        return plain_extract(handle, texts, layer, pooling, max_length)

    load_before = os.getloadavg()[0]
    warm = texts[:64]
    plain_extract(handle, warm, layer, pooling, max_length)
    extract(handle, warm, [layer], pooling, max_length=max_length, progress=False)
    # Alternate the two so that a change in machine load hits both alike; keep the best of each.
    plain_times, our_times = [], []
    for i in range(max(1, args.repeats)):
        seconds, (ref, n_tokens, n_positions) = timed(plain)
        plain_times.append(seconds)
        seconds, got = timed(ours)
        our_times.append(seconds)
        print(
            f"run {i + 1}: plain {plain_times[-1]:.2f} s, saelab {our_times[-1]:.2f} s", flush=True
        )
    t_plain, t_ours = min(plain_times), min(our_times)
    load_after = os.getloadavg()[0]
    diff = float((ref - got).abs().max())
    tps_plain, tps_ours = n_tokens / t_plain, n_tokens / t_ours
    ratio = tps_ours / tps_plain

    dtype_name = str(handle.dtype).removeprefix("torch.")
    machine = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores "
        f"({torch.get_num_threads()} torch threads), device {handle.device}, torch "
        f"{torch.__version__}, Python {platform.python_version()}; load average "
        f"{load_before:.1f} before the run, {load_after:.1f} after it (1-minute averages, the "
        "benchmark's own load included)"
    )
    report = "\n".join(
        [
            "## Activation extraction speed (`benchmarks/extract_speed.py`)",
            "",
            f"- Date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- Machine: {machine}",
            f"- Model: {handle.name} ({handle.model_id}), {dtype_name}, layer {layer} of "
            f"{handle.n_layers}, {pooling} pooling, max_length {max_length}, left truncation",
            f"- Texts: {len(texts)} prompts (seed {args.seed}) drawn uniformly from the 334,092 "
            f"rows of the paper's 113 bundled datasets; {n_tokens} real tokens",
            f"- Timing: one warm-up on 64 texts, then best of {args.repeats} runs each, the two "
            "methods alternating",
            "",
            "| method | seconds | real tokens/s |",
            "|---|---:|---:|",
            f"| plain: unsorted batches of 32, full forward, `output_hidden_states=True` "
            f"| {t_plain:.2f} | {tps_plain:,.0f} |",
            f"| saelab `extract` (batch_size {args.batch_size}) | {t_ours:.2f} | {tps_ours:,.0f} |",
            "",
            f"**Speed-up: {ratio:.2f}x** (goal >= 1.5x). Pooled outputs agree: max abs diff "
            f"{diff:.2e}.",
            "",
            f"Where the time goes: the plain way computes {n_positions / n_tokens:.2f} positions "
            f"per real token (padding to the longest text of each unsorted batch) through all "
            f"{handle.n_layers} blocks; saelab sorts by length (almost no padding) and stops after "
            f"block {layer} ({layer + 1} of {handle.n_layers} blocks).",
        ]
    )
    print(report)
    if not args.no_write:
        write_section("extract_speed", report)
        print(f"\nwrote {RESULTS}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
