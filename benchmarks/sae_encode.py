"""Benchmark: encoding with 1M-wide SAEs in bounded memory, and encode throughput vs dense matmul.

(a) Memory. A 1,048,576-latent JumpReLU SAE with random weights in bf16 is written as a SAELens
folder (``cfg.json`` + ``sae_weights.safetensors``, W_enc + W_dec = 9.7 GB at d_in 2304, 15 GB at
d_in 3584) without ever holding a weight matrix in memory: the safetensors header first, then the
tensor bytes block by block (W_dec rows contiguous, W_enc columns as strided writes). Decoder rows
are unit-norm Gaussian directions and ``W_enc = W_dec^T`` (SAELens' tied initialisation); JumpReLU
thresholds are per latent, ``mean_j + z std_j`` of the pre-activation over a sample of the
benchmark activations with ``P(N(0,1) > z) = 100 / d_sae``, so the mean L0 is about 100. The TopK
SAE (k = 100) uses the same weights file through hand-built ``SAEFiles`` (so the file is written
once per width). Each encode of the random activations ``[rows, d_in]`` (``pooling="last"``) runs
in its own subprocess; its peak resident set, mapped pages included, is ``ru_maxrss`` from
``os.wait4``. Beside it, in the same run, the peer's way in a subprocess under ``RLIMIT_AS``: the
whole SAE loaded with ``sae_lens.SAE.load_from_disk`` and dense ``[rows, d_sae]`` codes from
``sae.encode``; its peak or its failure is reported.

(b) Throughput at width 65,536, d_in 2304 (gemma-2-2b's width), JumpReLU and TopK (k 64), float32
and bfloat16: ``encode_rows`` of ``rows`` activations against a plain ``torch.matmul`` of the same
shapes (the encoder's row chunks ``[chunk, d_in] @ [d_in, 65536]``), both FLOP-counted as
``2 rows d_in d_sae`` and timed best-of-``repeats``, alternating; also streamed from a SAELens file.

Usage: ``python benchmarks/sae_encode.py [--quick] [--tmp DIR] [--d-ins 2304,3584] [--rows N]``.
Files go under ``--tmp`` (default /work/bench_tmp) and are deleted at the end. The full run writes
its section of ``benchmarks/RESULTS.md``; ``--quick`` (small sizes) only prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

GB = 1e9
TARGET_L0 = 100
TOPK_K = 100
MEMORY_GOAL = 3 * GB


# ----- writing a wide SAE without holding it ----------------------------------------------------
def _safetensors_header(tensors: list[tuple[str, str, list[int]]]) -> tuple[bytes, dict, int]:
    """Header bytes (8-byte length + JSON padded to 8 bytes) for tensors laid out in order.

    Returns the bytes, ``{name: absolute byte offset}`` and the total file size.
    """
    item = {"BF16": 2, "F16": 2, "F32": 4}
    meta: dict = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, dtype, shape in tensors:
        n = item[dtype] * math.prod(shape)
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    head = len(raw).to_bytes(8, "little") + raw
    starts = {name: len(head) + meta[name]["data_offsets"][0] for name, _, _ in tensors}
    return head, starts, len(head) + pos


def write_wide_sae(
    folder: Path, d_in: int, d_sae: int, sample: torch.Tensor, block: int = 16384, seed: int = 0
) -> float:
    """Write a random bf16 JumpReLU SAELens folder block by block; returns seconds taken.

    ``sample`` ``[s, d_in]``: activations whose per-latent pre-activation mean / std set the
    thresholds (``threshold_j = mean_j + z std_j``, ``P(N(0,1) > z) = TARGET_L0 / d_sae``).
    """
    from saelab.sae.base import SAEConfig

    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture="jumprelu",
        dtype="bfloat16",
        metadata={"hook_name": "blocks.12.hook_resid_post", "model_name": "random-benchmark"},
    )
    (folder / "cfg.json").write_text(json.dumps(cfg.to_saelens_dict(), indent=2) + "\n")
    layout = [
        ("W_enc", "BF16", [d_in, d_sae]),
        ("W_dec", "BF16", [d_sae, d_in]),
        ("b_enc", "BF16", [d_sae]),
        ("threshold", "BF16", [d_sae]),
        ("b_dec", "BF16", [d_in]),
    ]
    head, at, size = _safetensors_header(layout)
    z = statistics.NormalDist().inv_cdf(1 - TARGET_L0 / d_sae)
    gen = torch.Generator().manual_seed(seed)
    sample16 = sample.to(torch.bfloat16)
    path = folder / "sae_weights.safetensors"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, head, 0)
        zeros = torch.zeros(max(d_sae, d_in), dtype=torch.bfloat16).view(torch.int16).numpy()
        os.pwrite(fd, zeros[:d_sae].tobytes(), at["b_enc"])
        os.pwrite(fd, zeros[:d_in].tobytes(), at["b_dec"])
        for s in range(0, d_sae, block):
            e = min(s + block, d_sae)
            w = torch.randn(e - s, d_in, generator=gen)
            w /= w.norm(dim=1, keepdim=True)
            w16 = w.to(torch.bfloat16)  # W_dec[s:e]; W_enc[:, s:e] = its transpose
            del w
            os.pwrite(fd, w16.view(torch.int16).numpy().tobytes(), at["W_dec"] + s * d_in * 2)
            enc = w16.T.contiguous().view(torch.int16).numpy()  # [d_in, e - s]
            for r in range(d_in):
                os.pwrite(fd, enc[r].tobytes(), at["W_enc"] + (r * d_sae + s) * 2)
            h = (sample16 @ w16.T).float()  # [s, e - s]
            thr = (h.mean(0) + z * h.std(0)).to(torch.bfloat16)
            os.pwrite(fd, thr.view(torch.int16).numpy().tobytes(), at["threshold"] + s * 2)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def hand_files(folder: Path, architecture: str):
    """SAEFiles over the benchmark's weights file, built by hand (``open_sae`` would also hash the
    whole file for the SAE's identity, which is not what is measured here). ``topk`` reads the
    same W_enc / b_enc / W_dec / b_dec (the file's threshold is not one of its tensors)."""
    from saelab.sae.base import SAEConfig
    from saelab.sae.formats.base import SAEFiles, TensorRef

    raw = json.loads((folder / "cfg.json").read_text())
    cfg = SAEConfig.from_saelens_dict(raw, source=str(folder / "cfg.json"))
    path = folder / "sae_weights.safetensors"
    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    if architecture == "topk":
        cfg = SAEConfig(
            d_in=cfg.d_in,
            d_sae=cfg.d_sae,
            architecture="topk",
            dtype=cfg.dtype,
            arch={"k": TOPK_K},
            metadata=cfg.metadata,
        )
    else:
        names.append("threshold")

    def refuse(**_):
        raise RuntimeError("the benchmark never loads the wide SAE whole in this process")

    return SAEFiles(
        cfg, {n: TensorRef(path, n) for n in names}, [path], "saelens", str(folder), "bench", refuse
    )


# ----- children: one measured encode each -------------------------------------------------------
def child(spec: dict) -> None:
    """Run one encode (``streamed`` or ``peer``) and write its result JSON to ``spec['out']``."""
    import resource

    if spec.get("as_limit"):
        lim = int(spec["as_limit"])
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    out: dict = {"kind": spec["kind"], "architecture": spec["architecture"]}
    stage = "reading activations"
    try:
        x = torch.from_numpy(np.load(spec["acts"]))
        rows = int(x.shape[0])
        if spec["kind"] == "streamed":
            from saelab.activations.types import LayerActivations
            from saelab.sae.encode import encode_rows
            from saelab.sae.stream import StreamedSAE

            stage = "opening"
            enc = StreamedSAE(hand_files(Path(spec["folder"]), spec["architecture"]))
            stage = "encoding"
            t0 = time.perf_counter()
            codes = encode_rows(enc, LayerActivations(pooled=x), "last")
            out.update(seconds=time.perf_counter() - t0, l0=codes.nnz / rows, nnz=codes.nnz)
            out["block_latents"] = enc.block_latents
        else:
            import warnings

            warnings.filterwarnings("ignore")
            from sae_lens import SAE as LensSAE

            stage = "loading the SAE (sae_lens.SAE.load_from_disk)"
            t0 = time.perf_counter()
            sae = LensSAE.load_from_disk(spec["folder"], device="cpu")
            out["load_seconds"] = time.perf_counter() - t0
            stage = "encoding to dense [rows, d_sae] codes"
            with torch.no_grad():
                codes = sae.encode(x.to(sae.dtype))
            out.update(seconds=time.perf_counter() - t0, l0=float((codes != 0).sum()) / rows)
    except (MemoryError, RuntimeError, OSError, ValueError) as exc:
        first = re.sub(r"</?[^<>\s]*/[^<>]*>|/\S+", "<file>", str(exc).splitlines()[0])[:160]
        out["failed"] = f"{type(exc).__name__} while {stage}: {first}"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["vm_hwm"] = int(line.split()[1]) * 1024
    Path(spec["out"]).write_text(json.dumps(out))


def run_child(spec: dict, tmp: Path) -> dict:
    """Run :func:`child` in a subprocess under ``/usr/bin/time``; add its peak RSS.

    ``ru_maxrss`` of a child forked straight from this process would include this process's
    resident set at the fork (Linux keeps the pre-``exec`` high-water mark), so the child is
    started by ``/usr/bin/time -f %M``, whose own child starts small. The child also reports its
    ``VmHWM`` (peak resident set of its address space, file-backed pages included).
    """
    tag = f"{os.getpid()}-{time.time_ns()}"
    spec = {**spec, "out": str(tmp / f"result-{tag}.json")}
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    rss_file = tmp / f"rss-{tag}.txt"
    timer = shutil.which("time") or "/usr/bin/time"
    if Path(timer).is_file():
        cmd = [timer, "-f", "%M", "-o", str(rss_file), *cmd]
    proc = subprocess.run(cmd, check=False)
    out = json.loads(Path(spec["out"]).read_text()) if Path(spec["out"]).exists() else {}
    if proc.returncode != 0 and "failed" not in out:
        out["failed"] = f"exit status {proc.returncode} (killed)"
    if rss_file.exists():
        kib = [ln for ln in rss_file.read_text().splitlines() if ln.strip().isdigit()]
        out["peak_rss"] = int(kib[-1]) * 1024 if kib else out.get("vm_hwm")
    else:
        out["peak_rss"] = out.get("vm_hwm")
    out["as_limit"] = spec.get("as_limit")
    return out


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_case(
    d_in: int, d_sae: int, rows: int, tmp: Path, peer: bool, minutes_left, previous: dict | None
) -> dict:
    """Write the SAE, encode in subprocesses (JumpReLU, the peer, TopK), delete the SAE.

    ``minutes_left()`` is the time budget left; an encode whose expected time (the previous
    case's, scaled by d_in) does not fit is skipped and reported as not measured.
    """
    folder = tmp / f"jumprelu-{d_sae}-{d_in}"
    acts = tmp / f"acts-{d_in}.npy"
    x = torch.randn(rows, d_in, generator=torch.Generator().manual_seed(1))
    np.save(acts, x.numpy())
    case: dict = {"d_in": d_in, "d_sae": d_sae, "rows": rows}
    try:
        case["write_seconds"] = write_wide_sae(folder, d_in, d_sae, x[:512])
        case["file_bytes"] = (folder / "sae_weights.safetensors").stat().st_size
        print(
            f"[{d_in}] wrote {case['file_bytes'] / GB:.2f} GB in {case['write_seconds']:.0f} s",
            flush=True,
        )
        for what in ("jumprelu", "peer", "topk"):
            if what == "peer" and not peer:
                continue
            if previous and what in previous and "seconds" in previous[what]:
                expect = previous[what]["seconds"] * d_in / previous["d_in"] * 1.2 / 60
                if expect > minutes_left():
                    case[what] = {
                        "failed": f"not measured: ~{expect:.0f} min needed, time budget spent"
                    }
                    print(f"[{d_in}] {what} skipped: {case[what]['failed']}", flush=True)
                    continue
            spec = {
                "kind": "streamed",
                "architecture": what,
                "folder": str(folder),
                "acts": str(acts),
            }
            if what == "peer":
                limit = int(min(20 * 2**30, mem_available() - 3 * 2**30))
                spec.update(kind="peer", architecture="jumprelu", as_limit=limit)
            case[what] = run_child(spec, tmp)
            print(f"[{d_in}] {what}: {case[what]}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        acts.unlink(missing_ok=True)
    return case


# ----- throughput ---------------------------------------------------------------------------------
def throughput_case(
    dtype: str, arch: str, d_in: int, d_sae: int, rows: int, repeats: int, tmp: Path
) -> dict:
    """``encode_rows`` (in memory and streamed) against a plain matmul of the same shapes."""
    from saelab.activations.types import LayerActivations
    from saelab.sae import SAEConfig, build_sae, open_sae, save_sae
    from saelab.sae.encode import encode_rows
    from saelab.sae.stream import StreamedSAE

    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=arch,
        dtype=dtype,
        arch={"k": 64} if arch == "topk" else {},
    )
    sae = build_sae(cfg, seed=3).eval()
    x = torch.randn(rows, d_in, generator=torch.Generator().manual_seed(2))
    if arch == "jumprelu":
        with torch.no_grad():
            h = (x[:512].to(sae.dtype) - sae.b_dec) @ sae.W_enc
            z = statistics.NormalDist().inv_cdf(1 - TARGET_L0 / d_sae)
            sae.threshold.copy_(h.float().mean(0) + z * h.float().std(0))
    folder = save_sae(sae, tmp / f"tp-{arch}-{dtype}")
    streamed = StreamedSAE(open_sae(folder))
    acts = LayerActivations(pooled=x)
    w = sae.W_enc.detach()
    xs = x.to(w.dtype)
    chunk = max(1, 2**26 // d_sae)  # encode_rows' default row chunk at this width

    def matmul() -> None:
        for s in range(0, rows, chunk):
            torch.matmul(xs[s : s + chunk], w)

    def ours() -> object:
        return encode_rows(sae, acts, "last")

    def ours_streamed() -> object:
        return encode_rows(streamed, acts, "last")

    warm = LayerActivations(pooled=x[: min(rows, 256)])
    encode_rows(sae, warm, "last")
    encode_rows(streamed, warm, "last")
    matmul()
    times: dict[str, list[float]] = {"matmul": [], "encode": [], "streamed": []}
    for _ in range(repeats):
        for name, fn in (("matmul", matmul), ("encode", ours), ("streamed", ours_streamed)):
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "encode":
                l0 = result.nnz / rows  # type: ignore[attr-defined]
    streamed.close()
    shutil.rmtree(folder, ignore_errors=True)
    flops = 2 * rows * d_in * d_sae
    best = {k: min(v) for k, v in times.items()}
    out = {
        "dtype": dtype,
        "architecture": arch,
        "rows": rows,
        "chunk": chunk,
        "l0": l0,
        **{f"{k}_gflops": flops / t / 1e9 for k, t in best.items()},
    }
    out["ratio"] = out["encode_gflops"] / out["matmul_gflops"]
    out["ratio_streamed"] = out["streamed_gflops"] / out["matmul_gflops"]
    print(f"throughput {out}", flush=True)
    return out


# ----- report -------------------------------------------------------------------------------------
def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / GB:.2f} GB"


def report(
    args, machine: str, memory: list[dict], throughput: list[dict], skipped: list[str]
) -> str:
    lines = [
        "## SAE encoding: 1M-wide SAEs in bounded memory, throughput (`benchmarks/sae_encode.py`)",
        "",
        f"- Date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- Machine: {machine}",
        f"- Memory cases: {args.rows} random activations (N(0, 1), seed 1) encoded with "
        f"`encode_rows(pooling='last')` from a {args.d_sae:,}-latent SAE with random bf16 weights "
        "written as a SAELens folder; JumpReLU thresholds per latent for a mean L0 near "
        f"{TARGET_L0}; TopK k = {TOPK_K} on the same weights file. Each encode in its own "
        "subprocess; peak RSS = the child's `ru_maxrss` from `/usr/bin/time -f %M` (mapped pages "
        "included; the child reports the same from `VmHWM`). Peer: "
        "`sae_lens.SAE.load_from_disk` + `sae.encode` (dense `[rows, d_sae]` codes) under "
        "`RLIMIT_AS` (the limit shown).",
        "",
        "| d_in | weights file | write s | encoder | peak RSS | encode s | GFLOP/s | mean L0 | goal <= 3 GB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for c in memory:
        flops = 2 * c["rows"] * c["d_in"] * c["d_sae"]
        for arch in ("jumprelu", "topk"):
            r = c.get(arch, {})
            ok = "failed" not in r and r.get("peak_rss", math.inf) <= MEMORY_GOAL
            if r.get("failed", "").startswith("not measured"):
                lines.append(
                    f"| {c['d_in']} | {_gb(c['file_bytes'])} | | streamed {arch} | | | | | {r['failed']} |"
                )
                skipped.append(f"{c['d_in']} {arch}")
                continue
            verdicts.append(ok)
            lines.append(
                f"| {c['d_in']} | {_gb(c['file_bytes'])} | {c['write_seconds']:.0f} | streamed "
                f"{arch} ({r.get('block_latents', '-')} latents/block) | {_gb(r.get('peak_rss'))} | "
                f"{r.get('seconds', math.nan):.0f} | {flops / r.get('seconds', math.nan) / 1e9:.0f} | "
                f"{r.get('l0', math.nan):.1f} | {'met' if ok else 'MISSED: ' + r.get('failed', 'over 3 GB')} |"
            )
        if "peer" in c:
            p = c["peer"]
            what = p.get("failed") or f"ok in {p.get('seconds', math.nan):.0f} s"
            lines.append(
                f"| {c['d_in']} | | | peer: whole SAE + dense codes (RLIMIT_AS "
                f"{_gb(p.get('as_limit'))}) | {_gb(p.get('peak_rss'))} | | | | {what} |"
            )
    for s in skipped:
        if " " not in s:
            lines.append(f"| {s} | | | not measured (time budget) | | | | | |")
    lines += [
        "",
        f"Throughput at width {args.tp_d_sae:,}, d_in {args.tp_d_in}, {args.tp_rows} rows, best of "
        f"{args.repeats} (alternating); matmul = `torch.matmul` of the encoder's row chunks "
        f"`[chunk, {args.tp_d_in}] @ [{args.tp_d_in}, {args.tp_d_sae}]` in the same dtype; both "
        "counted as 2 rows d_in d_sae FLOPs. JumpReLU thresholds for L0 ~ 100, TopK k = 64. "
        "`streamed`: the same SAE read from its SAELens file a block at a time.",
        "",
        "| dtype | architecture | matmul GFLOP/s | encode GFLOP/s | ratio | streamed GFLOP/s | streamed ratio | L0 | goal >= 50% |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in throughput:
        ok = t["ratio"] >= 0.5
        verdicts.append(ok)
        lines.append(
            f"| {t['dtype']} | {t['architecture']} | {t['matmul_gflops']:.0f} | "
            f"{t['encode_gflops']:.0f} | {t['ratio']:.0%} | {t['streamed_gflops']:.0f} | "
            f"{t['ratio_streamed']:.0%} | {t['l0']:.0f} | {'met' if ok else 'MISSED'} |"
        )
    lines += [
        "",
        f"**Goals: {'all met' if all(verdicts) and not skipped else 'see MISSED / not measured rows'}.** "
        "Memory: a streamed encode holds two read buffers of W_enc blocks (64 MiB of file bytes "
        "each), one block's pre-activations and the sparse codes; the peer needs the whole SAE "
        "plus the dense codes (rows x d_sae x 2 bytes in bf16: 21 GB for 10,000 x 1M).",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="small sizes; print only")
    p.add_argument("--tmp", default="/work/bench_tmp")
    p.add_argument("--d-ins", default=None, help="comma-separated d_in of the memory cases")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--parts", default="memory,throughput")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget-minutes", type=float, default=40.0, help="skip cases past this")
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.d_sae, d_ins, args.rows = 2**17, [256, 384], args.rows or 2000
        args.tp_d_sae, args.tp_d_in, args.tp_rows = 2**16, 384, 1024
    else:
        args.d_sae, d_ins, args.rows = 2**20, [2304, 3584], args.rows or 10_000
        args.tp_d_sae, args.tp_d_in, args.tp_rows = 2**16, 2304, 2048
    if args.d_ins:
        d_ins = [int(v) for v in args.d_ins.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the files below get deleted
    tmp = Path(args.tmp) / f"sae_encode-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    memory, throughput, skipped = [], [], []
    try:
        if "memory" in args.parts:
            reserve = 0 if "throughput" not in args.parts else (1 if args.quick else 6)

            def minutes_left() -> float:
                return args.budget_minutes - reserve - (time.perf_counter() - started) / 60

            for d_in in d_ins:
                previous = memory[-1] if memory else None
                if (
                    previous
                    and previous.get("write_seconds", 0) / 60 * d_in / previous["d_in"]
                    > minutes_left()
                ):
                    skipped.append(f"{d_in}")
                    continue
                memory.append(
                    memory_case(
                        d_in, args.d_sae, args.rows, tmp, not args.no_peer, minutes_left, previous
                    )
                )
        if "throughput" in args.parts:
            for dtype in ("float32", "bfloat16"):
                for arch in ("jumprelu", "topk"):
                    throughput.append(
                        throughput_case(
                            dtype,
                            arch,
                            args.tp_d_in,
                            args.tp_d_sae,
                            args.tp_rows,
                            args.repeats,
                            tmp,
                        )
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()[0]
    machine = (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores "
        f"({torch.get_num_threads()} torch threads), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.0f} GB RAM, "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load_before:.1f} before the run, {load_after:.1f} after it (1-minute averages, other "
        f"jobs on the machine included); run took {(time.perf_counter() - started) / 60:.0f} min"
    )
    text = report(args, machine, memory, throughput, skipped)
    print(text)
    if not args.quick:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results_md import write_section

        write_section("sae_encode", text)


if __name__ == "__main__":
    main()
