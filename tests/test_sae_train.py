"""Tests for saelab.sae.training: one config and one loop for every trainable SAE architecture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from saelab.config import validate_config
from saelab.errors import ConfigError, DatasetError
from saelab.sae import load_sae, read_sparsity
from saelab.sae.training import (
    ARCHITECTURES,
    SAETrainConfig,
    SAETrainer,
    coefficient_factor,
    evaluate,
    geometric_median,
    lr_factor,
    save_trained,
    split_rows,
    train_sae,
)
from saelab.sae.training.jumprelu import JumpReLUWithL0
from saelab.sae.training.sparse import BatchTopKSelector, Selection, sparse_codes, sparse_decode
from tiny_models import build_tiny_model

D, F, N_FEAT = 16, 32, 24


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny problems are overhead-bound, and on a busy 2-core machine
    OpenMP barriers cost milliseconds per op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted(n: int, d: int = D, n_feat: int = N_FEAT, active: int = 2, seed: int = 0):
    """Tokens that are sparse positive combinations of ``n_feat`` unit directions plus noise,
    offset (tests b_dec) and in raw units far from unit norm (tests the folded normalisation)."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_feat, generator=gen)[:active] for _ in range(n)])
    mags = torch.rand(n, active, generator=gen) * 2 + 0.5
    codes = torch.zeros(n, n_feat).scatter_(1, idx, mags)
    x = codes @ dirs + 0.3 + 0.01 * torch.randn(n, d, generator=gen)
    return x * 7.0, dirs


X, DIRS = planted(2048)

FAMILY_CFGS = {
    "topk": {"k": 2, "lr": 1e-2},
    "batchtopk": {"k": 2, "lr": 1e-2},
    "matryoshka_batchtopk": {"k": 2, "lr": 1e-2, "widths": [8, F]},
    "standard": {"lr": 1e-2, "l1_coefficient": 1.0},
    "gated": {"lr": 1e-2, "l1_coefficient": 2.0},
    "jumprelu": {"lr": 1e-2},
    "mp_sae": {"k": 2, "lr": 1e-2},
}
COMMON = {"d_sae": F, "batch_size": 128, "steps": 150, "heldout_fraction": 0.1}


def cfg_of(arch: str, **over) -> dict:
    return {"architecture": arch, **COMMON, **FAMILY_CFGS[arch], **over}


@pytest.fixture(scope="module")
def trained() -> dict:
    """Every family trained once on the planted problem (threads set here, module scope)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {a: train_sae(X, cfg_of(a), progress=False) for a in FAMILY_CFGS}
    finally:
        torch.set_num_threads(before)


# ----- every family trains -----------------------------------------------------------------------
def test_every_trainable_architecture_is_covered() -> None:
    assert set(FAMILY_CFGS) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", list(FAMILY_CFGS))
def test_family_lowers_heldout_fvu(arch: str, trained: dict) -> None:
    sae, stats, freq = trained[arch]
    untrained = train_sae(X, cfg_of(arch, steps=1, lr=1e-12), progress=False).stats
    assert untrained["fvu"] > 0.4, untrained
    assert stats["fvu"] < 0.35 * untrained["fvu"], (stats["fvu"], untrained["fvu"])
    assert stats["eval_on"] == "heldout" and stats["heldout_tokens"] == round(0.1 * 2048)
    assert 0 < stats["l0"] < 8, stats["l0"]
    # stats agree with a direct computation on the returned SAE and the held-out rows
    _, held = split_rows(X.shape[0], SAETrainConfig(**cfg_of(arch)))
    x = X[held]
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu == pytest.approx(stats["fvu"], rel=1e-4)
    assert float((codes != 0).sum(1).float().mean()) == pytest.approx(stats["l0"], rel=1e-6)
    torch.testing.assert_close(freq, (codes != 0).float().mean(0))
    assert stats["saved_as"] == sae.architecture
    assert set(stats["losses"]) >= {"loss", "batch_fvu", "batch_l0"}


def test_topk_recovers_planted_directions_and_aux_k_runs(trained: dict) -> None:
    sae, stats, _ = trained["topk"]
    cos = (DIRS @ sae.W_dec.T).max(dim=1).values
    assert float((cos > 0.9).float().mean()) > 0.8
    assert stats["auxk_steps"] > 0  # latents beyond the planted ones go dead, AuxK revives
    assert sae.architecture == "topk" and sae.cfg.arch["k"] == 2


def test_loss_terms_are_named_per_family(trained: dict) -> None:
    terms = {a: set(r.stats["losses"]) - {"loss"} for a, r in trained.items()}
    assert {"fvu", "auxk"} <= terms["topk"]
    assert {"fvu_w8", f"fvu_w{F}"} <= terms["matryoshka_batchtopk"]
    assert {"mse", "l1"} <= terms["standard"]
    assert {"mse", "l1", "aux_gate"} <= terms["gated"]
    assert {"mse", "l0"} <= terms["jumprelu"]
    assert {"mse"} <= terms["mp_sae"]


# ----- saved as jumprelu, loads in SAELens --------------------------------------------------------
@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_saved_as_jumprelu_loads_in_sae_lens(arch: str, trained: dict, tmp_path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    result = trained[arch]
    folder = save_trained(result, tmp_path / arch)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["training_architecture"] == arch
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert type(theirs).__name__ == "JumpReLUSAE"
    ours = load_sae(folder)
    threshold = ours.threshold
    threshold = threshold.detach()
    assert torch.all(threshold == threshold[0]) and float(threshold[0]) > 0
    scale = result.stats["norm_scale"]
    with torch.no_grad():
        mine, got = ours.encode(X[:256]), theirs.encode(X[:256])
        torch.testing.assert_close(got, mine, rtol=0, atol=1e-5)
        assert torch.equal(got != 0, mine != 0)
        # by hand: JumpReLU with the running threshold folded into raw units
        h = (X[:256] - ours.b_dec) @ ours.W_enc + ours.b_enc
        torch.testing.assert_close(mine, torch.relu(h) * (h > threshold), rtol=0, atol=0)
    # the saved threshold is the running one, folded into raw units; inference L0 near k
    assert float(threshold[0]) == pytest.approx(result.stats["threshold_normalised"] / scale)
    assert 1 <= result.stats["l0"] <= 4
    # sparsity.safetensors: log10 of the firing frequency on the evaluation tokens
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    torch.testing.assert_close(sparsity, torch.log10(result.frequency + 1e-10))
    torch.testing.assert_close(read_sparsity(folder), sparsity)
    assert json.loads((folder / "training.json").read_text())["saved_as"] == "jumprelu"


def test_topk_saved_folder_loads_in_sae_lens(trained: dict, tmp_path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    folder = save_trained(trained["topk"], tmp_path / "topk")
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    ours = trained["topk"].sae
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(X[:64]), ours.encode(X[:64]), rtol=0, atol=1e-5)


# ----- schedules -------------------------------------------------------------------------------
def test_lr_schedule_and_sparsity_warmup_values() -> None:
    # warm-up 4, decay 5 of 20 steps: (s+1)/4 for s < 4, 1, then (20 - s)/5 from s = 15
    expect = [0.25, 0.5, 0.75, 1.0] + [1.0] * 11 + [1.0, 0.8, 0.6, 0.4, 0.2]
    assert [lr_factor(s, 20, 4, 5) for s in range(20)] == pytest.approx(expect)
    assert [lr_factor(s, 10, 0, 0) for s in range(10)] == [1.0] * 10
    assert [coefficient_factor(s, 4) for s in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert coefficient_factor(0, 0) == 1.0
    sched = SAETrainConfig(steps=100).schedule(100)
    assert (sched["lr_warmup_steps"], sched["lr_decay_steps"]) == (2, 20)
    assert sched["sparsity_warmup_steps"] == 5 and sched["eval_every"] == 10


def test_trainer_applies_lr_and_coefficient_schedules() -> None:
    cfg = SAETrainConfig(
        architecture="standard",
        d_sae=F,
        lr=1e-3,
        steps=10,
        lr_warmup_steps=2,
        lr_decay_steps=4,
        l1_coefficient=2.0,
        l1_warmup_steps=5,
    )
    trainer = SAETrainer(cfg, D, 10, torch.zeros(D), dead_window_tokens=10**9)
    lrs = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        trainer.step(torch.randn(64, D, generator=gen))
        lrs.append(trainer.opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3 * lr_factor(s, 10, 2, 4) for s in range(10)])
    assert lrs[0] == pytest.approx(5e-4) and lrs[-1] == pytest.approx(2.5e-4)


def test_sparsity_term_follows_warmup_exactly() -> None:
    cfg = SAETrainConfig(architecture="standard", d_sae=F, steps=6, l1_coefficient=2.0,
                         l1_warmup_steps=4, lr=1e-12)  # fmt: skip
    trainer = SAETrainer(cfg, D, 6, torch.zeros(D), dead_window_tokens=10**9)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    for s in range(6):
        p = {k: v.detach().clone() for k, v in trainer.params.items()}
        out = trainer.step(x)
        f = torch.relu((x - p["b_dec"]) @ p["W_enc_T"].T + p["b_enc"])
        hand = 2.0 * coefficient_factor(s, 4) * float((f * p["W_dec"].norm(dim=1)).sum(1).mean())
        assert float(out.terms["l1"].detach()) == pytest.approx(hand, rel=1e-5, abs=1e-12)


# ----- unit-norm decoder --------------------------------------------------------------------------
def test_projected_gradient_keeps_unit_norms(trained: dict) -> None:
    for arch, (sae, _, _) in trained.items():
        norms = sae.W_dec.norm(dim=1)
        if arch == "standard":  # free decoder norms, weighted L1 (April update)
            assert float((norms - 1).abs().max()) > 0.05
        else:
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)


def test_decoder_gradient_is_orthogonal_to_rows_before_the_step() -> None:
    cfg = SAETrainConfig(architecture="topk", d_sae=F, k=3, steps=5, grad_clip=None)
    trainer = SAETrainer(cfg, D, 5, torch.zeros(D), dead_window_tokens=10**9)
    x = torch.randn(128, D, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        w_old = trainer.params["W_dec"].detach().clone()
        trainer.step(x)
        g = trainer.params["W_dec"].grad
        assert float(g.abs().max()) > 0
        assert float((g * w_old).sum(1).abs().max()) < 1e-6 * float(g.norm())


# ----- held-out tokens -------------------------------------------------------------------------
def test_heldout_tokens_are_never_trained_on() -> None:
    seen: list[torch.Tensor] = []
    cfg = cfg_of("topk", steps=60, heldout_fraction=0.2)
    train_sae(X, cfg, progress=False, callback=lambda info: seen.append(info["rows"]))
    train_rows, held = split_rows(X.shape[0], SAETrainConfig(**cfg))
    used = torch.cat(seen).unique()
    assert len(held) == round(0.2 * 2048)
    assert not bool(torch.isin(used, held).any())
    assert torch.equal(used, train_rows)  # 60 x 128 tokens cover every training row
    assert sorted(torch.cat([train_rows, held]).tolist()) == list(range(2048))


def test_max_tokens_and_eval_tokens_caps() -> None:
    train, held = split_rows(3000, SAETrainConfig(max_tokens=2000, eval_tokens=30))
    assert len(train) + len(held) == 2000 and len(held) == 30
    assert not bool(torch.isin(train, held).any())


# ----- checkpoints and resume -------------------------------------------------------------------
class Stop(Exception):
    pass


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(arch: str, tmp_path: Path) -> None:
    cfg = cfg_of(arch, steps=40, checkpoint_every=10, eval_every=10)
    straight = train_sae(X, cfg, progress=False, work_dir=tmp_path / "a")

    def kill(info: dict) -> None:
        if info["step"] == 25:
            raise Stop

    with pytest.raises(Stop):
        train_sae(X, cfg, progress=False, work_dir=tmp_path / "b", callback=kill)
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    resumed = train_sae(X, cfg, progress=False, work_dir=tmp_path / "b")
    assert resumed.stats["resumed_from_step"] == 20
    a, b = straight.sae.state_dict(), resumed.sae.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.stats["fvu"] == straight.stats["fvu"]

    def lines(folder: str) -> list[dict]:
        rows = [
            json.loads(s)
            for s in (tmp_path / folder / "metrics.jsonl").read_text().split("\n")
            if s
        ]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert [r["step"] for r in lines("b")] == [10, 20, 30, 40]
    assert lines("b") == lines("a")


def test_resume_refuses_another_config(tmp_path: Path) -> None:
    cfg = cfg_of("topk", steps=10, checkpoint_every=5)
    train_sae(X, cfg, progress=False, work_dir=tmp_path)
    with pytest.raises(ConfigError, match="another training config"):
        train_sae(X, {**cfg, "lr": 2e-2}, progress=False, work_dir=tmp_path)


def test_checkpoint_holds_no_pickle_and_adam_state(tmp_path: Path) -> None:
    train_sae(
        X, cfg_of("batchtopk", steps=4, checkpoint_every=2), progress=False, work_dir=tmp_path
    )
    raw = (tmp_path / "checkpoint.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["saelab"])
    assert meta["step"] == 4 and meta["identity"]["config"]["architecture"] == "batchtopk"
    names = set(header) - {"__metadata__"}
    assert {"param.W_dec", "adam.W_dec.exp_avg", "adam.W_dec.exp_avg_sq", "adam.W_dec.step",
            "since_fired", "buffer.threshold"} <= names  # fmt: skip


# ----- config --------------------------------------------------------------------------------------
def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'foo'"):
        SAETrainConfig(foo=1)
    with pytest.raises(ConfigError, match="'l1_coefficient' does not apply to architecture 'topk'"):
        SAETrainConfig(architecture="topk", l1_coefficient=1.0)
    with pytest.raises(ConfigError, match="'k' does not apply to architecture 'jumprelu'"):
        SAETrainConfig(architecture="jumprelu", k=4)
    with pytest.raises(ConfigError, match="'widths'"):
        SAETrainConfig(architecture="matryoshka_batchtopk", widths=[8, 8, 32])
    with pytest.raises(ConfigError, match="'widths' must end at d_sae=32"):
        SAETrainConfig(architecture="matryoshka_batchtopk", widths=[8, 16], d_sae=32)
    with pytest.raises(ConfigError, match=r"'k'.*d_sae"):
        SAETrainConfig(k=40, d_sae=32)
    with pytest.raises(ConfigError, match=r"'d_sae'.*'expansion_factor'"):
        SAETrainConfig(d_sae=32, expansion_factor=4)
    with pytest.raises(ConfigError, match="key 'lr'"):
        SAETrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="'lr_warmup_steps'"):
        SAETrainConfig(steps=10, lr_warmup_steps=11)
    # resolved against the data at training time
    with pytest.raises(ConfigError, match=r"'k' \(9\) must be <= d_sae \(8\)"):
        train_sae(torch.randn(64, 4), {"expansion_factor": 2, "k": 9, "steps": 1}, progress=False)
    with pytest.raises(ConfigError, match="'widths' must end at d_sae=8"):
        train_sae(torch.randn(64, 4), {"architecture": "matryoshka_batchtopk", "k": 2,
                                       "expansion_factor": 2, "widths": [2, 4]}, progress=False)  # fmt: skip
    bad = torch.randn(64, 4)
    bad[6, 2] = float("inf")
    with pytest.raises(DatasetError, match="row 6"):
        train_sae(bad, {"d_sae": 8, "k": 2, "steps": 1}, progress=False)


def test_run_config_uses_the_same_class_and_names_the_key() -> None:
    run = validate_config({"saes": [{"id": "a", "train": {"architecture": "gated"}}]}, "x.yaml")
    assert isinstance(run.saes[0].train, SAETrainConfig)
    assert run.saes[0].train.l1_coefficient == 5.0 and run.saes[0].train.k is None
    with pytest.raises(ConfigError, match=r"'l0_coefficient' does not apply.*at 'saes\.0\.train'"):
        validate_config(
            {"saes": [{"id": "a", "train": {"architecture": "gated", "l0_coefficient": 1}}]}, "x"
        )
    with pytest.raises(ConfigError, match=r"unknown key 'bogus' \(at 'saes\.0\.train'\)"):
        validate_config({"saes": [{"id": "a", "train": {"bogus": 1}}]}, "x")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_dump_round_trips_with_family_defaults(arch: str) -> None:
    cfg = SAETrainConfig(architecture=arch)
    again = SAETrainConfig(**cfg.model_dump())
    assert again == cfg
    dump = cfg.model_dump()
    assert (dump["k"] is not None) == (
        arch in ("topk", "batchtopk", "matryoshka_batchtopk", "mp_sae")
    )
    assert (dump["l1_coefficient"] is not None) == (arch in ("standard", "gated"))
    assert (dump["bandwidth"] is not None) == (arch == "jumprelu")


def test_default_learning_rates() -> None:
    assert SAETrainConfig().resolved_lr(2**14) == pytest.approx(2e-4)
    assert SAETrainConfig().resolved_lr(2**16) == pytest.approx(1e-4)
    assert SAETrainConfig(architecture="jumprelu").resolved_lr(2**16) == 7e-5
    assert SAETrainConfig().resolved_d_sae(384) == 3072


# ----- kernels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("per_row", [True, False])
def test_sparse_kernels_match_dense_autograd(per_row: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    n, d, f, k = 7, 5, 13, 3
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    params = [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in
              [(f, d), (f,), (f, d), (d,)]]  # fmt: skip
    w_enc, b_enc, w_dec, b_dec = params

    def choose(h: torch.Tensor) -> torch.Tensor:  # a [n, f] 0/1 selection mask
        if per_row:
            return torch.zeros_like(h).scatter(1, h.topk(k, dim=1).indices, 1.0)
        flat = h.reshape(-1).topk(n * k).indices
        return torch.zeros(n * f, dtype=h.dtype).scatter(0, flat, 1.0).reshape(n, f)

    def sparse_loss() -> torch.Tensor:
        xp = x - b_dec
        with torch.no_grad():
            h = torch.addmm(b_enc, xp, w_enc.T)
            sel = (
                Selection.per_row(h.topk(k, dim=1).indices, f)
                if per_row
                else Selection.from_flat(choose(h).reshape(-1).nonzero().squeeze(1), n, f)
            )
        v = sparse_codes(xp, w_enc, b_enc, h, sel)
        return ((sparse_decode(v, w_dec, sel) + b_dec - x) ** 2).sum()

    def dense_loss() -> torch.Tensor:
        h = (x - b_dec) @ w_enc.T + b_enc
        codes = torch.relu(h) * choose(h.detach())
        return ((codes @ w_dec + b_dec - x) ** 2).sum()

    for a, b in zip(
        torch.autograd.grad(sparse_loss(), params),
        torch.autograd.grad(dense_loss(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_batchtopk_selector_equals_flat_topk() -> None:
    gen = torch.Generator().manual_seed(4)
    sel = BatchTopKSelector()
    h = torch.randn(64, 50, generator=gen)
    for step in range(8):  # drifting values exercise the guess, the retry and the first call
        h = h + (0.5 if step == 4 else 0.05) * torch.randn(64, 50, generator=gen)
        got = sel(h, 3 * 64)
        top = h.reshape(-1).topk(3 * 64)
        expect = top.indices[top.values > 0].sort().values
        assert torch.equal(got, expect), step
    h = -h.abs() - 1  # nothing positive: nothing selected
    assert sel(h, 3 * 64).numel() == 0


def test_jumprelu_straight_through_gradients_by_hand() -> None:
    h = torch.tensor([[0.30, 0.5004, 0.60], [0.10, 0.4998, 0.90]], requires_grad=True)
    theta = torch.tensor([0.2, 0.5, 1.0], requires_grad=True)
    eps = 0.001
    f, l0 = JumpReLUWithL0.apply(h, theta, eps)
    assert torch.equal(f.detach(), torch.tensor([[0.30, 0.5004, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(l0.detach(), torch.tensor([2.0, 0.0]))
    gf = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    gl = torch.tensor([0.7, 0.9])
    (f * gf).sum().add((l0 * gl).sum()).backward()
    # window |h - theta| < eps/2 only for latent 1 in both rows
    d_theta1 = -(1 / eps) * ((0.5 * 2.0 + 0.7) + (0.5 * 5.0 + 0.9))
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, d_theta1, 0.0]))
    torch.testing.assert_close(h.grad, gf * torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_geometric_median_resists_outliers() -> None:
    gen = torch.Generator().manual_seed(4)
    pts = torch.randn(200, 3, generator=gen) * 0.1 + torch.tensor([1.0, -2.0, 0.5])
    pts[:20] += 1000.0
    med = geometric_median(pts)
    assert float((med - torch.tensor([1.0, -2.0, 0.5])).norm()) < 0.1
    assert float((pts.mean(0) - torch.tensor([1.0, -2.0, 0.5])).norm()) > 100


def test_folded_normalisation_gives_codes_in_raw_units() -> None:
    cfg = cfg_of("topk", steps=30, lr=3e-3)
    a = train_sae(X, cfg, progress=False)
    s = a.stats["norm_scale"]
    train_rows, _ = split_rows(X.shape[0], SAETrainConfig(**cfg))
    xt = X[train_rows].double()
    assert s == pytest.approx(math.sqrt(D / float((xt**2).sum(1).mean())), rel=1e-9)
    # scaling the data by 4 (exact in floating point) trains the same SAE with codes 4x larger
    b = train_sae(X * 4, cfg, progress=False)
    assert b.stats["norm_scale"] == pytest.approx(s / 4, rel=1e-12)
    torch.testing.assert_close(b.sae.W_dec, a.sae.W_dec, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(b.sae.encode(X * 4), 4 * a.sae.encode(X), rtol=1e-4, atol=1e-4)


def test_evaluate_counts_signed_codes(trained: dict) -> None:
    sae = trained["mp_sae"].sae
    metrics, counts = evaluate(sae, X[:100])
    with torch.no_grad():
        codes = sae.encode(X[:100])
    assert bool((codes < 0).any())  # matching pursuit codes are signed
    assert torch.equal(counts, (codes != 0).sum(0))
    assert metrics["l0"] == pytest.approx(float((codes != 0).sum(1).float().mean()))


# ----- saelab sae train ------------------------------------------------------------------------
def test_sae_train_cli(tmp_path: Path) -> None:
    from saelab.cli import main

    model = build_tiny_model(tmp_path / "model", "bert")
    words = ["the", "cat", "sat", "on", "mat", "big", "dog", "runs", "over", "red", "bird"]
    gen = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (8,), generator=gen).tolist())
             for _ in range(120)]  # fmt: skip
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    import pandas as pd

    pd.DataFrame({"body": lines[:40], "x": range(40)}).to_csv(tmp_path / "t.csv", index=False)
    config = {
        "model": {"name": str(model), "device": "cpu"},
        "hook": "blocks.1.hook_resid_post",
        "files": [
            {"path": str(tmp_path / "texts.txt")},
            {"path": str(tmp_path / "t.csv"), "column": "body"},
        ],
        "max_tokens": 1200,
        "saes": {
            "tk": {
                "architecture": "topk",
                "k": 4,
                "expansion_factor": 2,
                "steps": 20,
                "batch_size": 64,
            },
            "jr": {
                "architecture": "jumprelu",
                "expansion_factor": 2,
                "steps": 20,
                "batch_size": 64,
            },
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["sae", "train", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    for sae_id, arch in (("tk", "topk"), ("jr", "jumprelu")):
        folder = out / sae_id
        assert {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "training.json",
                "metrics.jsonl"} <= {p.name for p in folder.iterdir()}  # fmt: skip
        sae = load_sae(folder)
        assert sae.architecture == arch and sae.d_in == 32 and sae.d_sae == 64
        assert sae.cfg.metadata["hook_name"] == "blocks.1.hook_resid_post"
        stats = json.loads((folder / "training.json").read_text())
        assert stats["tokens_collected"] == 1200 and stats["steps"] == 20
        assert not (out / f"{sae_id}.work").exists()
    mtime = (out / "tk" / "sae_weights.safetensors").stat().st_mtime_ns
    assert main(["sae", "train", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "tk" / "sae_weights.safetensors").stat().st_mtime_ns == mtime  # kept
    (tmp_path / "texts.txt").write_text("\n".join(reversed(lines)) + "\n")  # other texts: retrain
    del config["saes"]["jr"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["sae", "train", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "tk" / "sae_weights.safetensors").stat().st_mtime_ns != mtime
    # a bad key exits 2 naming it
    config["saes"]["tk"]["l1_coefficient"] = 1.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["sae", "train", str(tmp_path / "bad.yaml"), "--out", str(out)]) == 2


def test_read_text_file_errors(tmp_path: Path) -> None:
    from saelab.sae.training.corpus import read_text_file

    (tmp_path / "a.csv").write_text("prompt,y\nhello,1\n,2\nworld,3\n")
    assert read_text_file(tmp_path / "a.csv") == ["hello", "world"]
    with pytest.raises(DatasetError, match=r"no column 'text'.*\['prompt', 'y'\]"):
        read_text_file(tmp_path / "a.csv", "text")
    with pytest.raises(DatasetError, match="text file not found"):
        read_text_file(tmp_path / "a.txt")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DatasetError, match="unsupported text file"):
        read_text_file(tmp_path / "a.json")
    (tmp_path / "a.txt").write_text("one\n\n  \ntwo\n")
    assert read_text_file(tmp_path / "a.txt") == ["one", "two"]
    with pytest.raises(DatasetError, match="no columns"):
        read_text_file(tmp_path / "a.txt", "prompt")


def test_pipeline_train_key_covers_the_whole_training_config() -> None:
    from saelab.config import SAEConfig
    from saelab.pipeline.saes import train_key

    run = validate_config({}, "x")

    def key(**train) -> str:
        sc = SAEConfig(id="a", train=SAETrainConfig(**train))
        return train_key(run, sc, None, 3, "mean", [], {"k": 1})

    base = key(architecture="jumprelu")
    assert key(architecture="jumprelu") == base
    assert key(architecture="jumprelu", bandwidth=0.01) != base
    assert key(architecture="jumprelu", heldout_fraction=0.1) != base
    assert key(architecture="gated") != base


def test_collect_tokens_at_any_hook_leaves_special_tokens_out(tmp_path: Path) -> None:
    from saelab.activations import extract, load_model
    from saelab.sae.training.corpus import collect_tokens

    handle = load_model(str(build_tiny_model(tmp_path / "m", "bert")), device="cpu")
    texts = ["the cat sat", "a dog runs over the mat", "red bird"]  # 11 words, + CLS/SEP each
    resid = collect_tokens(handle, texts, "blocks.1.hook_resid_post", 100, progress=False)
    mlp = collect_tokens(handle, texts, "blocks.1.hook_mlp_out", 100, progress=False)
    assert resid.shape == mlp.shape == (11, 32)
    assert not torch.allclose(resid, mlp)
    la = extract(handle, texts, [1], "mean", keep_tokens=True, progress=False)[1]
    expect = la.tokens[~la.special]  # same rows, in the seeded text order
    assert sorted(map(tuple, resid.tolist())) == sorted(map(tuple, expect.tolist()))
    assert collect_tokens(handle, texts, 1, 5, progress=False).shape == (5, 32)  # capped


@pytest.mark.parametrize("aux_path", ["dense", "sparse"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_topk_family_terms_equal_dense_formulas(arch: str, aux_path: str) -> None:
    from saelab.sae.training.base import StepContext

    cfg = SAETrainConfig(architecture=arch, d_sae=F, k=3, k_aux=4, auxk_coefficient=0.5,
                         **({"widths": [8, 20, F]} if arch.startswith("mat") else {}))  # fmt: skip
    trainer = SAETrainer(cfg, D, 10, torch.zeros(D), dead_window_tokens=10**9)
    trainer.family.dense_aux_factor = 4 if aux_path == "dense" else 0  # AuxK kernels
    p = {k: v.detach().clone() for k, v in trainer.params.items()}
    p["b_enc"] += 0.1 * torch.randn(F, generator=torch.Generator().manual_seed(5))
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(6))
    dead = torch.zeros(F, dtype=torch.bool)
    dead[[1, 5, 9, 13, 17, 21]] = True  # 6 dead > k_aux: AuxK takes the top 4 per token
    out = trainer.family.forward(x, p, StepContext(0, 1.0, dead))

    h = (x - p["b_dec"]) @ p["W_enc_T"].T + p["b_enc"]
    if arch == "topk":
        keep = torch.zeros_like(h).scatter(1, h.topk(3, dim=1).indices, 1.0)
    else:
        top = torch.relu(h).reshape(-1).topk(3 * 64)
        keep = torch.zeros(h.numel()).scatter(0, top.indices, 1.0).reshape(h.shape)
    f = torch.relu(h) * keep

    def fvu(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).sum() / ((a - a.mean(0)) ** 2).sum())

    x_hat = f @ p["W_dec"] + p["b_dec"]
    widths = [8, 20, F] if arch.startswith("mat") else [F]
    for w in widths:
        name = f"fvu_w{w}" if len(widths) > 1 else "fvu"
        prefix = f[:, :w] @ p["W_dec"][:w] + p["b_dec"]
        assert float(out.terms[name]) * (len(widths) if len(widths) > 1 else 1) == pytest.approx(
            fvu(x, prefix), rel=1e-5
        )
    hd = h.masked_fill(~dead, float("-inf"))
    aux_f = torch.zeros_like(h).scatter(1, hd.topk(4, dim=1).indices, 1.0) * torch.relu(h)
    e = x - x_hat
    assert float(out.terms["auxk"]) == pytest.approx(0.5 * fvu(e, aux_f @ p["W_dec"]), rel=1e-5)
    assert float(out.metrics["l0"]) == pytest.approx(float((f > 0).sum()) / 64)
    assert torch.equal(out.fired, (f > 0).any(0))
