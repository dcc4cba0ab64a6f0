"""Tests for the pursuit SAEs: matching_pursuit (SAELens), mp_sae (signed MP), ihtp (IHTP)."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from saelab.errors import SAEFileError
from saelab.sae import (
    IHTPSAE,
    MPSAE,
    SAE,
    MatchingPursuitSAE,
    SAEConfig,
    build_sae,
    load_sae,
    save_sae,
)
from saelab.sae.base import SAELENS_FORMAT_VERSION
from saelab.sae.ihtp import RCOND_EPS, min_norm_lstsq
from saelab.sae.mp_sae import signed_matching_pursuit

D_IN, D_SAE = 12, 40


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sae_lens():
    warnings.filterwarnings("ignore", category=UserWarning)
    import sae_lens

    return sae_lens


def _cfg(architecture: str, arch: dict, d_in: int = D_IN, d_sae: int = D_SAE, **kw) -> SAEConfig:
    return SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        arch=dict(arch),
        metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"},
        **kw,
    )


def _with_weights(sae: SAE, w_dec: torch.Tensor, b_dec: torch.Tensor) -> SAE:
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.b_dec.copy_(b_dec)
    return sae


def _random_pursuit(architecture: str, arch: dict, seed: int = 0, **kw) -> SAE:
    """Random, non-unit-norm decoder rows and a random b_dec."""
    sae = build_sae(_cfg(architecture, arch, **kw))
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(D_SAE, D_IN, generator=gen) * (0.5 + torch.rand(D_SAE, 1, generator=gen))
    return _with_weights(sae, w, torch.randn(D_IN, generator=gen) * 0.3)


def _x(n: int = 9, seed: int = 1, d: int = D_IN) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _orthonormal(d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q.T.contiguous()  # rows orthonormal


# ----- hand computations on tiny dictionaries ----------------------------------------------------
# d0 = (1, 0), d1 = (0.6, 0.8), x = (1, 1), b_dec = 0:
#   step 1: r.d = (1, 1.4)  -> pick d1, v = 1.4,  r = (0.16, -0.12)
#   step 2: r.d = (0.16, 0) -> pick d0, v = 0.16, r = (0, -0.12)
#   step 3: r.d = (0, -0.096): ReLU -> 0, support unchanged (MP stops); signed MP picks d1, v = -0.096
_W2 = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
_X2 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("arch", "expect"),
    [
        ({"residual_threshold": 0.0}, [0.16, 1.4]),  # stops on duplicate support
        ({"residual_threshold": 0.13}, [0.16, 1.4]),  # ||r|| = 0.12 < 0.13 after step 2
        ({"residual_threshold": 0.5}, [0.0, 1.4]),  # ||r|| = 0.2 < 0.5 after step 1
        ({"residual_threshold": 0.0, "max_iterations": 1}, [0.0, 1.4]),
    ],
)
def test_matching_pursuit_by_hand(arch: dict, expect: list[float]) -> None:
    sae = build_sae(_cfg("matching_pursuit", arch, d_in=2, d_sae=2, dtype="float64"))
    _with_weights(sae, _W2, torch.zeros(2))
    f = sae.encode(_X2)
    torch.testing.assert_close(f, torch.tensor([expect], dtype=torch.float64))
    torch.testing.assert_close(sae.decode(f), f @ _W2)


def test_mp_sae_by_hand_signed_third_step() -> None:
    sae = build_sae(_cfg("mp_sae", {"k": 3}, d_in=2, d_sae=2, dtype="float64"))
    assert isinstance(sae, MPSAE) and sae.k == 3
    b = torch.tensor([0.5, -2.0], dtype=torch.float64)
    _with_weights(sae, _W2, b)
    f = sae.encode(_X2 + b)
    torch.testing.assert_close(f, torch.tensor([[0.16, 1.4 - 0.096]], dtype=torch.float64))
    r = torch.tensor([[0.0, -0.12]]) + 0.096 * torch.tensor([[0.6, 0.8]])
    torch.testing.assert_close(sae(_X2 + b), _X2 + b - r.double())


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_mp_sae_on_orthonormal_dictionary_picks_largest_abs_correlations(steps: int) -> None:
    d = 6
    q = _orthonormal(d)
    sae = build_sae(_cfg("mp_sae", {"k": steps}, d_in=d, d_sae=d, dtype="float64"))
    b = torch.linspace(-1, 1, d, dtype=torch.float64)
    _with_weights(sae, q, b)
    x = _x(20, seed=3, d=d).double()
    corr = (x - b) @ q.T
    top = corr.abs().topk(steps, dim=1).indices
    expect = torch.zeros_like(corr).scatter_(1, top, corr.gather(1, top))
    f = sae.encode(x)
    torch.testing.assert_close(f, expect)
    assert (f < 0).any() and (f > 0).any()  # signed codes
    assert int((f != 0).sum(1).max()) == steps
    if steps == d:  # s = d_in steps on an orthonormal basis reconstruct exactly
        torch.testing.assert_close(sae(x), x)


def test_matching_pursuit_on_orthonormal_dictionary_keeps_largest_positive() -> None:
    d, steps = 6, 3
    q = _orthonormal(d, seed=4)
    arch = {"max_iterations": steps, "residual_threshold": 0.0}
    sae = build_sae(_cfg("matching_pursuit", arch, d_in=d, d_sae=d, dtype="float64"))
    _with_weights(sae, q, torch.zeros(d))
    x = _x(30, seed=5, d=d).double()
    corr = x @ q.T
    top = corr.topk(steps, dim=1).indices
    expect = torch.zeros_like(corr).scatter_(1, top, corr.gather(1, top).clamp_min(0))
    torch.testing.assert_close(sae.encode(x), expect)


def _mp_reference(x: np.ndarray, w: np.ndarray, steps: int) -> np.ndarray:
    """Row-by-row signed matching pursuit in numpy (exact projection on the chosen atom)."""
    codes = np.zeros((x.shape[0], w.shape[0]))
    norms = np.linalg.norm(w, axis=1)
    for n, r in enumerate(x.copy()):
        for _ in range(steps):
            c = w @ r
            j = int(np.argmax(np.abs(c) / norms))
            v = c[j] / norms[j] ** 2
            codes[n, j] += v
            r = r - v * w[j]
    return codes


def test_mp_sae_matches_reference_on_non_unit_norm_dictionary() -> None:
    sae = _random_pursuit("mp_sae", {"k": 5}, dtype="float64")
    x = _x(7).double()
    w, b = sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy()
    expect = _mp_reference(x.numpy() - b, w, 5)
    f = sae.encode(x)
    np.testing.assert_allclose(f.detach().numpy(), expect, rtol=1e-10, atol=1e-12)
    # rescaling an atom scales its code inversely; the reconstruction is unchanged
    j = int(f.abs().sum(0).argmax())
    before = sae.decode(f).detach()
    with torch.no_grad():
        sae.W_dec[j] *= 3.0
    g = sae.encode(x).detach()
    torch.testing.assert_close(g[:, j], f[:, j].detach() / 3.0)
    torch.testing.assert_close(sae.decode(g).detach(), before)


def test_mp_sae_gradients_flow_to_decoder_and_bias() -> None:
    sae = _random_pursuit("mp_sae", {"k": 3}, dtype="float64")
    x = _x(4).double()

    def recon(w_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
        return functional_call(sae, {"W_dec": w_dec, "b_dec": b_dec}, (x,))

    w = sae.W_dec.detach().clone().requires_grad_(True)
    b = sae.b_dec.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(recon, (w, b), eps=1e-6, atol=1e-7)
    loss = ((recon(w, b) - x) ** 2).sum()
    loss.backward()
    assert w.grad is not None and int((w.grad.abs().sum(1) > 0).sum()) >= 2
    assert b.grad is not None and bool(b.grad.abs().sum() > 0)
    # the direct function too (codes, not reconstructions)
    assert torch.autograd.gradcheck(
        lambda w_, x_: signed_matching_pursuit(x_, w_, 4), (w, x.clone().requires_grad_(True))
    )


def test_mp_sae_encode_keeps_only_small_tensors_for_backward() -> None:
    sae = _random_pursuit("mp_sae", {"k": 4})
    x = _x(5)
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sae.encode(x).sum().backward()
    assert saved and all(D_SAE not in shape or shape == (D_SAE, D_IN) for shape in saved)


# ----- matching_pursuit <-> SAELens ---------------------------------------------------------------
MP_CONFIGS = [
    ({}, {}),
    ({"max_iterations": 5, "residual_threshold": 0.0, "stop_on_duplicate_support": False}, {}),
    ({"residual_threshold": 2.0}, {"apply_b_dec_to_input": False}),
    ({"max_iterations": 7}, {"normalize_activations": "layer_norm"}),
]


@pytest.mark.parametrize(("arch", "core"), MP_CONFIGS)
def test_matching_pursuit_files_load_in_saelens_with_same_codes(
    tmp_path: Path, arch: dict, core: dict
) -> None:
    sae_lens = _sae_lens()
    ours = _random_pursuit("matching_pursuit", arch, seed=2, **core)
    folder = save_sae(ours, tmp_path / "mp")
    assert set(load_file(folder / "sae_weights.safetensors")) == {"W_dec", "b_dec"}
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert theirs.cfg.architecture() == "matching_pursuit"
    full = ours.cfg.arch
    assert theirs.cfg.residual_threshold == full["residual_threshold"]
    assert theirs.cfg.max_iterations == full["max_iterations"]
    assert theirs.cfg.stop_on_duplicate_support == full["stop_on_duplicate_support"]
    x = _x(16, seed=7)
    with torch.no_grad():
        f = ours.encode(x)
        assert bool((f >= 0).all()) and bool((f > 0).any())
        torch.testing.assert_close(theirs.encode(x), f, rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-5)
        if ours.cfg.normalize_activations == "none":
            torch.testing.assert_close(theirs.decode(f), ours.decode(f), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.W_enc, ours.W_dec.T)


@pytest.mark.parametrize(("arch", "core"), MP_CONFIGS)
def test_saelens_matching_pursuit_files_load_here_with_same_codes(
    tmp_path: Path, arch: dict, core: dict
) -> None:
    sae_lens = _sae_lens()
    theirs = sae_lens.SAE.from_dict(
        {"architecture": "matching_pursuit", "d_in": D_IN, "d_sae": D_SAE, **arch, **core}
    )
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        theirs.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=gen) * 0.5)
        theirs.b_dec.copy_(torch.randn(D_IN, generator=gen) * 0.3)
    theirs.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    theirs.save_model(str(tmp_path / "theirs"))
    ours = load_sae(tmp_path / "theirs")
    assert isinstance(ours, MatchingPursuitSAE)
    assert ours.cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"
    for key in ("residual_threshold", "max_iterations", "stop_on_duplicate_support"):
        assert ours.cfg.arch[key] == getattr(theirs.cfg, key), key
    x = _x(16, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_matching_pursuit_gradients_equal_saelens(tmp_path: Path) -> None:
    sae_lens = _sae_lens()
    ours = _random_pursuit("matching_pursuit", {"max_iterations": 6}, seed=4)
    theirs = sae_lens.SAE.load_from_disk(str(save_sae(ours, tmp_path / "mp")))
    x = _x(6, seed=2)
    for model in (ours, theirs):
        ((model(x) - x) ** 2).sum().backward()
    torch.testing.assert_close(ours.W_dec.grad, theirs.W_dec.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.b_dec.grad, theirs.b_dec.grad, rtol=1e-4, atol=1e-5)
    assert bool(ours.W_dec.grad.abs().sum() > 0)


# ----- IHTP ---------------------------------------------------------------------------------------
def _ihtp(w: torch.Tensor, b: torch.Tensor, k: int, **kw) -> IHTPSAE:
    sae = build_sae(_cfg("ihtp", {"k": k}, d_in=w.shape[1], d_sae=w.shape[0], **kw))
    _with_weights(sae, w, b)
    assert isinstance(sae, IHTPSAE)
    return sae


def _ihtp_reference(x: np.ndarray, w: np.ndarray, k: int, bounds: list[int]) -> np.ndarray:
    """IHTP per text in numpy: top-k by |x.d|/||d|| per token, union, min-norm LS (pinv)."""
    codes = np.zeros((x.shape[0], w.shape[0]))
    scores = np.abs(x @ w.T) / np.linalg.norm(w, axis=1)
    for t0, t1 in itertools.pairwise(bounds):
        if t1 == t0:
            continue
        support = np.unique(np.argsort(-scores[t0:t1], axis=1)[:, :k])
        a = w[support].T
        rcond = RCOND_EPS * max(a.shape)
        codes[t0:t1, support] = (np.linalg.pinv(a, rcond=rcond) @ x[t0:t1].T).T
    return codes


def test_ihtp_one_token_is_least_squares_on_topk_support() -> None:
    sae = _random_pursuit("ihtp", {"k": 4}, seed=6)
    x = _x(1, seed=4)
    w, b = sae.W_dec.double().detach().numpy(), sae.b_dec.double().detach().numpy()
    xc = x.double().numpy()[0] - b
    support = np.argsort(-np.abs(w @ xc) / np.linalg.norm(w, axis=1))[:4]
    coef, *_ = np.linalg.lstsq(w[support].T, xc, rcond=None)
    expect = np.zeros(D_SAE)
    expect[support] = coef
    for got in (sae.encode(x)[0], sae.encode_texts(x, torch.tensor([0, 1]))[0]):
        np.testing.assert_allclose(got.numpy(), expect, rtol=1e-5, atol=1e-5)
    assert (expect < 0).any() or (expect > 0).all()  # signed refit (no ReLU)


def test_ihtp_union_of_supports_over_two_tokens_by_hand() -> None:
    s = 2**-0.5
    w = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [s, s, 0]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    sae = _ihtp(w, b, k=1, dtype="float64")
    # token 1: |x.d| = (2, 0.1, 0.5, 1.48) -> e1; token 2: (0.3, 0, 3, 0.21) -> e3; union {0, 2}
    xc = torch.tensor([[2.0, 0.1, 0.5], [0.3, 0.0, -3.0]], dtype=torch.float64)
    per_text = sae.encode_texts(xc + b, torch.tensor([0, 2]))
    expect = torch.tensor([[2.0, 0, 0.5, 0], [0.3, 0, -3.0, 0]], dtype=torch.float64)
    torch.testing.assert_close(per_text, expect)
    per_token = sae.encode(xc + b)  # each token alone keeps its own top-1 atom
    torch.testing.assert_close(per_token, torch.tensor([[2.0, 0, 0, 0], [0, 0, -3.0, 0]]).double())
    torch.testing.assert_close(sae.encode_texts(xc + b, torch.tensor([0, 1, 2])), per_token)


def test_ihtp_texts_match_reference_and_per_row_encode() -> None:
    sae = _random_pursuit("ihtp", {"k": 3}, seed=8, dtype="float64")
    x = _x(9, seed=9).double()
    bounds = [0, 3, 3, 5, 9]  # an empty text included
    got = sae.encode_texts(x, torch.tensor(bounds))
    w, b = sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy()
    expect = _ihtp_reference(x.numpy() - b, w, 3, bounds)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-9, atol=1e-10)
    sizes = [int((got[t0] != 0).sum()) for t0 in (0, 5)]
    assert all(3 <= s <= 3 * n for s, n in zip(sizes, (3, 4), strict=True))
    # every row its own text: the batched encode equals the per-text path
    torch.testing.assert_close(sae.encode(x), sae.encode_texts(x, torch.arange(10)))
    # a one-token-per-text encode of many rows goes through several batched chunks
    import saelab.sae.ihtp as ihtp_mod

    old = ihtp_mod.CHUNK_ELEMS
    ihtp_mod.CHUNK_ELEMS = 3 * D_IN * 2
    try:
        torch.testing.assert_close(sae.encode(x), sae.encode_texts(x, torch.arange(10)))
    finally:
        ihtp_mod.CHUNK_ELEMS = old


def test_ihtp_rank_deficient_systems_give_min_norm_codes() -> None:
    a = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3  # unit atom
    w = torch.stack([a, a, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)]).double()
    sae = _ihtp(w, torch.zeros(3), k=2, dtype="float64")
    # duplicate atoms tie for the top-2; x = 3a is split equally between them (minimum norm)
    f = sae.encode((3 * a).unsqueeze(0))
    torch.testing.assert_close(f, torch.tensor([[1.5, 1.5, 0.0]], dtype=torch.float64))
    # |S| > d_in with duplicates: finite codes, the pinv solution, exact reconstruction
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    w = torch.cat([base, base[:2], base[:1] * 2.0])  # 7 atoms in R^3, collinear pairs
    sae = _ihtp(w, torch.randn(3, generator=gen, dtype=torch.float64), k=3, dtype="float64")
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    got = sae.encode_texts(x, torch.tensor([0, 4]))
    assert bool(torch.isfinite(got).all())
    assert int((got[0] != 0).sum()) > 3  # |S| > d_in
    expect = _ihtp_reference((x - sae.b_dec).detach().numpy(), w.numpy(), 3, [0, 4])
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sae.decode(got), x)  # the union spans R^3
    # the SVD (pinv) solve used off the CPU is the same minimum-norm solution
    sys = w.T.contiguous()
    rhs = x.T.contiguous()
    pinv = torch.linalg.pinv(sys, rtol=RCOND_EPS * 7) @ rhs
    torch.testing.assert_close(min_norm_lstsq(sys, rhs), pinv)


def test_ihtp_encode_texts_rejects_bad_offsets() -> None:
    sae = _random_pursuit("ihtp", {"k": 2})
    x = _x(4)
    for bad in ([0, 3], [1, 4], [0, 3, 2, 4], [[0, 4]]):
        with pytest.raises(ValueError, match="offsets"):
            sae.encode_texts(x, torch.tensor(bad))
    with pytest.raises(ValueError, match=r"shape \[T, 12\]"):
        sae.encode_texts(x[:, :5], torch.tensor([0, 4]))


def test_ihtp_from_dictionary_shares_decoder_and_preprocessing() -> None:
    topk = build_sae(
        _cfg("topk", {"k": 3}, normalize_activations="layer_norm", apply_b_dec_to_input=False)
    )
    with torch.no_grad():
        topk.b_dec.copy_(torch.linspace(-1, 1, D_IN))
    ihtp = IHTPSAE.from_dictionary(topk, k=D_SAE)
    assert ihtp.W_dec.data_ptr() == topk.W_dec.data_ptr() and not ihtp.W_dec.requires_grad
    assert ihtp.cfg.normalize_activations == "layer_norm"
    assert ihtp.cfg.apply_b_dec_to_input  # untied decoders always add b_dec
    assert ihtp.cfg.metadata["hook_name"] == "blocks.1.hook_resid_post"
    assert ihtp.cfg.metadata["ihtp_dictionary"] == "topk" and ihtp.k == D_SAE
    x = _x(5)
    # the full (spanning) support reconstructs every token; layer_norm is undone on output
    torch.testing.assert_close(ihtp(x), x, rtol=1e-4, atol=1e-4)
    mp = _random_pursuit("matching_pursuit", {}, apply_b_dec_to_input=False)
    from_mp = IHTPSAE.from_dictionary(mp, k=2)
    assert not from_mp.cfg.apply_b_dec_to_input  # tied MP decoders add b_dec only if subtracted
    with pytest.raises(SAEFileError, match="'k'"):
        IHTPSAE.from_dictionary(topk, k=D_SAE + 1)


# ----- shared interface, save / load, config errors ------------------------------------------------
PURSUIT = [
    ("matching_pursuit", {"max_iterations": 4, "residual_threshold": 0.05}),
    ("mp_sae", {"k": 4}),
    ("ihtp", {"k": 3}),
]


@pytest.mark.parametrize(("architecture", "arch"), PURSUIT)
def test_pursuit_save_load_round_trip(tmp_path: Path, architecture: str, arch: dict) -> None:
    sae = _random_pursuit(architecture, arch, seed=12, normalize_activations="layer_norm")
    folder = save_sae(sae, tmp_path / architecture)
    assert {k: list(v.shape) for k, v in load_file(folder / "sae_weights.safetensors").items()} == {
        "W_dec": [D_SAE, D_IN],
        "b_dec": [D_IN],
    }
    back = load_sae(folder)
    assert type(back) is type(sae)
    assert back.cfg.metadata.pop("sae_lens_version") == SAELENS_FORMAT_VERSION
    assert back.cfg == sae.cfg
    x = _x(6, seed=13)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(back(x), sae(x), rtol=0, atol=0)


def test_flags_and_encode_texts_default() -> None:
    flags = {
        "standard": (False, False),
        "topk": (False, False),
        "matching_pursuit": (False, False),
        "mp_sae": (False, True),
        "ihtp": (True, True),
    }
    offsets = torch.tensor([0, 2, 2, 6, 9])
    x = _x(9, seed=14)
    for name, (seq, signed) in flags.items():
        arch = {"k": 3} if name in ("topk", "mp_sae", "ihtp") else {}
        sae = build_sae(_cfg(name, arch), seed=1)
        assert (sae.sequence_level, sae.signed_codes) == (seq, signed), name
        if not seq:
            torch.testing.assert_close(sae.encode_texts(x, offsets), sae.encode(x))


@pytest.mark.parametrize(
    ("architecture", "arch", "match"),
    [
        ("mp_sae", {"k": 0}, "'k'"),
        ("mp_sae", {}, "missing key 'k'"),
        ("ihtp", {"k": D_SAE + 1}, "'k' must be in 1..d_sae"),
        ("matching_pursuit", {"max_iterations": 0}, "'max_iterations'"),
        ("matching_pursuit", {"max_iterations": "5"}, "'max_iterations'"),
        ("matching_pursuit", {"residual_threshold": "x"}, "'residual_threshold'"),
    ],
)
def test_bad_pursuit_configs_name_the_key(architecture: str, arch: dict, match: str) -> None:
    with pytest.raises(SAEFileError, match=match):
        build_sae(_cfg(architecture, arch))


def test_tied_w_enc_is_read_only_view() -> None:
    for name, arch in PURSUIT:
        sae = build_sae(_cfg(name, arch))
        assert sae.W_enc.data_ptr() == sae.W_dec.data_ptr()
        assert [n for n, _ in sae.named_parameters()] == ["W_dec", "b_dec"]
        with pytest.raises((AttributeError, KeyError)):
            sae.W_enc = torch.nn.Parameter(torch.zeros(D_IN, D_SAE))
