"""Core SAE metrics against hand computations (saelab.evals.core)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.evals import CoreAccumulator, core_metrics
from saelab.sae import SAEConfig, build_sae


def _sae(architecture: str = "topk", **arch):
    cfg = SAEConfig(d_in=6, d_sae=12, architecture=architecture, arch=arch or {"k": 3})
    sae = build_sae(cfg, seed=2)
    with torch.no_grad():
        sae.b_dec.copy_(torch.linspace(-1, 1, 6))
    return sae


def _tokens(n: int = 40, offset: float = 5.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64).float() + offset


def test_metrics_equal_their_formulas():
    sae, x = _sae(), _tokens()
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    xd, hd, fd = x.double(), x_hat.double(), f.double()
    err = ((xd - hd) ** 2).sum(1)
    var = (xd**2).sum(1).mean() - (xd.mean(0) ** 2).sum()
    m = core_metrics(sae, x, batch_size=40)
    assert m["n_tokens"] == 40
    assert m["mse"] == pytest.approx(float(err.mean()))
    assert m["explained_variance"] == pytest.approx(float(1 - err.mean() / var))
    assert m["fvu"] == pytest.approx(float(err.mean() / var))
    # the legacy number: mean of per-token ratios about the batch mean (one batch here)
    legacy = (1 - err / ((xd - xd.mean(0)) ** 2).sum(1)).mean()
    assert m["explained_variance_legacy"] == pytest.approx(float(legacy))
    assert m["l0"] == pytest.approx(float((fd != 0).sum(1).double().mean()))
    assert m["l1"] == pytest.approx(float(fd.abs().sum(1).mean()))
    cos = (xd * hd).sum(1) / (xd.norm(dim=1) * hd.norm(dim=1))
    assert m["cossim"] == pytest.approx(float(cos.mean()))
    assert m["l2_ratio"] == pytest.approx(float((hd.norm(dim=1) / xd.norm(dim=1)).mean()))
    bias = (hd**2).sum(1).mean() / (xd * hd).sum(1).mean()
    assert m["relative_reconstruction_bias"] == pytest.approx(float(bias))
    density = (fd != 0).double().mean(0)
    assert m["dead_fraction"] == pytest.approx(float((density == 0).double().mean()))
    assert m["dense_fraction"] == pytest.approx(float((density > 0.1).double().mean()))
    assert sum(m["density_histogram"]) == 12


def test_explained_variance_is_about_the_mean_not_about_zero():
    """Shifting every activation by a constant, and the SAE's b_dec with it, leaves the error and the
    variance about the mean unchanged; a variance about zero (SAEBench 0.6) would grow with it."""
    base, shifted = _sae(), _sae()
    with torch.no_grad():
        shifted.b_dec.add_(100.0)
    x = _tokens(offset=0.0)
    a = core_metrics(base, x)
    b = core_metrics(shifted, x + 100.0)
    assert b["explained_variance"] == pytest.approx(a["explained_variance"], rel=1e-4)
    about_zero = 1 - b["mse"] / float(((x.double() + 100) ** 2).sum(1).mean())
    assert about_zero > b["explained_variance"] + 0.1


def test_batching_changes_only_the_legacy_number():
    sae, x = _sae(), _tokens(90)
    one = core_metrics(sae, x, batch_size=90)
    many = core_metrics(sae, x, batch_size=7)
    for key in ("mse", "explained_variance", "l0", "l1", "cossim", "relative_reconstruction_bias"):
        assert many[key] == pytest.approx(one[key], rel=1e-9)
    assert many["explained_variance_legacy"] != pytest.approx(one["explained_variance_legacy"])


def test_sparse_and_dense_codes_accumulate_alike():
    x, x_hat = _tokens(10), _tokens(10) * 0.9
    f = torch.zeros(10, 12)
    f[np.arange(10), np.arange(10) % 12] = torch.linspace(-1, 1, 10)
    dense, sparse = CoreAccumulator(12), CoreAccumulator(12)
    dense.update(x, x_hat, f)
    sparse.update(x, x_hat, f.to_sparse_csr())
    assert dense.result() == sparse.result()
    with pytest.raises(ValueError, match="no tokens"):
        CoreAccumulator(3).result()
