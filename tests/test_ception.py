"""SAE-ception: sharpening, the classifier and its fine-tuning, the cycle runner (resume,
interruption, keys), the CLI. Tiny random models and word datasets; nothing is downloaded."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from saelab.activations import load_model
from saelab.activations.extract import tokenize
from saelab.ception.classifier import (
    AuxTargets,
    Classifier,
    EncodedSplit,
    TrainableState,
    encode_split,
    fine_tune,
    trainable_names,
)
from saelab.ception.names import METRIC_NAMES, STRATEGIES
from saelab.ception.run import CLASSIFIER_FILE, CYCLE_FILE, run_ception
from saelab.ception.sharpen import build_targets, class_supports, sharpen_codes
from saelab.cli import main
from saelab.config import ClassifierConfig, load_ception_config
from saelab.data import stratified_split
from saelab.errors import ConfigError, DatasetError
from saelab.sae.base import SAEConfig, build_sae
from tiny_models import WORDS, build_tiny_causal_lm, build_tiny_model


# ----- sharpening -----------------------------------------------------------------------------------
def test_sharpen_per_class_keeps_each_class_top_latents():
    codes = torch.tensor(
        [
            [5.0, 1.0, 0.0, 2.0],
            [4.0, 0.0, 1.0, 3.0],
            [0.0, 6.0, 2.0, 1.0],
            [1.0, 5.0, 3.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 1, 1])
    supports = class_supports(codes, labels, 2)
    assert sorted(supports[0].tolist()) == [0, 3]  # class-0 means 4.5, 0.5, 0.5, 2.5
    assert sorted(supports[1].tolist()) == [1, 2]  # class-1 means 0.5, 5.5, 2.5, 0.5
    sharp = sharpen_codes(codes, labels, "per_class", 2)
    expected = torch.tensor(
        [
            [5.0, 0.0, 0.0, 2.0],
            [4.0, 0.0, 0.0, 3.0],
            [0.0, 6.0, 2.0, 0.0],
            [0.0, 5.0, 3.0, 0.0],
        ]
    )
    assert torch.equal(sharp, expected)


def test_sharpen_per_example_keeps_own_top_by_magnitude():
    codes = torch.tensor([[1.0, -4.0, 2.0, 0.5], [0.0, 0.0, 3.0, 1.0]])
    sharp = sharpen_codes(codes, torch.tensor([0, 1]), "per_example", 2)
    assert torch.equal(sharp, torch.tensor([[0.0, -4.0, 2.0, 0.0], [0.0, 0.0, 3.0, 1.0]]))


def _standard_sae(d_in: int, d_sae: int, seed: int = 0):
    cfg = SAEConfig(architecture="standard", d_in=d_in, d_sae=d_sae)
    sae = build_sae(cfg, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.arange(d_in, dtype=torch.float32))
    return sae


def test_build_targets_decodes_without_bias_and_drops_empty_codes():
    torch.manual_seed(0)
    sae = _standard_sae(6, 10)
    h = torch.randn(8, 6) * 3
    h[3] = sae.b_dec.detach()  # encodes to an all-zero code (ReLU of W_enc*0 + b_enc <= 0)
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)
    labels = torch.tensor([0, 1] * 4)
    tg = build_targets("per_example", sae, h, labels, 3, seed=0)
    assert tg is not None
    codes = sae.encode(h).detach()
    sharp = sharpen_codes(codes, labels, "per_example", 3)
    expected = sharp @ sae.W_dec.detach()
    assert torch.allclose(tg.vectors, expected, atol=1e-5)
    assert torch.allclose(tg.offset, sae.b_dec.detach())
    assert not bool(tg.valid[3])
    assert bool(tg.valid[(sharp != 0).any(dim=1)].all())


def test_build_targets_controls():
    sae = _standard_sae(5, 7)
    h = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    assert build_targets("none", sae, h, labels, 2, seed=0) is None
    a = build_targets("random", sae, h, labels, 2, seed=3)
    b = build_targets("random", sae, h, labels, 2, seed=3)
    c = build_targets("random", sae, h, labels, 2, seed=4)
    assert a is not None and b is not None and c is not None
    assert torch.equal(a.vectors, b.vectors) and not torch.equal(a.vectors, c.vectors)
    assert torch.allclose(a.vectors.norm(dim=1), torch.ones(6), atol=1e-6)
    with pytest.raises(ConfigError, match="unknown sharpening"):
        build_targets("sideways", sae, h, labels, 2, seed=0)


# ----- the split ----------------------------------------------------------------------------------
def test_stratified_split_keeps_shares_and_is_disjoint():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    a, b, c = stratified_split(y, [40, 20, None], seed=1)
    assert (len(a), len(b), len(c)) == (40, 20, 40)
    assert np.bincount(y[a]).tolist() == [20, 12, 8]
    assert len(set(a) | set(b) | set(c)) == 100
    a2, _, _ = stratified_split(y, [40, 20, None], seed=1)
    assert np.array_equal(a, a2)
    rare = np.array([0] * 3 + [1] * 97)  # rounding favours class 0 twice; it has 3 rows
    p, q = stratified_split(rare, [50, 50], seed=0)
    assert len(p) == len(q) == 50 and np.bincount(rare[np.concatenate([p, q])]).tolist() == [3, 97]
    with pytest.raises(DatasetError, match="empty"):
        stratified_split(y, [60, 40, None], seed=0)


# ----- the classifier ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("gpt2lm"), "gpt2")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("bert"), "bert")


def _split(handle, n: int, seed: int, n_classes: int = 2) -> EncodedSplit:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    texts = []
    per = len(WORDS) // n_classes
    for y in labels:
        body = rng.choice(WORDS, size=rng.integers(1, 5)).tolist()
        texts.append(" ".join([*body, rng.choice(WORDS[y * per : (y + 1) * per])]))
    tok = tokenize(handle.tokenizer, texts, 32, "left")
    return EncodedSplit(tokens=tok, labels=torch.from_numpy(labels), rows=np.arange(n))


def test_pooled_representation_ignores_padding(gpt2_lm, bert):
    for folder, pooling in ((gpt2_lm, "last"), (bert, "mean")):
        handle = load_model(str(folder), device="cpu", lm_head=True)
        clf = Classifier(handle, 2, handle.n_layers - 1, pooling, 0.0, seed=0)
        split = _split(handle, 6, seed=0)
        batched, _ = encode_split(clf, split, batch_size=6)
        for i in range(6):
            alone, _ = encode_split(clf, _subset(split, [i]), batch_size=1)
            assert torch.allclose(batched[i], alone[0], atol=1e-5), (pooling, i)


def _subset(split: EncodedSplit, rows: list[int]) -> EncodedSplit:
    tok = split.tokens
    ids = [tok.ids[tok.offsets[i] : tok.offsets[i + 1]] for i in rows]
    lengths = torch.tensor([len(x) for x in ids])
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    from saelab.activations.extract import Tokenized

    return EncodedSplit(
        Tokenized(torch.cat(ids), lengths, offsets), split.labels[rows], split.rows[rows]
    )


def test_trainable_names_follow_train_blocks(gpt2_lm):
    handle = load_model(str(gpt2_lm), device="cpu", lm_head=True)
    clf = Classifier(handle, 2, 1, "last", 0.0, seed=0)  # reads block 1 of 3
    one = trainable_names(clf, 1)
    assert one and all(n.startswith("transformer.h.1.") for n in one)
    every = trainable_names(clf, None)
    assert any("wte" in n for n in every) and any("wpe" in n for n in every)
    assert not any(n.startswith("transformer.h.2.") or "ln_f" in n for n in every)


def _fresh(folder, train_blocks=2, dropout=0.0, seed=0):
    handle = load_model(str(folder), device="cpu", lm_head=True)
    for module in handle.model.modules():  # the model's own dropout too: exact comparisons
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
    clf = Classifier(handle, 2, handle.n_layers - 1, "last", dropout, seed=seed)
    state = TrainableState(clf, trainable_names(clf, train_blocks))
    return handle, clf, state


def test_fine_tune_is_deterministic_and_accumulation_matches(gpt2_lm):
    cfg = ClassifierConfig(batch_size=8, lr=1e-3, head_lr=1e-2, epochs=2, dropout=0.0)
    gen = torch.Generator().manual_seed(1)
    d = 32
    valid = torch.arange(24) % 3 != 0  # some examples without a target
    targets = AuxTargets(torch.randn(24, d, generator=gen), valid, torch.randn(d, generator=gen))
    results = []
    for accumulation in (1, 1, 2, 4):
        handle, clf, state = _fresh(gpt2_lm)
        train, val = _split(handle, 24, 0), _split(handle, 8, 1)
        c = cfg.model_copy(update={"grad_accumulation": accumulation})
        fine_tune(clf, state, train, val, c, 2, seed=5, targets=targets, lambda_aux=2.0,
                  progress=False)  # fmt: skip
        results.append(state.snapshot())
    a, b, c, e = results
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)
    assert all(torch.allclose(a[k], e[k], atol=1e-5) for k in a)


def test_gradient_checkpointing_gives_the_same_training(gpt2_lm):
    cfg = ClassifierConfig(batch_size=8, lr=1e-3, epochs=1, dropout=0.0, train_blocks=None)
    out = []
    for ckpt in (False, True):
        handle, clf, state = _fresh(gpt2_lm, train_blocks=None)
        train, val = _split(handle, 16, 0), _split(handle, 8, 1)
        c = cfg.model_copy(update={"gradient_checkpointing": ckpt})
        res = fine_tune(clf, state, train, val, c, 1, seed=0, progress=False)
        out.append((state.snapshot(), res.ce_loss))
    assert math.isclose(out[0][1], out[1][1], rel_tol=1e-5)
    assert all(torch.allclose(out[0][0][k], out[1][0][k], atol=1e-5) for k in out[0][0])


def test_aux_targets_are_matched_by_index(gpt2_lm):
    """Each example is pulled toward its own target: after training, an example's representation
    is closer to its own target than to the other examples' (targets out of step with the
    shuffled batches, the v2 bug, would not do this)."""
    handle, clf, state = _fresh(gpt2_lm, train_blocks=None)
    train, val = _split(handle, 16, 0), _split(handle, 8, 1)
    gen = torch.Generator().manual_seed(0)
    d = handle.d_model
    vectors = torch.randn(16, d, generator=gen)
    targets = AuxTargets(vectors, torch.ones(16, dtype=torch.bool), torch.zeros(d))
    cfg = ClassifierConfig(batch_size=4, lr=3e-3, head_lr=1e-3, dropout=0.0, train_blocks=None)
    fine_tune(clf, state, train, val, cfg, 25, seed=0, targets=targets, lambda_aux=50.0,
              progress=False)  # fmt: skip
    h, _ = encode_split(clf, train, 16)
    cos = torch.nn.functional.cosine_similarity(h.unsqueeze(1), vectors.unsqueeze(0), dim=2)
    own = cos.diagonal()
    others = (cos.sum(dim=1) - own) / 15
    assert float((own - others).mean()) > 0.1  # ~0.2 here; ~0 if targets were misaligned
    assert int((own > others).sum()) >= 12


# ----- the runner ---------------------------------------------------------------------------------
def _word_file(path, n: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    per = len(WORDS) // n_classes
    rows = []
    for i in range(n):
        y = i % n_classes
        body = rng.choice(WORDS, size=rng.integers(1, 5)).tolist()
        rows.append({"prompt": " ".join([*body, rng.choice(WORDS[y * per : (y + 1) * per])]),
                     "target": f"class_{y}"})  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _tiny_cfg(model, data_file, **cycle):
    overrides = [
        f"model.name={model}",
        "model.device=cpu",
        "model.batch_size=16",
        f"data.dataset={data_file}",
        "data.train_rows=48",
        "data.val_rows=12",
        "data.test_rows=30",
        "classifier.batch_size=8",
        "classifier.epochs=2",
        "classifier.cycle_epochs=1",
        "classifier.lr=0.001",
        "classifier.max_length=16",
        "sae.expansion_factor=2",
        "sae.k=4",
        "sae.batch_size=16",
        "sae.epochs=3",
        "cycle.sharpen_k=2",
        "cycle.cycles=2",
        "cycle.seeds=[0,1]",
        "cycle.lambda_aux=0.5",
        "metrics.perplexity_rows=10",
    ]
    overrides += [f"cycle.{k}={v}" for k, v in cycle.items()]
    return load_ception_config(None, overrides)


def test_run_resume_and_interrupt(tmp_path, gpt2_lm):
    data = _word_file(tmp_path / "words.csv", 120, 3)
    cfg = _tiny_cfg(gpt2_lm, data)
    out = tmp_path / "run"
    done = []
    first = run_ception(cfg, out, progress=False, on_cycle=done.append)
    table = first.cycles
    assert len(done) == 2 * (1 + 4 * 2)
    assert len(table) == 2 * 4 * 3
    assert set(table["strategy"]) == set(STRATEGIES)
    assert set(METRIC_NAMES) <= set(table.columns)
    assert table["perplexity"].notna().all() and (table["perplexity"] > 1).all()
    assert table[["accuracy", "ari_codes", "u_codes_alive"]].notna().all().all()
    assert (table.loc[table.strategy == "none", "lambda_aux"] == 0).all()
    c0 = table[table.cycle == 0].groupby("seed")["accuracy"].nunique()
    assert (c0 == 1).all()  # cycle 0 shared by the strategies of a seed
    for name in ("cycles.parquet", "cycles.csv", "summary.csv", "report.html", "run.log"):
        assert (out / name).is_file(), name
    assert (out / "seed1" / "per_class" / "cycle2" / CLASSIFIER_FILE).is_file()
    assert (out / "seed0" / "cycle0" / "sae" / "cfg.json").is_file()

    again: list = []
    second = run_ception(cfg, out, progress=False, on_cycle=again.append)
    assert again == []
    pd.testing.assert_frame_equal(
        second.cycles[["seed", "strategy", "cycle", *METRIC_NAMES]],
        table[["seed", "strategy", "cycle", *METRIC_NAMES]],
    )

    # Interrupt a fresh run after three cycles, then resume: same table as uninterrupted.
    out2 = tmp_path / "run2"
    count = []

    def stop(rec):
        count.append(rec)
        if len(count) == 2:  # cycle 0 and per_class cycle 1: cycle 2 then starts from disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ception(cfg, out2, progress=False, on_cycle=stop)
    resumed: list = []
    third = run_ception(cfg, out2, progress=False, on_cycle=resumed.append)
    assert len(resumed) == len(done) - 2
    pd.testing.assert_frame_equal(
        third.cycles[["seed", "strategy", "cycle", *METRIC_NAMES]],
        table[["seed", "strategy", "cycle", *METRIC_NAMES]],
    )

    # A corrupted checkpoint is found on read and that cycle (and those after it) recomputed.
    victim = out / "seed0" / "random" / "cycle1" / CLASSIFIER_FILE
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    redo: list = []
    run_ception(cfg, out, progress=False, on_cycle=redo.append)
    # (the recomputed cycle has the same key, so the cycle after it stays valid)
    assert [(r.doc["seed"], r.doc["strategy"], r.doc["cycle"]) for r in redo] == [(0, "random", 1)]
    # More cycles keep every finished one and run only the new ones.
    more: list = []
    cfg3 = cfg.model_copy(deep=True)
    cfg3.cycle.cycles = 3
    run_ception(cfg3, out, progress=False, on_cycle=more.append)
    assert sorted({r.doc["cycle"] for r in more}) == [3] and len(more) == 2 * 4
    doc = json.loads((out / "seed0" / "per_class" / "cycle3" / CYCLE_FILE).read_text())
    assert doc["strategy"] == "per_class" and doc["cycle"] == 3


def test_run_encoder_multiclass_token_level(tmp_path, bert):
    data = _word_file(tmp_path / "words4.csv", 120, 4)
    cfg = _tiny_cfg(bert, data, token_level="true", strategies="[per_class,none]", cycles=1)
    cfg.cycle.seeds = [0]
    run = run_ception(cfg, tmp_path / "enc", progress=False)
    t = run.cycles
    assert len(t) == 2 * 2
    assert t["perplexity"].isna().all()  # no LM head: not applicable
    assert (t["pooling"] == "mean").all()
    stats = json.loads((tmp_path / "enc" / "seed0" / "cycle0" / CYCLE_FILE).read_text())["sae"]
    assert stats["train_tokens"] > 48  # token rows added to the 48 pooled rows


def test_config_errors():
    with pytest.raises(ConfigError, match="sharpen_k"):
        load_ception_config(None, ["cycle.sharpen_k=64", "sae.k=32"])
    with pytest.raises(ConfigError, match="grad_accumulation"):
        load_ception_config(None, ["classifier.batch_size=10", "classifier.grad_accumulation=3"])
    with pytest.raises(ConfigError, match="unique"):
        load_ception_config(None, ["cycle.seeds=[1,1]"])
    with pytest.raises(ConfigError, match="greater than or equal to 0"):
        load_ception_config(None, ["cycle.seeds=[-3]"])
    with pytest.raises(ConfigError, match="float16"):
        load_ception_config(None, ["model.dtype=float16"])
    # one key of the sae section keeps the other ception defaults
    sae = load_ception_config(None, ["sae.k=16"]).sae
    assert (sae.k, sae.expansion_factor, sae.batch_size, sae.epochs) == (16, 4, 128, 30.0)
    jr = load_ception_config(None, ["sae.architecture=jumprelu"]).sae
    assert jr.k is None and jr.batch_size == 128


def test_cli_bad_inputs_exit_2(tmp_path, capsys, gpt2_lm):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cycle:\n  cycles: 0\n")
    assert main(["ception", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cycle.cycles" in err and "Traceback" not in err
    one = tmp_path / "one.csv"
    pd.DataFrame({"prompt": ["a b", "c d", "e f"], "target": ["x", "x", "x"]}).to_csv(
        one, index=False
    )
    code = main(
        ["ception", "--out", str(tmp_path / "y"), "--set", f"model.name={gpt2_lm}",
         "--set", f"data.dataset={one}", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "one.csv" in err and "Traceback" not in err
    pd.DataFrame(
        {"prompt": [f"w{i}" for i in range(20)], "target": [i % 2 for i in range(20)]}
    ).to_csv(tmp_path / "small.csv", index=False)
    code = main(
        ["ception", "--out", str(tmp_path / "z"), "--set", f"model.name={gpt2_lm}",
         "--set", f"data.dataset={tmp_path / 'small.csv'}", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "small.csv" in err and "needs" in err


def test_example_config_is_the_default(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "ception_sst2.yaml"
    a = load_ception_config(example).model_dump()
    b = load_ception_config(None).model_dump()
    a.pop("name")
    b.pop("name")
    assert a == b
    with pytest.raises(ConfigError, match=r"classifier\.max_length"):
        load_ception_config(None, ["model.max_length=64"])
