"""First-letter absorption (saelab.evals.absorption) against hand-built models and SAEs.

The end-to-end cases use a one-block BERT whose attention and MLP outputs are zeroed and whose
position / token-type embeddings are zero: post-LN BERT then returns LN(LN(LN(e_w))) at every
position, which is e_w itself when e_w has mean 0 and mean square 1. So the activation of each
word is a vector chosen here, and an SAE built on those vectors has known codes, main latents and
absorption.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from saelab.activations import load_model
from saelab.errors import ConfigError
from saelab.evals.absorption import (
    absorption_eval,
    absorption_scores,
    build_prompts,
    l1_probe_weights,
    locate_words,
    select_main_latents,
    split_words,
    whole_word_vocabulary,
    word_activations,
)
from saelab.sae.base import SAEConfig, build_sae
from tiny_models import build_tiny_model

D = 32
ALPHA, GAMMA = 5.0, math.sqrt(D - 25.0)  # |alpha u + gamma q|^2 = D: LayerNorm leaves it as is
DELTA = 0.5  # encoder threshold of every latent
SEED = 3
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
PROMPT_WORDS = ["has", "the", "first", "letter", ":"]


def letter_words(letter: str, n: int) -> list[str]:
    return [f"{letter}{x}{y}" for x in "klmnopq" for y in "rstuvwx"][:n]


def word_tokenizer(tokens: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )  # fmt: skip


def lookup_bert(folder, tokenizer, embeddings: np.ndarray):
    """Save a one-block BERT whose word-position activation is ``embeddings[token]``."""
    config = BertConfig(
        num_hidden_layers=1, hidden_size=D, intermediate_size=2 * D, num_attention_heads=4,
        max_position_embeddings=128, vocab_size=len(embeddings), pad_token_id=0,
    )  # fmt: skip
    model = BertModel(config)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.copy_(torch.from_numpy(embeddings))
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        block = model.encoder.layer[0]
        for lin in (block.attention.output.dense, block.output.dense):
            lin.weight.zero_()
            lin.bias.zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def basis(seed: int = 0) -> np.ndarray:
    """Orthonormal rows [D - 1, D], all orthogonal to the all-ones vector (zero-mean vectors)."""
    g = np.random.default_rng(seed).standard_normal((D, D - 1))
    g -= g.mean(0, keepdims=True)
    q, _ = np.linalg.qr(g)
    return q.T


class Scene:
    """Words of letters a (40), b (30), c (30); test-split a-words of four special kinds."""

    def __init__(self, tmp_path, letter_strength: float = ALPHA):
        self.tokens = SPECIALS + PROMPT_WORDS
        for letter, n in (("a", 40), ("b", 30), ("c", 30)):
            self.tokens += letter_words(letter, n)
        self.tokenizer = word_tokenizer(self.tokens)
        words = whole_word_vocabulary(self.tokenizer)
        _, test = split_words(words, 0.5, SEED, None)
        self.a_test = [w.text for w in test if w.letter == "a"]
        self.n_test = {letter: sum(w.letter == letter for w in test) for letter in "abc"}
        q = basis()
        self.u = {"a": q[0], "b": q[1], "c": q[2]}
        # (word kind) -> (special direction, main code m, absorber latent, absorber code r)
        self.kinds = {
            "absorbed": (q[3], -1.0, 3, math.sqrt(D)),
            "partial": (q[4], 1.5, 4, 2.5),
            "clipped": (q[5], 2.0, 5, 4.0),
            "below": (q[6], 3.0, 6, 1.5),
        }
        self.special = {}
        for i, kind in enumerate(self.kinds):
            for word in self.a_test[2 * i : 2 * i + 2]:
                self.special[word] = kind
        noise = q[7:]
        rng = np.random.default_rng(1)
        emb = np.zeros((len(self.tokens), D))
        for i, token in enumerate(self.tokens):
            n = rng.standard_normal(len(noise)) @ noise
            n /= np.linalg.norm(n)
            if token in self.special:
                direction = self.kinds[self.special[token]][0]
                emb[i] = ALPHA * self.u["a"] + GAMMA * direction
            elif token[0] in "abc" and token not in PROMPT_WORDS:
                emb[i] = letter_strength * self.u[token[0]] + math.sqrt(D - letter_strength**2) * n
            else:
                emb[i] = math.sqrt(D) * n
        self.emb = emb
        self.handle = lookup_bert(tmp_path / "bert", self.tokenizer, emb.astype(np.float32))

    def sae(self):
        """ReLU SAE: latents 0-2 main for a, b, c; 3-6 absorbers of the special kinds; 7-9 dead."""
        cfg = SAEConfig(d_in=D, d_sae=10, architecture="standard", apply_b_dec_to_input=False)
        sae = build_sae(cfg, seed=0)
        W_enc = np.zeros((D, 10))
        b_enc = np.full(10, -DELTA)
        W_dec = np.zeros((10, D))
        for j, letter in enumerate("abc"):
            W_enc[:, j] = self.u[letter]
            W_dec[j] = self.u[letter]
        for direction, m, latent, r in self.kinds.values():
            # main a: alpha - c gamma - delta = m on this kind; absorber: gamma t - delta = r
            W_enc[:, 0] -= (ALPHA - DELTA - m) / GAMMA * direction
            W_enc[:, latent] = (r + DELTA) / GAMMA * direction
            W_dec[latent] = self.u["a"]
        absorbed_dir = self.kinds["absorbed"][0]
        W_dec[3] = (ALPHA * self.u["a"] + GAMMA * absorbed_dir) / math.sqrt(D)
        b_enc[7:] = -1.0
        W_dec[7:] = basis(5)[7:10]
        with torch.no_grad():
            sae.W_enc.copy_(torch.from_numpy(W_enc))
            sae.b_enc.copy_(torch.from_numpy(b_enc))
            sae.W_dec.copy_(torch.from_numpy(W_dec))
            sae.b_dec.zero_()
        return sae


def run(scene: Scene, sae, **kw):
    args = dict(seed=SEED, test_fraction=0.5, max_words_per_letter=None, min_words_per_letter=10,
                min_letters=3)  # fmt: skip
    args.update(kw)
    return absorption_eval(scene.handle, sae, "blocks.0.hook_resid_post", **args)


# ----- end to end ----------------------------------------------------------------------------------
def test_absorption_matches_hand_values(tmp_path):
    scene = Scene(tmp_path)
    result = run(scene, scene.sae())
    assert result.skipped_reason is None
    by_letter = {d["first_letter"]: d for d in result.details}
    assert set(by_letter) == {"a", "b", "c"}  # h, t, f, l have one word each: not probed
    # per word: absorbed 1 (full), partial r/(r+m) = 2.5/4, clipped (a-m)/a = 3/5, below 0
    hand = {"absorbed": 1.0, "partial": 2.5 / 4.0, "clipped": 3.0 / 5.0, "below": 0.0}
    n_a = scene.n_test["a"]
    frac_a = sum(hand[kind] for kind in scene.special.values()) / n_a
    a = by_letter["a"]
    assert a["main_latents"] == [0] and a["num_split_features"] == 1
    assert a["num_probe_true_positives"] == n_a
    assert a["num_full_absorption"] == 2
    assert a["mean_absorption_fraction"] == pytest.approx(frac_a, abs=1e-6)
    assert a["full_absorption_rate"] == pytest.approx(2 / n_a)
    for j, letter in ((1, "b"), (2, "c")):
        rec = by_letter[letter]
        assert rec["main_latents"] == [j]
        assert rec["num_probe_true_positives"] == scene.n_test[letter]
        assert rec["mean_absorption_fraction"] == 0.0 and rec["num_full_absorption"] == 0
        assert rec["gt_probe_f1"] == 1.0
    m = result.metrics
    assert m["mean_absorption_fraction_score"] == pytest.approx(frac_a / 3, abs=1e-6)
    assert m["std_dev_absorption_fraction_score"] == pytest.approx(
        statistics.stdev([frac_a, 0.0, 0.0]), abs=1e-6
    )
    assert m["mean_full_absorption_score"] == pytest.approx(2 / n_a / 3)
    assert m["mean_num_split_features"] == 1.0 and m["std_dev_num_split_features"] == 0.0
    assert m["n_letters"] == 3.0
    assert result.config["icl_examples"] == 0  # an encoder: no examples by default
    assert set(result.timings) >= {"words", "activations", "gt_probes", "absorption"}


def test_word_activations_read_the_word_token(tmp_path):
    scene = Scene(tmp_path)
    words = whole_word_vocabulary(scene.tokenizer)[:12]
    prompts = build_prompts(words, words, 0, np.random.default_rng(0))
    pos, lens = locate_words(scene.tokenizer, prompts, words)
    assert (pos == 1).all()  # [CLS] word has the first letter : [SEP]
    acts = word_activations(scene.handle, 0, prompts, pos, lens, 4, False)
    expected = scene.emb[[w.token_id for w in words]]
    np.testing.assert_allclose(acts.numpy(), expected, atol=1e-5)


def test_model_without_first_letter_direction_is_skipped(tmp_path):
    scene = Scene(tmp_path, letter_strength=0.0)
    scene.special = {}
    result = run(scene, scene.sae())
    assert result.skipped_reason is not None
    assert "ground-truth probes" in result.skipped_reason
    assert result.metrics == {}
    assert [d["first_letter"] for d in result.details] == ["a", "b", "c"]
    assert not all(d["included"] for d in result.details)


def test_tokenizer_without_whole_words_is_skipped(tmp_path):
    pieces = [*SPECIALS, *"abcdefgh", *(f"##{c}" for c in "abcdefgh")]
    vocab = {t: i for i, t in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )  # fmt: skip
    assert whole_word_vocabulary(fast) == []
    handle = lookup_bert(tmp_path / "m", fast, np.zeros((len(pieces), D), dtype=np.float32))
    sae = build_sae(SAEConfig(d_in=D, d_sae=8, architecture="standard"), seed=0)
    result = absorption_eval(handle, sae, 0, min_letters=2)
    assert result.skipped_reason is not None and "whole-word tokens" in result.skipped_reason
    assert result.metrics == {} and result.details == []


def test_bad_settings_raise_config_error(tmp_path):
    scene = Scene(tmp_path)
    with pytest.raises(ConfigError, match="prompt_template"):
        run(scene, scene.sae(), prompt_template="no placeholder")
    with pytest.raises(ConfigError, match="test_fraction"):
        run(scene, scene.sae(), test_fraction=1.5)
    with pytest.raises(ConfigError, match="d_in=16"):
        run(scene, build_sae(SAEConfig(d_in=16, d_sae=8, architecture="standard"), seed=0))


# ----- vocabulary, prompts, positions --------------------------------------------------------------
@pytest.mark.parametrize(
    ("decoder", "tokens", "expected"),
    [
        (decoders.ByteLevel(), ["Ġcat", "cat", "Ġdog", "ing", "Ġa", "Ġ3d"], [" cat", " dog"]),
        (decoders.Metaspace(), ["▁cat", "cat", "▁Dog", "▁x"], [" cat", " Dog"]),
        (decoders.WordPiece(), ["cat", "##at", "dog", "a", "é"], ["cat", "dog"]),
    ],
)
def test_whole_word_vocabulary(decoder, tokens, expected):
    vocab = {t: i for i, t in enumerate(["[UNK]", *tokens])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.decoder = decoder
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    words = whole_word_vocabulary(fast)
    assert [w.text for w in words] == expected
    assert [w.letter for w in words] == [t.strip()[0].lower() for t in expected]


def test_split_words_is_stratified_and_seeded():
    tokens = SPECIALS + letter_words("a", 10) + letter_words("b", 5) + ["cq"]
    words = whole_word_vocabulary(word_tokenizer(tokens))
    train, test = split_words(words, 0.2, 7, None)
    assert sorted(w.text for w in train + test) == sorted(w.text for w in words)
    assert [sum(w.letter == x for w in test) for x in "abc"] == [2, 1, 0]  # round(0.2 n), >= 1
    again = split_words(words, 0.2, 7, None)
    assert (train, test) == again
    capped_train, capped_test = split_words(words, 0.2, 7, 4)
    assert sum(w.letter == "a" for w in capped_train + capped_test) == 4


def test_icl_prompts_on_a_decoder_read_the_word(tmp_path):
    folder = build_tiny_model(tmp_path / "gpt2", "gpt2")
    handle = load_model(str(folder), device="cpu")
    words = whole_word_vocabulary(handle.tokenizer)
    prompts = build_prompts(words, words, 3, np.random.default_rng(0))
    for p, w in zip(prompts, words, strict=True):
        assert p.text[p.start : p.end] == w.text.strip() and p.text.count("\n") == 4
        assert p.text.endswith(f"\n{w.text} has the first letter:")
    pos, lens = locate_words(handle.tokenizer, prompts, words)
    assert (pos >= 0).all()
    acts = word_activations(handle, 1, prompts, pos, lens, 3, False)
    for i in (0, 5):
        ids = handle.tokenizer(prompts[i].text, return_tensors="pt")["input_ids"]
        assert int(ids[0, pos[i]]) == words[i].token_id
        with torch.no_grad():
            hidden = handle.model(ids, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(acts[i], hidden[0, pos[i]], atol=1e-5, rtol=1e-5)


# ----- the pieces against hand computations ------------------------------------------------------
def test_absorption_scores_hand_cases():
    # latents: 0 main, 1-4 candidate absorbers (cos 0.5), 5 low cos (0.05), 6 negative cos
    cos = np.array([1.0, 0.5, 0.5, 0.5, 0.5, 0.05, -0.5])
    main = [0]
    contrib = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # nothing fires -> 0
            [0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # main silent, one absorber -> 1, full
            [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0],  # top 3 of 4: a = min(3, 5-1) = 3 -> 0.75
            [4.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],  # T / A = 0.1 < 0.4 -> 0
            [6.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # M >= A -> 0
            [0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0],  # only a low-cos latent -> fraction 0
            [1.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0],  # T / A = 0.5, a = min(1.5, 2) -> 1.5 / 2.5
            [2.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # clipped: a = min(4, 5-2) = 3 -> 0.6
        ]
    )
    act_proj = np.array([2.0, 3.0, 5.0, 5.0, 5.0, 4.0, 3.0, 5.0])
    codes = contrib / np.where(cos == 0, 1, cos)
    fraction, full = absorption_scores(act_proj, contrib, cos, main, codes)
    np.testing.assert_allclose(fraction, [0, 1, 0.75, 0, 0, 0, 0.6, 0.6])
    # row 5: the top latent has cos 0.05 >= 0.025 and carries 4 / 4 -> full absorption
    assert full.tolist() == [False, True, False, False, False, True, False, False]
    # A <= 0: never absorption; a top latent with cos < 0.025 is not full absorption
    f2, full2 = absorption_scores(
        np.array([-1.0, 2.0]),
        np.array([[0.0, 3.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 3.0]]),
        np.array([1.0, 0.5, 0.5, 0.5, 0.5, 0.05, 0.01]),
        main,
        np.zeros((2, 7)),
    )
    assert f2.tolist() == [0.0, 0.0] and full2.tolist() == [False, False]


def test_select_main_latents_counts_a_split_feature():
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 4 == 0  # 50 positives
    half = y & (np.arange(n) % 8 == 0)
    codes = np.zeros((n, 4))
    codes[half, 0] = 1.0 + rng.random(half.sum())  # latent 0: half of the letter
    codes[y & ~half, 1] = 1.0 + rng.random((y & ~half).sum())  # latent 1: the other half
    codes[:, 2] = rng.random(n)  # noise
    X = sp.csr_matrix(codes)
    main, f1 = select_main_latents(np.array([0, 1, 2, 3]), X, y, X, y, max_k=4)
    assert main == [0, 1] and f1 == 1.0
    only_first, f1_one = select_main_latents(np.array([0, 1]), X, y, X, y, max_k=1)
    assert only_first == [0] and f1_one == pytest.approx(2 * 25 / (2 * 25 + 25))


def test_l1_probe_matches_autograd_adam():
    rng = np.random.default_rng(0)
    n, d, L = 120, 12, 3
    codes = np.maximum(rng.standard_normal((n, d)) - 0.5, 0.0)
    labels = rng.integers(0, L, n)
    Y = np.eye(L)[labels]
    ours = l1_probe_weights(sp.csr_matrix(codes), Y, epochs=30, batch_size=4096)
    # independent: torch autograd on the objective of the docstring
    X, Yt = torch.from_numpy(codes), torch.from_numpy(Y)
    probe = torch.nn.Linear(d, L, dtype=torch.float64)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    pos_weight = (n - Yt.sum(0)) / Yt.sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(math.log(1e-3) / 30))
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(probe(X), Yt) + 0.01 * probe.weight.abs().sum(-1).mean()
        loss.backward()
        opt.step()
        sched.step()
    np.testing.assert_allclose(ours, probe.weight.detach().numpy(), atol=1e-10)
    # each letter's top latent is one that fires more on that letter
    for letter in range(L):
        top = int(np.argmax(ours[letter]))
        assert codes[labels == letter, top].mean() > codes[labels != letter, top].mean()


@pytest.mark.parametrize("mode", ["layer_norm", "constant_norm_rescale", "none"])
def test_output_scale_takes_latent_terms_to_input_units(mode):
    from saelab.evals.absorption import _output_scale

    cfg = SAEConfig(d_in=D, d_sae=16, architecture="standard", normalize_activations=mode)
    sae = build_sae(cfg, seed=1)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(0)) * 3 + 1
    with torch.no_grad():
        f, state = sae.encode_with_state(x)
        # the reconstruction's part that the codes carry: decode(f) - decode(0), same state
        carried = sae.decode(f, state) - sae.decode(torch.zeros_like(f), state)
    scale = _output_scale(sae, x)
    expected = (f @ sae.W_dec).detach().double().numpy() * scale[:, None]
    np.testing.assert_allclose(carried.double().numpy(), expected, rtol=1e-5, atol=1e-5)
