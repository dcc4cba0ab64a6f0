"""The one training loop of every trainable SAE architecture.

Recipe (each family's forward in its own module; this loop is shared):

- **Data**: at most ``max_tokens`` rows (a seeded sample); ``heldout_fraction`` of them (at most
  ``eval_tokens``) are held out and never trained on. Batches walk one seeded permutation of the
  training rows per epoch; the batch of step ``s`` is a function of ``(seed, s)`` only, so a
  resumed run sees the same batches as an uninterrupted one.
- **Normalisation** (dictionary_learning ``normalize_activations``): training reads ``s x`` with
  ``s = sqrt(d_in / E||x||^2)`` over the training rows; ``s`` is folded into the saved SAE, which
  reads raw activations and returns codes in raw units (``Family.inference_sae``).
- **Initialisation**: unit-norm random decoder rows, ``W_enc = W_dec^T``, zero encoder biases,
  ``b_dec`` at the geometric median of up to 8192 training rows (Gao et al. 2024 §A.1;
  dictionary_learning ``top_k.py``). The standard family rescales the decoder rows to 0.1.
- **Optimiser**: Adam (torch's fused kernel), betas (0.9, 0.999), eps 6.25e-10 (Gao et al.
  §A.1); learning rate
  ``lr * lr_factor(step)``: linear warm-up, constant, linear decay to 0 over the last
  ``lr_decay_steps`` (dictionary_learning); sparsity coefficients (L1, L0) warm up linearly from 0
  (``coefficient_factor``; Anthropic April 2024, SAELens ``CoefficientScheduler``).
- **Unit-norm decoder** for every family but ``standard``: the gradient component parallel to each
  decoder row is removed before the step and the rows are renormalised after it (Gao §A.1;
  dictionary_learning ``remove_gradient_parallel_to_decoder_directions``); then gradient-norm
  clipping at ``grad_clip`` (dictionary_learning order: project, clip, step, renormalise).
- **Dead latents**: tokens since each latent last fired; dead after ``dead_window_tokens``
  (default min(10M, one pass), Gao et al.); AuxK uses them in the TopK family.
- **Held-out evaluation** every ``eval_every`` steps and at the end with the SAE as it would be
  saved: ``fvu = sum ||x - x^||^2 / sum ||x - mean(x)||^2``, ``l0`` (mean nonzero codes per token),
  ``dead_fraction`` (latents that never fire on the held-out tokens); one JSON line per evaluation
  in ``metrics.jsonl``.
- **Checkpoints** every ``checkpoint_every`` steps in the work folder (``checkpoint.py``); a rerun
  with the same folder resumes and reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.errors import ConfigError, DatasetError
from saelab.io import write_json_atomic
from saelab.sae.base import SAE
from saelab.sae.training.base import Family, StepContext, TrainStep, random_unit_rows
from saelab.sae.training.checkpoint import (
    CHECKPOINT_FILENAME,
    adam_state_tensors,
    load_adam_state,
    read_checkpoint,
    write_checkpoint,
)
from saelab.sae.training.config import (
    SAETrainConfig,
    as_train_config,
    coefficient_factor,
    lr_factor,
)
from saelab.sae.training.gated import GatedFamily
from saelab.sae.training.jumprelu import JumpReLUFamily
from saelab.sae.training.mp import MPFamily
from saelab.sae.training.standard import StandardFamily
from saelab.sae.training.topk import BatchTopKFamily, MatryoshkaFamily, TopKFamily

log = logging.getLogger(__name__)

#: Bumped when a change to the trainer changes the SAEs it trains (part of the pipeline's SAE key).
TRAINER_VERSION = 2

FAMILIES: dict[str, type[Family]] = {
    cls.architecture: cls
    for cls in (
        StandardFamily,
        TopKFamily,
        BatchTopKFamily,
        JumpReLUFamily,
        GatedFamily,
        MatryoshkaFamily,
        MPFamily,
    )
}

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 6.25e-10  # Gao et al. 2024 §A.1
GEOMETRIC_MEDIAN_SAMPLE = 8192
DEAD_WINDOW_MAX_TOKENS = 10_000_000  # Gao et al. 2024 §A.2
METRICS_FILENAME = "metrics.jsonl"
_CHUNK = 1 << 16


def geometric_median(
    x: torch.Tensor, max_iter: int = 100, tol: float = 1e-5, eps: float = 1e-8
) -> torch.Tensor:
    """Geometric median ``argmin_m sum_i ||x_i - m||`` by Weiszfeld's algorithm.

    Weiszfeld (1937); iteration ``m <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1/max(||x_i - m||,
    eps)``, started at the mean, stopped when ``||m_new - m|| <= tol * (1 + ||m||)``
    (dictionary_learning ``trainers/top_k.py::geometric_median`` uses the same iteration).

    Args:
        x: ``[n, d]`` float.
    Returns:
        ``[d]``.
    """
    x64 = x.to(torch.float64)
    m = x64.mean(dim=0)
    for _ in range(max_iter):
        w = 1.0 / (x64 - m).norm(dim=1).clamp_min(eps)
        new = (w.unsqueeze(1) * x64).sum(dim=0) / w.sum()
        done = (new - m).norm() <= tol * (1 + m.norm())
        m = new
        if done:
            break
    return m.to(x.dtype)


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from ``parts`` (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(_seed(*parts))


def split_rows(n: int, cfg: SAETrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_rows, heldout_rows)``: sorted row indices of ``acts`` ``[n, d_in]``.

    At most ``max_tokens`` rows are used (a seeded sample); of those, ``heldout_fraction`` (at
    least 1 when the fraction is positive, at most ``eval_tokens``) are held out.
    """
    rows = torch.arange(n)
    if n > cfg.max_tokens:
        rows = torch.randperm(n, generator=_generator(cfg.seed, 11))[: cfg.max_tokens].sort().values
    m = int(rows.shape[0])
    n_held = 0
    if cfg.heldout_fraction > 0:
        n_held = min(cfg.eval_tokens, max(1, round(cfg.heldout_fraction * m)))
    if m - n_held < 1:
        raise DatasetError(
            f"training activations: {n} rows leave none for training after holding out {n_held}"
        )
    perm = rows[torch.randperm(m, generator=_generator(cfg.seed, 12))]
    return perm[n_held:].sort().values, perm[:n_held].sort().values


class BatchOrder:
    """Training rows of each step: one seeded permutation per epoch, batches may straddle epochs.

    The batch of step ``s`` covers positions ``[s B, (s + 1) B)`` of the concatenated epochs, so it
    depends on ``(seed, s)`` only.
    """

    def __init__(self, train_rows: torch.Tensor, batch: int, seed: int) -> None:
        self.rows, self.batch, self.seed = train_rows, batch, seed
        self.n = int(train_rows.shape[0])
        self._cache: dict[int, torch.Tensor] = {}

    def epoch(self, e: int) -> torch.Tensor:
        if e not in self._cache:
            if len(self._cache) > 1:
                self._cache.pop(min(self._cache))
            perm = torch.randperm(self.n, generator=_generator(self.seed, 13, e))
            self._cache[e] = self.rows[perm]
        return self._cache[e]

    def __call__(self, step: int) -> torch.Tensor:
        """Row indices ``[B]`` of step ``step``."""
        pos, left, parts = step * self.batch, self.batch, []
        while left:
            e, off = divmod(pos, self.n)
            part = self.epoch(e)[off : off + left]
            parts.append(part)
            pos += len(part)
            left -= len(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for the device (about 4x faster than the
    per-tensor loop on the CPU for a 3072 x 384 SAE), else the default implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)


class SAETrainer:
    """Parameters, optimiser and dead-latent counters of one SAE in training; :meth:`step` runs
    one optimiser step on a normalised batch (the module docstring's recipe).

    Args:
        cfg: the training config.
        d_in: activation width.
        total_steps: steps of the whole run (for the schedules).
        b_dec0: ``[d_in]`` initial decoder bias (normalised units).
        dead_window_tokens: tokens without firing after which a latent is dead.
        device: where parameters live.
    """

    def __init__(
        self,
        cfg: SAETrainConfig,
        d_in: int,
        total_steps: int,
        b_dec0: torch.Tensor,
        dead_window_tokens: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.d_in, self.d_sae = d_in, cfg.resolved_d_sae(d_in)
        self.family = FAMILIES[cfg.architecture](cfg, d_in, self.d_sae)
        self.family.check()
        self.total_steps = total_steps
        self.schedule = cfg.schedule(total_steps)
        self.dead_window = dead_window_tokens
        w0 = random_unit_rows(self.d_sae, d_in, _generator(cfg.seed, 14)).to(self.device)
        params = self.family.init_params(w0, b_dec0.to(self.device, torch.float32))
        self.params = {name: t.requires_grad_(True) for name, t in params.items()}
        self.lr = cfg.resolved_lr(self.d_sae)
        self.opt = _adam(list(self.params.values()), self.lr)
        self.since_fired = torch.zeros(self.d_sae, dtype=torch.long, device=self.device)
        self.step_count = 0

    @property
    def dead(self) -> torch.Tensor:
        """``[d_sae]`` bool: latents that have not fired for the dead window."""
        return self.since_fired >= self.dead_window

    def current_lr(self, step: int | None = None) -> float:
        s = self.step_count if step is None else step
        sched = self.schedule
        return self.lr * lr_factor(
            s, self.total_steps, sched["lr_warmup_steps"], sched["lr_decay_steps"]
        )

    def step(self, x: torch.Tensor) -> TrainStep:
        """One optimiser step on the normalised batch ``x`` ``[B, d_in]``."""
        step = self.step_count
        ctx = StepContext(
            step, coefficient_factor(step, self.schedule["sparsity_warmup_steps"]), self.dead
        )
        out = self.family.forward(x, self.params, ctx)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        with torch.no_grad():
            w_dec = self.params["W_dec"]
            if self.family.unit_norm_decoder and w_dec.grad is not None:
                g = w_dec.grad  # remove the component parallel to each (unit) decoder row
                g -= (g * w_dec).sum(dim=1, keepdim=True) * w_dec
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
            for group in self.opt.param_groups:
                group["lr"] = self.current_lr(step)
            self.opt.step()
            if self.family.unit_norm_decoder:
                w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.family.after_step(self.params)
            self.since_fired += x.shape[0]
            self.since_fired[out.fired] = 0
        self.step_count += 1
        return out

    def inference_sae(self, scale: float = 1.0, metadata: dict[str, Any] | None = None) -> SAE:
        """The SAE as it would be saved, reading ``x`` when training reads ``scale * x``."""
        return self.family.inference_sae(self.params, scale, metadata)

    # ----- checkpoints -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        names = {id(p): name for name, p in self.params.items()}
        out = {f"param.{k}": v.detach() for k, v in self.params.items()}
        out.update(adam_state_tensors(self.opt, names))
        out["since_fired"] = self.since_fired
        out.update({f"buffer.{k}": v for k, v in self.family.buffers().items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(tensors[f"param.{name}"])
        load_adam_state(self.opt, self.params, tensors)
        self.since_fired = tensors["since_fired"].to(self.device).clone()
        self.family.load_buffers(
            {k.removeprefix("buffer."): v for k, v in tensors.items() if k.startswith("buffer.")}
        )
        self.step_count = step


class TrainResult(NamedTuple):
    """What :func:`train_sae` returns.

    Attributes:
        sae: the trained SAE (registry architecture ``stats["saved_as"]``), reading raw
            activations, on the training device, without grad.
        stats: JSON-ready statistics (see :func:`train_sae`).
        frequency: ``[d_sae]`` firing frequency of each latent on the evaluation tokens.
    """

    sae: SAE
    stats: dict[str, Any]
    frequency: torch.Tensor


@torch.inference_mode()
def evaluate(sae: SAE, x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """FVU, MSE, L0 and dead fraction of ``sae`` on ``x`` ``[n, d_in]``, and firing counts.

    ``fvu = sum_t ||x_t - x^_t||^2 / sum_t ||x_t - mean(x)||^2`` (Gao et al. 2024 §2.1),
    ``mse = sum_t ||x_t - x^_t||^2 / (n d_in)``, ``l0`` = mean number of nonzero codes per token,
    ``dead_fraction`` = share of latents with no nonzero code on ``x``. Codes are computed in
    chunks of rows so the dense ``[rows, d_sae]`` block stays near 32 MB.

    Returns:
        ``(metrics, counts [d_sae])``.
    """
    device = sae.device
    n = int(x.shape[0])
    chunk = max(1, min(4096, (1 << 23) // sae.d_sae))
    mean = x.double().mean(dim=0).to(device)
    sq_err = sq_dev = 0.0
    counts = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    for start in range(0, n, chunk):
        xc = x[start : start + chunk].to(device, torch.float32)
        f = sae.encode(xc)
        x_hat = sae.decode(f)
        sq_err += float((xc - x_hat).double().pow(2).sum())
        sq_dev += float((xc.double() - mean).pow(2).sum())
        counts += (f != 0).sum(dim=0)
    metrics = {
        "fvu": sq_err / sq_dev if sq_dev > 0 else float("nan"),
        "mse": sq_err / (n * sae.d_in),
        "l0": float(counts.sum()) / n,
        "dead_fraction": float((counts == 0).float().mean()),
    }
    return metrics, counts


def _check_acts(acts: torch.Tensor) -> None:
    if not isinstance(acts, torch.Tensor) or acts.ndim != 2:
        shape = list(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
        raise DatasetError(f"training activations: expected a [tokens, d_in] tensor, got {shape}")
    if acts.shape[0] < 2 or acts.shape[1] < 1:
        raise DatasetError(f"training activations: too small, shape {list(acts.shape)}")
    if not acts.is_floating_point():
        raise DatasetError(f"training activations: expected floating point, got {acts.dtype}")
    for start in range(0, acts.shape[0], _CHUNK):
        bad = ~torch.isfinite(acts[start : start + _CHUNK]).all(dim=1)
        if bool(bad.any()):
            row = start + int(bad.nonzero()[0, 0])
            raise DatasetError(f"training activations: row {row} has non-finite values")


def _fingerprint(acts: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
    """Shape and float64 sums of the training rows: a resumed run must see the same data."""
    total = sq = 0.0
    for start in range(0, rows.shape[0], _CHUNK):
        x = acts[rows[start : start + _CHUNK]].double()
        total += float(x.sum())
        sq += float(x.pow(2).sum())
    return {"rows": int(rows.shape[0]), "d_in": int(acts.shape[1]), "sum": total, "sum_sq": sq}


def _resume(trainer: SAETrainer, path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Load the checkpoint at ``path`` into ``trainer``; its JSON document, or None without one.

    ConfigError when it was written for another config, other data or another trainer version.
    """
    if not path.is_file():
        return None
    tensors, meta = read_checkpoint(path)
    if meta.get("identity") != json.loads(json.dumps(identity)):
        raise ConfigError(
            f"{path}: this checkpoint was written for another training config or other "
            "activations; delete its folder to start over, or train elsewhere"
        )
    trainer.load_state_tensors(tensors, int(meta["step"]))
    log.info("resuming SAE training at step %d of %d", meta["step"], trainer.total_steps)
    return meta


def _read_metrics(path: Path, upto_step: int) -> list[str]:
    """Lines of ``metrics.jsonl`` with ``step <= upto_step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return []
    keep = []
    for line in path.read_text("utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= upto_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by a kill ends the valid part
    return keep


def train_sae(
    acts: torch.Tensor,
    cfg: SAETrainConfig | dict[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    work_dir: str | Path | None = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one SAE of any trainable architecture on ``acts`` ``[T, d_in]`` (module docstring).

    Deterministic for a given config on the CPU (same thread count). With ``work_dir``, metrics go
    to ``work_dir/metrics.jsonl`` and checkpoints to ``work_dir/checkpoint.safetensors``; a call
    with the same folder resumes from its checkpoint (it must come from the same config and data,
    else ConfigError) and returns the same SAE as an uninterrupted run.

    Args:
        acts: token activations, float; rows are tokens.
        cfg: the training config (or a mapping validated into one).
        device: where training runs; ``acts`` stay where they are and batches are moved.
        work_dir: folder for checkpoints and metrics (created), or None for neither.
        progress: show a tqdm bar with loss, L0, FVU and dead fraction.
        metadata: extra ``metadata`` of the saved config (``hook_name``, ``model_name``, ...).
        callback: called after every step with ``{"step", "rows", "loss", "terms", "metrics"}``
            (``rows``: the batch's row indices into ``acts``); an exception it raises stops
            training (the last checkpoint stays).

    Returns:
        :class:`TrainResult` ``(sae, stats, frequency)``. ``stats``: ``config``, ``architecture``,
        ``saved_as``, ``d_in``, ``d_sae``, ``lr``, ``norm_scale``, ``steps``, ``batch_size``,
        ``tokens`` (tokens seen), ``train_tokens``, ``heldout_tokens``, the final ``fvu``,
        ``mse``, ``l0``, ``dead_fraction`` of the returned SAE on the held-out tokens (``eval_on``
        says which tokens), ``dead_fraction_train`` (dead by the window), ``losses`` (each loss
        term's mean over the last evaluation interval), ``auxk_steps``, ``schedule``,
        ``seconds`` (this call), ``train_seconds`` (all calls), ``resumed_from_step``.
    """
    t0 = time.perf_counter()
    cfg = as_train_config(cfg)
    _check_acts(acts)
    device = torch.device(device)
    n_all, d_in = (int(s) for s in acts.shape)
    train_rows, held_rows = split_rows(n_all, cfg)
    n_train = int(train_rows.shape[0])
    batch = min(cfg.batch_size, n_train)
    total = cfg.resolved_steps(n_train)
    dead_window = cfg.dead_window_tokens or min(n_train, DEAD_WINDOW_MAX_TOKENS)
    acts = acts.detach()

    fingerprint = _fingerprint(acts, train_rows)
    mean_sq = fingerprint["sum_sq"] / n_train
    scale = math.sqrt(d_in / mean_sq) if cfg.normalize_input and mean_sq > 0 else 1.0
    sample = train_rows[torch.randperm(n_train, generator=_generator(cfg.seed, 15))]
    b_dec0 = geometric_median(acts[sample[:GEOMETRIC_MEDIAN_SAMPLE]].float() * scale)
    trainer = SAETrainer(cfg, d_in, total, b_dec0, dead_window, device)
    sched = trainer.schedule
    eval_rows = held_rows if held_rows.numel() else train_rows[: cfg.eval_tokens]
    eval_x = acts[eval_rows].to(device, torch.float32)
    order = BatchOrder(train_rows, batch, cfg.seed)

    work = Path(work_dir) if work_dir is not None else None
    ckpt_path = work / CHECKPOINT_FILENAME if work else None
    metrics_path = work / METRICS_FILENAME if work else None
    identity = {
        "config": cfg.model_dump(mode="json"),
        "data": fingerprint,
        "trainer_version": TRAINER_VERSION,
        "device": device.type,
    }
    running: dict[str, float] = {}
    run_count = 0
    state: dict[str, Any] = {"auxk_steps": 0, "train_seconds": 0.0, "last_losses": {}}
    start_step = 0
    if work is not None and ckpt_path is not None and metrics_path is not None:
        work.mkdir(parents=True, exist_ok=True)
        meta = _resume(trainer, ckpt_path, identity)
        if meta is not None:
            start_step = int(meta["step"])
            running, run_count = meta["running"], int(meta["running_count"])
            state.update(meta["state"])
        kept = _read_metrics(metrics_path, start_step)
        metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        meta = {
            "step": step,
            "identity": identity,
            "running": running,
            "running_count": run_count,
            "state": {**state, "train_seconds": state["train_seconds"] + time.perf_counter() - t0},
        }
        write_checkpoint(ckpt_path, trainer.state_tensors(), meta)

    log.info(
        "%s SAE: %d training + %d held-out tokens x %d -> %d latents, batch %d, %d steps, "
        "lr %.2e, scale %.4g",
        cfg.architecture, n_train, int(held_rows.numel()), d_in, trainer.d_sae, batch, total,
        trainer.lr, scale,
    )  # fmt: skip
    bar = tqdm(
        total=total,
        initial=start_step,
        desc=f"train {cfg.architecture} SAE",
        unit="step",
        disable=not progress,
    )
    try:
        for step in range(start_step, total):
            rows = order(step)
            x = acts[rows].to(device, torch.float32) * scale
            out = trainer.step(x)
            state["auxk_steps"] += int("auxk" in out.terms)
            values = {"loss": float(out.loss.detach())}
            values.update({k: float(v.detach()) for k, v in out.terms.items()})
            values.update({f"batch_{k}": float(v) for k, v in out.metrics.items()})
            for k, v in values.items():
                running[k] = running.get(k, 0.0) + v
            run_count += 1
            done = step + 1
            if progress and (done % 10 == 0 or done == total):
                bar.set_postfix(
                    loss=f"{values['loss']:.4g}",
                    L0=f"{values['batch_l0']:.1f}",
                    FVU=f"{values['batch_fvu']:.3f}",
                    dead=f"{float(trainer.dead.float().mean()):.1%}",
                    refresh=False,
                )
            bar.update(1)
            if done % sched["eval_every"] == 0 or done == total:
                heldout, _ = evaluate(trainer.inference_sae(), eval_x * scale)
                state["last_losses"] = {k: v / max(run_count, 1) for k, v in running.items()}
                line = {
                    "step": done,
                    "tokens": done * batch,
                    "seconds": round(state["train_seconds"] + time.perf_counter() - t0, 3),
                    "lr": trainer.current_lr(step),
                    "train": state["last_losses"],
                    "heldout" if held_rows.numel() else "train_sample": heldout,
                    "dead_fraction_train": float(trainer.dead.float().mean()),
                }
                running, run_count = {}, 0
                if metrics_path is not None:
                    with open(metrics_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(line) + "\n")
            if done % sched["checkpoint_every"] == 0 or done == total:
                checkpoint(done)
            if callback is not None:
                callback(
                    {
                        "step": done,
                        "rows": rows,
                        "loss": values["loss"],
                        "terms": out.terms,
                        "metrics": out.metrics,
                    }
                )
    finally:
        bar.close()

    meta = {
        **(metadata or {}),
        "training_architecture": cfg.architecture,
        "training_architecture_details": {
            **cfg.model_dump(mode="json"),
            "d_sae": trainer.d_sae,
            "lr": trainer.lr,
        },
        "trained_by": "saelab.sae.training.train_sae",
        "norm_scaling_factor_folded": scale,
        "training_tokens": n_train,
    }
    sae = trainer.inference_sae(scale, meta)
    final, counts = evaluate(sae, acts[eval_rows])
    seconds = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "architecture": cfg.architecture,
        "saved_as": trainer.family.saved_as,
        "d_in": d_in,
        "d_sae": trainer.d_sae,
        "k": cfg.k,
        "lr": trainer.lr,
        "norm_scale": scale,
        "steps": total,
        "batch_size": batch,
        "tokens": total * batch,
        "train_tokens": n_train,
        "heldout_tokens": int(held_rows.numel()),
        "eval_on": "heldout" if held_rows.numel() else "train_sample",
        **final,
        "dead_fraction_train": float(trainer.dead.float().mean()),
        "dead_window_tokens": dead_window,
        **trainer.family.stats(),
        "losses": state["last_losses"],
        "auxk_steps": state["auxk_steps"],
        "schedule": sched,
        "trainer_version": TRAINER_VERSION,
        "resumed_from_step": start_step,
        "seconds": seconds,
        "train_seconds": state["train_seconds"] + seconds,
    }
    log.info(
        "%s SAE trained in %.1fs: fvu %.4f, l0 %.1f, dead %.2f%% (%s)",
        cfg.architecture, seconds, stats["fvu"], stats["l0"], 100 * stats["dead_fraction"],
        stats["eval_on"],
    )  # fmt: skip
    frequency = (counts.double() / max(1, int(eval_rows.numel()))).float().cpu()
    return TrainResult(sae, stats, frequency)


def save_trained(
    result: TrainResult, folder: str | Path, work_dir: str | Path | None = None
) -> Path:
    """Save a trained SAE in SAELens format with ``training.json`` and ``metrics.jsonl``.

    Also writes ``sparsity.safetensors`` (SAELens' ``log10(firing frequency + 1e-10)`` of each
    latent on the evaluation tokens). The work folder's metrics are copied and the folder (with its
    checkpoint) removed once the SAE is saved.
    """
    from saelab.sae.formats import save_sae

    folder = Path(folder)
    save_sae(result.sae, folder, sparsity=result.frequency)
    write_json_atomic(folder / "training.json", result.stats)
    if work_dir is not None:
        work = Path(work_dir)
        metrics = work / METRICS_FILENAME
        if metrics.is_file():
            shutil.copyfile(metrics, folder / METRICS_FILENAME)
        shutil.rmtree(work, ignore_errors=True)
    return folder
