"""Tests for the encoding engine: streamed blocks == in-memory codes, poolings, special tokens."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError, SAEFileError
from saelab.sae import SAE, SAEConfig, StandardSAE, build_sae, encode_rows, encode_rows_multi
from saelab.sae.encode import open_sae_encoder
from saelab.sae.formats import load_sae, open_sae, save_sae
from saelab.sae.formats.base import SAEFiles, TensorRef
from saelab.sae.stream import (
    MEMORY_BUDGET_ENV,
    BlockReader,
    StreamedSAE,
    memory_budget,
    parse_bytes,
    safetensors_locations,
)

D_IN, D_SAE = 6, 23  # d_sae prime: blocks of 2, 4, 5 leave a short last block

ARCHS = [
    ("standard", {}),
    ("topk", {"k": 4}),
    ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
    ("gated", {}),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_sae(
    architecture: str,
    arch: dict,
    dtype: str = "float32",
    normalize: str = "none",
    apply_b_dec: bool = True,
    seed: int = 0,
) -> SAE:
    cfg = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=architecture,
        arch=dict(arch),
        dtype=dtype,
        normalize_activations=normalize,
        apply_b_dec_to_input=apply_b_dec,
        metadata={"hook_name": "blocks.1.hook_resid_post"},
    )
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            value = torch.randn(p.shape, generator=gen) * 0.5
            if name == "threshold":
                value = value.abs() * 0.5
            p.copy_(value)
    return sae.eval()


def _saelens_files(folder: Path) -> SAEFiles:
    """SAEFiles of a SAELens folder: tensors in ``sae_weights.safetensors``, SAELens orientation."""
    files = open_sae(folder)
    assert set(files.tensors) >= {"W_enc", "W_dec"} and files.format == "saelens"
    return files


def _acts(lengths: list[int], seed: int = 3, special_first: bool = False) -> LayerActivations:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(sum(lengths), D_IN, generator=gen) * 1.5
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    pooled = torch.stack([tokens[offsets[i] : offsets[i + 1]].mean(0) for i in range(len(lengths))])
    special = None
    if special_first:
        special = torch.zeros(tokens.shape[0], dtype=torch.bool)
        special[offsets[:-1]] = True
    return LayerActivations(pooled=pooled, tokens=tokens, offsets=offsets, special=special)


LENGTHS = [3, 1, 7, 2, 5, 4, 1, 6, 2]


def _assert_same_codes(got: sp.csr_matrix, want: sp.csr_matrix, exact: bool) -> None:
    assert got.shape == want.shape and got.has_canonical_format
    if exact:
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.data, want.data)
    else:
        np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-5, atol=1e-6)


def _assert_equal_up_to_ties(got: sp.csr_matrix, want: sp.csr_matrix) -> None:
    """TopK rows: the same values; latents may differ only where they tie at the smallest kept value."""
    for i in range(got.shape[0]):
        g, w = got[i].toarray()[0], want[i].toarray()[0]
        np.testing.assert_array_equal(np.sort(g[g != 0]), np.sort(w[w != 0]))
        differ = np.flatnonzero(g != w)
        if differ.size:
            kth = np.sort(w[w != 0])[0]
            assert np.all(np.maximum(g[differ], w[differ]) == kth)


# ----- streamed == in memory --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("architecture", "arch"), ARCHS)
def test_streamed_equals_in_memory(tmp_path: Path, architecture: str, arch: dict, dtype: str):
    sae = _random_sae(architecture, arch, dtype=dtype, normalize="layer_norm")
    folder = save_sae(sae, tmp_path / "sae")
    files = _saelens_files(folder)
    loaded = load_sae(folder)
    acts = _acts(LENGTHS, special_first=True)
    modes = ["pool_codes", "max_codes", "code_pooled"]
    want = encode_rows_multi(loaded, acts, "mean", modes)
    tokens = LayerActivations(pooled=acts.tokens)  # every token its own row: per-token codes
    want_tokens = encode_rows(loaded, tokens, "last")
    # bf16 TopK pre-activations tie often (8-bit mantissa): a tie at the k-th value may keep a
    # different latent, which moves pooled codes; per-token codes then agree up to those ties
    ties_possible = architecture == "topk" and dtype == "bfloat16"
    for block, budget in ((1, 2**26), (4, 7), (5, 2**26), (D_SAE, 3)):
        with StreamedSAE(files, block_latents=block) as enc:
            got = encode_rows_multi(enc, acts, "mean", modes, max_batch_elems=budget)
            got_tokens = encode_rows(enc, tokens, "last", max_batch_elems=budget)
        if ties_possible:
            _assert_equal_up_to_ties(got_tokens, want_tokens)
            continue
        _assert_same_codes(got_tokens, want_tokens, exact=False)
        for mode in modes:
            # a matmul over a block of columns rounds like the full matmul on this CPU; the test
            # still accepts float-level differences should a BLAS block differently
            _assert_same_codes(got[mode], want[mode], exact=False)
            assert got[mode].nnz == want[mode].nnz
    # the codes are the architecture's, by hand on one token
    x = acts.tokens[:1]
    with torch.no_grad():
        np.testing.assert_allclose(
            encode_rows(files, LayerActivations(pooled=x), "last").toarray(),
            loaded.encode(x).float().numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale"])
def test_streamed_honours_saelens_preprocessing(tmp_path: Path, normalize: str, apply_b_dec: bool):
    sae = _random_sae("jumprelu", {}, normalize=normalize, apply_b_dec=apply_b_dec, seed=5)
    files = _saelens_files(save_sae(sae, tmp_path / "sae"))
    acts = _acts(LENGTHS)
    x = acts.pooled
    h = x
    if normalize == "constant_norm_rescale":
        h = x * (D_IN**0.5) / x.norm(dim=-1, keepdim=True)
    if apply_b_dec:
        h = h - sae.b_dec.detach()
    pre = h @ sae.W_enc.detach() + sae.b_enc.detach()
    expect = torch.relu(pre) * (pre > sae.threshold.detach())
    got = encode_rows(StreamedSAE(files, block_latents=3), acts, "last")
    np.testing.assert_allclose(got.toarray(), expect.numpy(), rtol=1e-5, atol=1e-6)


def test_streamed_topk_keeps_running_top_k_across_blocks(tmp_path: Path) -> None:
    sae = _random_sae("topk", {"k": 6}, seed=2)
    files = _saelens_files(save_sae(sae, tmp_path / "sae"))
    acts = _acts([1] * 30, seed=9)
    got = encode_rows(StreamedSAE(files, block_latents=2), acts, "last")
    pre = (acts.pooled - sae.b_dec.detach()) @ sae.W_enc.detach() + sae.b_enc.detach()
    order = torch.argsort(pre, dim=1, descending=True)[:, :6]
    expect = torch.zeros_like(pre).scatter_(1, order, pre.gather(1, order).clamp_min(0))
    np.testing.assert_allclose(got.toarray(), expect.numpy(), rtol=1e-6, atol=1e-6)
    assert (np.diff(got.indptr) <= 6).all()


# ----- reading blocks ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_block_reader_rows_columns_and_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 11, generator=gen).to(dtype)
    v = torch.randn(11, generator=gen).to(dtype)
    path = tmp_path / "w.safetensors"
    save_file({"a": a, "v": v, "s": torch.tensor([0.25]).to(dtype)}, str(path))
    reader = BlockReader()
    buf = torch.empty(4096, dtype=torch.uint8)
    for s, e in [(0, 11), (3, 7), (10, 11)]:
        # latent axis 1 of [5, 11]: 5 strided reads; transposed: latents on the file's rows
        cols = reader.read(TensorRef(path, "a"), 1, s, e, buf)
        assert cols.dtype == dtype and torch.equal(cols, a[:, s:e])
        assert torch.equal(reader.read(TensorRef(path, "v"), 0, s, e, buf), v[s:e])
        assert torch.equal(
            reader.read(TensorRef(path, "s", broadcast=11), 0, s, e),
            torch.full((e - s,), 0.25).to(dtype),
        )
    for s, e in [(0, 5), (1, 4)]:
        rows = reader.read(TensorRef(path, "a", transposed=True), 1, s, e, buf)
        assert rows.shape == (11, e - s) and torch.equal(rows, a[s:e].T)
        assert torch.equal(reader.read(TensorRef(path, "a"), 0, s, e, buf), a[s:e])
    assert torch.equal(reader.read(TensorRef(path, "v"), None, 0, 0), v)
    reader.close()


def test_block_reader_errors_name_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"W_enc": torch.randn(4, 9), "n": torch.arange(3)}, str(path))
    with pytest.raises(SAEFileError, match=r"'n' has dtype I64"):
        safetensors_locations(path)
    save_file({"W_enc": torch.randn(4, 9)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(
        SAEFileError, match=r"w.safetensors: tensor 'W_enc' ends at byte .*truncated"
    ):
        safetensors_locations(path)
    path.write_bytes(b"\x05\x00")
    with pytest.raises(SAEFileError, match="truncated"):
        safetensors_locations(path)
    path.write_bytes((7).to_bytes(8, "little") + b"{nope!}")
    with pytest.raises(SAEFileError, match="not JSON"):
        safetensors_locations(path)
    path.write_bytes(data)
    with pytest.raises(SAEFileError, match="has no tensor 'W_dec'"):
        BlockReader().stored(TensorRef(path, "W_dec"))


def _transposed_files(tmp_path: Path, sae: SAE, scale: float) -> SAEFiles:
    """dictionary_learning-like layout: encoder.weight [d_sae, d_in], decoder.weight [d_in, d_sae],
    a stored ``scale`` folded in on read, jumprelu threshold stored as one scalar."""
    p = {n: t.detach() for n, t in sae.named_parameters()}
    path = tmp_path / "ae.safetensors"
    tensors = {
        "encoder.weight": (p["W_enc"].T / scale).contiguous(),
        "decoder.weight": p["W_dec"].T.contiguous(),
        "b_dec": p["b_dec"],
        "encoder.bias": p["b_enc"],
    }
    refs = {
        "W_enc": TensorRef(path, "encoder.weight", transposed=True, scale=scale),
        "W_dec": TensorRef(path, "decoder.weight", transposed=True),
        "b_dec": TensorRef(path, "b_dec"),
        "b_enc": TensorRef(path, "encoder.bias"),
    }
    if "threshold" in p:
        tensors["threshold"] = p["threshold"][:1].contiguous()
        refs["threshold"] = TensorRef(path, "threshold", broadcast=sae.d_sae)
    save_file(tensors, str(path))
    return SAEFiles(sae.cfg, refs, [path], "test", str(path), "id", loader=lambda **_: sae)


@pytest.mark.parametrize(
    ("architecture", "arch"),
    [("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}), ("jumprelu", {})],
)
def test_transposed_tensor_refs_stream_like_the_loaded_sae(tmp_path, architecture, arch) -> None:
    sae = _random_sae(architecture, arch, seed=4)
    if architecture == "jumprelu":
        with torch.no_grad():
            sae.threshold.fill_(0.3)  # one scalar threshold broadcast over the latents
    files = _transposed_files(tmp_path, sae, scale=2.0)
    acts = _acts(LENGTHS, seed=6)
    want = encode_rows(sae, acts, "mean", "max_codes")
    got = encode_rows(StreamedSAE(files, block_latents=4), acts, "mean", "max_codes")
    _assert_same_codes(got, want, exact=False)
    assert got.nnz > 0


def test_one_pass_reads_each_encoder_byte_once(tmp_path: Path, monkeypatch) -> None:
    sae = _random_sae("jumprelu", {}, seed=1)
    files = _saelens_files(save_sae(sae, tmp_path / "sae"))
    read: list[int] = []
    real = os.preadv

    def counting(fd, buffers, offset):
        read.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    enc = StreamedSAE(files, block_latents=5)
    encode_rows(enc, _acts(LENGTHS), "mean", "pool_codes")
    # W_enc, b_enc and threshold once (float32), b_dec once; W_dec is never read for jumprelu
    assert sum(read) == 4 * (D_IN * D_SAE + 2 * D_SAE + D_IN)
    assert len(read) == 1 + 5 * (D_IN + 2)  # b_dec, then per block D_IN strided reads + 2 vectors


# ----- poolings ---------------------------------------------------------------------------------
class SignedSAE(StandardSAE):
    """Signed codes: the pre-activation where |h| > 0.6, else 0 (like pursuit encoders' codes)."""

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        h = sae_in @ self.W_enc + self.b_enc
        return h * (h.abs() > 0.6)


class TextCentredSAE(StandardSAE):
    """A sequence-level encoder: each token's code minus its text's mean code."""

    sequence_level = True

    def encode_texts(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        codes = self.encode(x)
        out = torch.empty_like(codes)
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            out[a:b] = codes[a:b] - codes[a:b].mean(0)
        return out


def _signed_sae(cls: type[SAE] = SignedSAE) -> SAE:
    base = _random_sae("standard", {}, seed=7)
    sae = cls(base.cfg)
    sae.load_state_dict(base.state_dict())
    return sae.eval()


def _texts_by_hand(acts: LayerActivations, keep_special: bool) -> list[torch.Tensor]:
    out = []
    for i in range(acts.n_rows):
        a, b = int(acts.offsets[i]), int(acts.offsets[i + 1])
        toks = acts.tokens[a:b]
        if not keep_special and acts.special is not None:
            mask = ~acts.special[a:b]
            toks = toks[mask] if bool(mask.any()) else toks
        out.append(toks)
    return out


@pytest.mark.parametrize("budget", [1, 7 * D_SAE, 2**26])
def test_signed_codes_mean_and_max_pooling(budget: int) -> None:
    sae = _signed_sae()
    acts = _acts(LENGTHS, seed=11)
    got = encode_rows_multi(sae, acts, "mean", ["pool_codes", "max_codes"], max_batch_elems=budget)
    with torch.no_grad():
        per_text = [sae.encode(t) for t in _texts_by_hand(acts, True)]
    mean = torch.stack([c.mean(0) for c in per_text]).numpy()
    maxed = torch.stack([c.amax(0) for c in per_text]).numpy()  # zeros count as values
    np.testing.assert_allclose(got["pool_codes"].toarray(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["max_codes"].toarray(), maxed, rtol=1e-6, atol=1e-7)
    # both cases the max must get right: negative where stored, zero elsewhere (-> 0), and
    # negative on every token of the text (-> that negative max)
    neg_some = [(i, j) for i, c in enumerate(per_text) for j in range(D_SAE)
                if (c[:, j] < 0).any() and (c[:, j] == 0).any() and not (c[:, j] > 0).any()]  # fmt: skip
    neg_all = [(i, j) for i, c in enumerate(per_text) for j in range(D_SAE)
               if (c[:, j] < 0).all()]  # fmt: skip
    assert neg_some and neg_all
    dense_max = got["max_codes"].toarray()
    assert all(dense_max[i, j] == 0 for i, j in neg_some)
    assert all(dense_max[i, j] < 0 for i, j in neg_all)


def test_signed_max_from_sparse_stored_values() -> None:
    """The sparse pooling path by hand: stored values only, the implicit zeros decide the max."""
    from saelab.sae.encode import _Pooler, _Texts

    texts = _Texts(torch.zeros(5, 1), torch.tensor([0, 2, 5]))
    pooler = _Pooler(texts, 3, want_mean=True, want_max=True)
    # text 0 (rows 0-1): latent 0 = -1 on both rows; latent 1 = -2 on row 0 only
    # text 1 (rows 2-4): latent 2 = -3, 5 on rows 2, 3 (row 4 implicit 0); latent 0 = -1 on 2-4
    rows = np.array([0, 1, 0, 2, 3, 2, 3, 4])
    cols = np.array([0, 0, 1, 2, 2, 0, 0, 0])
    vals = np.array([-1, -1, -2, -3, 5, -1, -1, -1], dtype=np.float32)
    mean, maxed = pooler.add(rows, cols, vals) or pooler.result()
    np.testing.assert_allclose(maxed.toarray(), [[-1, 0, 0], [-1, 0, 5]])
    np.testing.assert_allclose(mean.toarray(), [[-1, -1, 0], [-1, 0, 2 / 3]], rtol=1e-6)


def test_sequence_level_encoder_reads_whole_texts_without_special_tokens() -> None:
    sae = _signed_sae(TextCentredSAE)
    acts = _acts(LENGTHS, seed=12, special_first=True)
    for budget in (1, 2**26):
        got = encode_rows(sae, acts, "mean", "max_codes", max_batch_elems=budget)
        with torch.no_grad():
            expect = []
            for toks in _texts_by_hand(acts, keep_special=False):
                codes = sae.encode(toks)
                expect.append((codes - codes.mean(0)).amax(0))
        np.testing.assert_allclose(got.toarray(), torch.stack(expect).numpy(), rtol=1e-5, atol=1e-6)
    # code_pooled: each pooled vector is its own one-token text, so its centred code is 0
    assert encode_rows(sae, acts, "mean", "code_pooled").nnz == 0


@pytest.mark.parametrize("streamed", [False, True])
def test_special_tokens_left_out_by_default_and_kept_on_request(tmp_path, streamed) -> None:
    sae = _random_sae("topk", {"k": 4}, seed=3)
    enc = (
        StreamedSAE(_saelens_files(save_sae(sae, tmp_path / "s")), block_latents=6)
        if streamed
        else sae
    )
    acts = _acts(LENGTHS, seed=13, special_first=True)
    acts.special[acts.offsets[2] : acts.offsets[3]] = True  # text 2: special tokens only
    for keep in (False, True):
        got = encode_rows_multi(enc, acts, "mean", ["pool_codes", "max_codes"],
                                include_special_tokens=keep)  # fmt: skip
        with torch.no_grad():
            per_text = [sae.encode(t) for t in _texts_by_hand(acts, keep)]
        np.testing.assert_allclose(got["pool_codes"].toarray(),
                                   torch.stack([c.mean(0) for c in per_text]).numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(got["max_codes"].toarray(),
                                   torch.stack([c.amax(0) for c in per_text]).numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip
    # the option changes the answer (first tokens are real activations here)
    a = encode_rows(enc, acts, "mean", "pool_codes")
    b = encode_rows(enc, acts, "mean", "pool_codes", include_special_tokens=True)
    assert not np.allclose(a.toarray(), b.toarray())


# ----- statistics from sparse codes -------------------------------------------------------------
def test_rank_statistics_from_sparse_codes_equal_dense(monkeypatch) -> None:
    from saelab.probes.sae_probes import CodeSplit, rank_latents, sae_problems

    sae = _signed_sae()
    acts = _acts([2, 3, 1, 4] * 10, seed=14)
    codes = encode_rows(sae, acts, "mean", "max_codes")
    y = np.array([0, 1] * 20)
    dense = codes.toarray().astype(np.float64)
    norm = np.abs(dense).sum(0) / ((dense != 0).sum(0) + 1e-6) + 1e-6  # paper's normalisation
    score = np.abs((dense[y == 1] / norm).mean(0) - (dense[y == 0] / norm).mean(0))
    expect = np.argsort(-score, kind="stable")
    real_toarray = sp.csr_matrix.toarray
    widths: list[int] = []

    def narrow_only(self, *args, **kw):
        widths.append(self.shape[1])
        assert self.shape[1] <= 5, "a wide code matrix was densified"
        return real_toarray(self, *args, **kw)

    monkeypatch.setattr(sp.csr_matrix, "toarray", narrow_only)
    got = rank_latents(codes, y)
    np.testing.assert_array_equal(got[:10], expect[:10])
    np.testing.assert_allclose(score[got], score[expect], rtol=1e-9)
    problems = sae_problems(CodeSplit(codes[:30], y[:30], codes[30:], y[30:]), ks=[2, 5])
    assert [p.X_train.shape[1] for p in problems] == [2, 5] and widths == [5, 5]


# ----- when to stream ---------------------------------------------------------------------------
def test_open_sae_encoder_streams_over_budget(tmp_path: Path, monkeypatch, caplog) -> None:
    sae = _random_sae("jumprelu", {}, seed=1)
    files = _saelens_files(save_sae(sae, tmp_path / "sae"))
    need = 4 * (2 * D_IN * D_SAE + 2 * D_SAE + D_IN)
    assert isinstance(open_sae_encoder(files, budget=need), SAE)
    with caplog.at_level(logging.INFO, logger="saelab.sae.encode"):
        enc = open_sae_encoder(files, budget=need - 1)
    assert isinstance(enc, StreamedSAE) and "streaming blocks" in caplog.text
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "1KB")
    assert memory_budget() == 1000 and isinstance(open_sae_encoder(files), StreamedSAE)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(ConfigError, match=MEMORY_BUDGET_ENV):
        memory_budget()
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes(4096) == 4096
    # a sequence-level architecture is loaded whole, with the reason in the log
    monkeypatch.setattr(type(sae), "sequence_level", True)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        enc = open_sae_encoder(files, budget=10)
    assert isinstance(enc, SAE) and "sequence-level" in caplog.text
    with pytest.raises(SAEFileError, match="cannot stream"):
        StreamedSAE(files)


def test_streamed_shape_mismatch_names_tensor(tmp_path: Path) -> None:
    sae = _random_sae("standard", {}, seed=1)
    files = _saelens_files(save_sae(sae, tmp_path / "sae"))
    wrong = dataclasses.replace(files, cfg=dataclasses.replace(files.cfg, d_sae=D_SAE + 1))
    with pytest.raises(
        SAEFileError, match=r"tensor 'W_dec' has shape \[23, 6\]; expected \[24, 6\]"
    ):
        StreamedSAE(wrong)


def test_pipeline_encode_accepts_streamed_sae(tmp_path: Path) -> None:
    from saelab.pipeline.saes import encode

    sae = _random_sae("topk", {"k": 3}, seed=8)
    enc = StreamedSAE(_saelens_files(save_sae(sae, tmp_path / "sae")), block_latents=7)
    acts = _acts(LENGTHS, special_first=True)
    out = encode(enc, acts, "mean", ["pooled", "mean", "max"])
    ref = encode(sae, acts, "mean", ["pooled", "mean", "max"])
    for key in ("pooled", "mean", "max"):
        _assert_same_codes(out[key], ref[key], exact=False)
