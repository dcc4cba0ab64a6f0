"""Feature absorption on the first-letter task (SAEBench ``absorption_first_letter``).

The measurement of Chanin et al. 2024, "A is for Absorption: Studying Feature Splitting and
Absorption in Sparse Autoencoders" (arXiv 2409.14507), as SAEBench runs it
(``sae_bench/evals/absorption/``: ``main.py``, ``k_sparse_probing.py``, ``feature_absorption.py``,
``feature_absorption_calculator.py``, ``probing.py``, ``prompting.py``, ``vocab.py``,
``eval_config.py``), with the absorption fraction of Demian Till added there. Steps:

1. **Words** (:func:`whole_word_vocabulary`, SAEBench ``vocab.get_alpha_tokens``): tokens of the
   model's tokenizer that are a whole word: ASCII letters only, at least ``min_length`` (2) of
   them, no continuation marker. Tokenizers that mark word starts (GPT-2's ``Ġ``, SentencePiece's
   ``▁``) keep only the marked tokens, as `` word``; WordPiece / word-level tokenizers keep the
   tokens without ``##``. A word is kept only if, inside its prompt, it is still exactly that one
   token. At most ``max_words_per_letter`` words per first letter are drawn (seeded), then each
   letter's words are split into train / test (:func:`split_words`, stratified by letter).
2. **Prompts** (SAEBench ``prompting.create_icl_prompt``): ``"{word} has the first letter:"``
   after ``icl_examples`` solved examples of the same split joined by newlines
   (``"\\n{ex} has the first letter: E"``); the activation at ``hook`` is read at the word's own
   token (SAEBench reads position -6 of that template, the same token for its tokenizers).
   Default: 10 examples for decoders (SAEBench), none for bidirectional encoders (MiniLM), where
   the examples sit on both sides of the word and multiply the cost of the forward pass by ~8.
3. **Ground-truth probes**: one L2 logistic regression per letter (one-vs-rest) on the raw
   activations of the training words, balanced class weights (SAEBench: a BCE probe with
   ``pos_weight = n_neg / n_pos``, Adam, weight decay 1e-4); here scikit-learn's
   ``LogisticRegression(C=gt_probe_C, class_weight="balanced")``. A probe "fires" when its
   decision value is > 0. Letters whose test F1 is at most ``min_gt_probe_f1`` (0.6) are left
   out; fewer than ``min_letters`` (20) left means the model does not carry the feature here and
   the result is skipped (SAEBench ``min_feats_for_eval``; it stops without a result).
4. **Main latents** (SAEBench ``k_sparse_probing.train_k_sparse_probes`` and
   ``add_feature_splits_to_metrics_df``): an L1-penalised one-vs-rest probe on the SAE codes of
   the training words ranks latents by their signed weight (:func:`l1_probe_weights`); for
   k = 1..``max_k`` (10) a logistic regression (``class_weight="balanced"``, C = 1, as SAEBench)
   on the top k latents is scored by F1 on the test words; k grows while F1 rises by more than
   ``f1_jump_threshold`` (0.03) over the last accepted k, and the latents of the last accepted k
   are the letter's main latents (their number is ``num_split_features``).
5. **Absorption** (SAEBench ``FeatureAbsorptionCalculator.calculate_absorption``), on every test
   word of letter L whose ground-truth probe fires (the probe's true positives), with p the unit
   probe direction of L, x the activation, f the codes and ``c_j = f_j (W_dec[j] . p)`` latent
   j's contribution to the reconstruction along p (in the input's units; SAEBench writes
   ``f_j cos(W_dec[j], p)``, the same number for unit-norm decoder rows)::

       A = x . p                      (the word's projection on the probe direction)
       M = sum_{j in main} c_j
       T = sum of the 3 largest c_j > 0 over j not main with cos(W_dec[j], p) >= 0.1
       fraction = 0                   if A <= 0, M >= A, or T / A < 0.4
                = 1                   elif M <= 0
                = a / (a + M), a = min(T, A - M)   otherwise (clipped to [0, 1])

   **Full absorption** (one absorbing latent): every main latent has |f_j| < 1e-8, the latent t
   with the largest c_t has cos(W_dec[t], p) >= 0.025, A > 0 and c_t / A >= 0.4.
   Per letter: ``mean_absorption_fraction`` = (sum of fractions) / (true positives),
   ``full_absorption_rate`` = (full absorptions) / (true positives). Metrics are the means over
   the letters kept in step 3 (and their sample standard deviations):
   ``mean_absorption_fraction_score``, ``mean_full_absorption_score``,
   ``mean_num_split_features``.

Where the task cannot apply (a tokenizer with whole-word tokens for fewer than ``min_letters``
letters, a tokenizer without character offsets, a model whose activations do not give
``min_letters`` letters a ground-truth F1 above the bar) the result has ``skipped_reason`` set and
no metrics, never a made-up number. all-MiniLM-L6-v2 is such a model: its WordPiece vocabulary has
21,719 whole words, but at ``blocks.4.hook_resid_post`` (and at the embeddings, layers 2 and 5)
balanced linear probes reach a first-letter F1 of 0.15-0.43, below SAEBench's 0.6 for every
letter, so its result is skipped (SAEBench recommends models of >= 1-2B parameters). Note also
that the cosine bars (0.1, 0.025) were set for d_model >= 2304, where a random direction has
cosine ~N(0, 1/d) with sd 0.02; at d_model = 384 (sd 0.05) random decoder rows pass 0.1 far
more often.

Deviations from SAEBench, on purpose:
- the absorption step reuses the test words' activations of step 3; SAEBench runs the model again
  on prompts with freshly drawn examples from the whole vocabulary;
- the L1 probe starts from zero weights (SAEBench: PyTorch's default uniform init of +-1/sqrt(d_sae),
  which at d_sae = 16k is below one Adam step but at small widths would decide the ranking);
- the ground-truth probes are solved by lbfgs (up to 1000 iterations) rather than 50 Adam epochs;
- SAEBench's vocabulary keeps both `` word`` and ``word`` for GPT-2-style tokenizers, single
  letters included; saelab keeps whole words of two letters or more, once;
- the train / test split is stratified by letter (SAEBench: a random 80/20 split of the vocabulary),
  and words are capped per letter so that every letter is represented at bounded cost;
- the F1 scores of the main-latent search are on the test words, as in SAEBench.
"""

from __future__ import annotations

import logging
import math
import statistics
import string
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from saelab.activations.extract import extract
from saelab.activations.model import ModelHandle
from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError, ModelError
from saelab.sae.base import SAE
from saelab.sae.encode import encode_rows

log = logging.getLogger(__name__)

LETTERS = string.ascii_lowercase
#: SAEBench ``VERBOSE_FIRST_LETTER_TEMPLATE``.
PROMPT_TEMPLATE = "{word} has the first letter:"
#: Thresholds of SAEBench ``feature_absorption.py`` / ``eval_config.py``.
FULL_ABSORPTION_PROBE_COS = 0.025
ABSORPTION_FRACTION_PROBE_COS = 0.1
PROBE_PROJECTION_PROPORTION = 0.4
MAX_ABSORBING_LATENTS = 3
F1_JUMP_THRESHOLD = 0.03
MAX_K = 10
MIN_GT_PROBE_F1 = 0.6
MIN_LETTERS = 20
#: A latent with |f| below this does not fire (SAEBench ``EPS`` of the calculator).
FIRING_EPS = 1e-8
#: SAEBench's ICL example count for decoder models (``max_icl_examples=10``).
DECODER_ICL_EXAMPLES = 10
_MARKERS = ("Ġ", "▁")
_EXTRACT_CHUNK = 256


@dataclass
class AbsorptionResult:
    """First-letter absorption of one SAE.

    ``metrics``: ``mean_absorption_fraction_score``, ``mean_full_absorption_score``,
    ``mean_num_split_features`` and their ``std_dev_*`` (over the letters kept), ``n_letters``,
    ``n_train_words``, ``n_test_words`` (empty when skipped). ``details``: one record per letter
    with enough words (``first_letter``, word counts, ``gt_probe_f1``, ``included``, and for the
    included letters ``main_latents``, ``main_latents_f1``, ``num_split_features``,
    ``num_probe_true_positives``, ``num_full_absorption``, ``mean_absorption_fraction``,
    ``full_absorption_rate``). ``skipped_reason``: why the task could not apply, else None.
    ``config``: every setting and threshold used. ``timings``: seconds per stage of this call
    (``words``, ``activations``, ``gt_probes``, ``encode``, ``l1_probe``, ``absorption``).
    """

    metrics: dict[str, float]
    details: list[dict[str, Any]]
    skipped_reason: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Word:
    """A whole-word token: ``text`` as placed in the prompt (`` cat`` for marked tokenizers),
    its ``token_id``, and the lower-case first ``letter``."""

    text: str
    token_id: int
    letter: str


@dataclass(frozen=True)
class Prompt:
    """A prompt and the character span ``[start, end)`` of its word's letters."""

    text: str
    start: int
    end: int


# ----- words and prompts ---------------------------------------------------------------------------
def whole_word_vocabulary(tokenizer: Any, min_length: int = 2) -> list[Word]:
    """Whole-word alphabetic tokens of ``tokenizer`` (module docstring, step 1), by token id.

    A token's string is ``convert_tokens_to_string([token])`` with a leading space restored for
    ``Ġ`` / ``▁`` tokens (SAEBench ``vocab.convert_tokens_to_string``). When any alphabetic token
    carries a leading space the tokenizer marks word starts and only those count; otherwise the
    tokens without a leading space count (``##`` pieces are not alphabetic). Special tokens never
    count.
    """
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    marked: list[Word] = []
    plain: list[Word] = []
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token_id in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if token.startswith(_MARKERS) and not text.startswith(" "):
            text = " " + text
        core = text[1:] if text.startswith(" ") else text
        if len(core) < min_length or not (core.isascii() and core.isalpha()):
            continue
        word = Word(text=text, token_id=int(token_id), letter=core[0].lower())
        (marked if text.startswith(" ") else plain).append(word)
    return marked if marked else plain


def split_words(
    words: Sequence[Word], test_fraction: float, seed: int, max_words_per_letter: int | None
) -> tuple[list[Word], list[Word]]:
    """Seeded train / test split, stratified by first letter.

    Per letter in a..z: a random permutation of its words (``np.random.default_rng(seed)``, one
    stream for all letters in order), cut to ``max_words_per_letter``; the first
    ``round(test_fraction * n)`` (at least 1 and at most n - 1 when n >= 2; 0 when n = 1) go to
    the test split.
    """
    rng = np.random.default_rng(seed)
    train: list[Word] = []
    test: list[Word] = []
    for letter in LETTERS:
        group = [w for w in words if w.letter == letter]
        if not group:
            continue
        order = rng.permutation(len(group))
        if max_words_per_letter is not None:
            order = order[:max_words_per_letter]
        n = len(order)
        n_test = 0 if n < 2 else min(max(round(test_fraction * n), 1), n - 1)
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test


def build_prompts(
    words: Sequence[Word],
    examples: Sequence[Word],
    n_icl: int,
    rng: np.random.Generator,
    template: str = PROMPT_TEMPLATE,
) -> list[Prompt]:
    """One prompt per word (SAEBench ``create_icl_prompt`` with ``prepend_separator=True``).

    With ``n_icl`` examples: ``"\\n" + "\\n".join(template(ex) + " " + EX_LETTER) + "\\n" +
    template(word)``, the examples drawn without replacement from ``examples`` minus the word
    (``n_icl + 1`` draws, the word dropped if drawn); with none: ``template(word)``.
    """
    head, tail = template.split("{word}")
    pool = [w.text for w in examples]
    prompts = []
    for word in words:
        prefix = ""
        if n_icl > 0 and pool:
            drawn = rng.choice(len(pool), size=min(n_icl + 1, len(pool)), replace=False)
            others = [pool[i] for i in drawn if pool[i] != word.text][:n_icl]
            shots = [f"{head}{t}{tail} {t.strip()[0].upper()}" for t in others]
            prefix = "\n" + "\n".join(shots) + "\n"
        lead = len(word.text) - len(word.text.lstrip(" "))
        start = len(prefix) + len(head) + lead
        prompts.append(
            Prompt(prefix + head + word.text + tail, start, len(prefix + head + word.text))
        )
    return prompts


def locate_words(
    tokenizer: Any, prompts: Sequence[Prompt], words: Sequence[Word]
) -> tuple[np.ndarray, np.ndarray]:
    """Token position of each prompt's word, and the token count of each prompt.

    Tokenised as ``extract`` does (default special tokens) with character offsets; the word's
    position is the one token whose span overlaps the word's letters, provided it is the word's
    own token id; otherwise -1 (the word splits or merges in context). Returns
    ``(positions [n] int64, lengths [n] int64)``.
    """
    if not prompts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    enc = tokenizer(
        [p.text for p in prompts],
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    positions = np.full(len(prompts), -1, dtype=np.int64)
    lengths = np.zeros(len(prompts), dtype=np.int64)
    for i, (ids, spans, prompt, word) in enumerate(
        zip(enc["input_ids"], enc["offset_mapping"], prompts, words, strict=True)
    ):
        lengths[i] = len(ids)
        hits = [
            t for t, (a, b) in enumerate(spans) if b > a and a < prompt.end and b > prompt.start
        ]
        if len(hits) == 1 and ids[hits[0]] == word.token_id:
            positions[i] = hits[0]
    return positions, lengths


def word_activations(
    handle: ModelHandle,
    hook: str | int,
    prompts: Sequence[Prompt],
    positions: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """Activation ``[n, d_model]`` (float32, CPU) at ``hook`` of each prompt's word token.

    Prompts go through :func:`saelab.activations.extract` with ``keep_tokens`` in chunks of 256
    (so at most 256 prompts' token activations are held), and row i reads token
    ``offsets[i] + positions[i]``. A token count different from :func:`locate_words`'s is a
    ModelError (the positions would be wrong).
    """
    out = torch.empty(len(prompts), handle.d_model, dtype=torch.float32)
    for start in range(0, len(prompts), _EXTRACT_CHUNK):
        stop = min(start + _EXTRACT_CHUNK, len(prompts))
        got = extract(
            handle,
            [p.text for p in prompts[start:stop]],
            [hook],
            pooling="last",
            batch_size=batch_size,
            keep_tokens=True,
            progress=progress,
        )
        acts: LayerActivations = next(iter(got.values()))
        counts = (acts.offsets[1:] - acts.offsets[:-1]).numpy()
        if not np.array_equal(counts, lengths[start:stop]):
            bad = int(np.nonzero(counts != lengths[start:stop])[0][0]) + start
            raise ModelError(
                f"prompt {bad} ({prompts[bad].text[-60:]!r}) has {int(lengths[bad])} tokens with "
                f"offsets but {int(counts[bad - start])} in extraction; cannot locate its word"
            )
        rows = acts.offsets[:-1] + torch.from_numpy(positions[start:stop])
        out[start:stop] = acts.tokens[rows]
    return out


# ----- probes --------------------------------------------------------------------------------------
def f1_score(y: np.ndarray, pred: np.ndarray) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) of boolean ``pred`` against boolean ``y``; 0 when undefined."""
    tp = int(np.sum(y & pred))
    denom = 2 * tp + int(np.sum(~y & pred)) + int(np.sum(y & ~pred))
    return 2 * tp / denom if denom else 0.0


def _balanced_logistic(X: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> Any:
    """scikit-learn ``LogisticRegression(C, class_weight="balanced")`` on ``X [n, p]``, ``y [n]``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these fits are small, and on a busy 2-core machine a multi-threaded BLAS
    # ran them ~20x slower (measured; see also saelab.probes.logistic.solver_threads).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter).fit(X, y)


def fit_letter_probes(
    X: np.ndarray, letters_of_rows: np.ndarray, letters: Sequence[str], C: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth probes: per letter, balanced L2 logistic regression of ``row is that letter``.

    Objective (scikit-learn, ``class_weight="balanced"``): ``0.5 ||w||^2 + C sum_i c_i
    log(1 + exp(-s_i (x_i . w + b)))`` with ``c_i = n / (2 n_{class of i})``. The fit runs on
    centred rows ``x - mean(x)`` and the intercept is shifted back (``b = b' - w . mean``): the
    intercept is not penalised, so the optimum is the same, and lbfgs converges several times
    faster on residual streams with a large mean. ``X [n, d]``, ``letters_of_rows [n]`` ->
    ``(W [L, d], b [L])`` float64.
    """
    mean = X.mean(0)
    Xc = X - mean
    W = np.zeros((len(letters), X.shape[1]))
    b = np.zeros(len(letters))
    for j, letter in enumerate(letters):
        model = _balanced_logistic(Xc, (letters_of_rows == letter).astype(np.int64), C, 1000)
        W[j], b[j] = model.coef_[0], model.intercept_[0] - model.coef_[0] @ mean
    return W, b


def l1_probe_weights(
    codes: sp.csr_matrix,
    Y: np.ndarray,
    *,
    l1_decay: float = 0.01,
    epochs: int = 50,
    batch_size: int = 4096,
    lr: float = 1e-2,
    end_lr: float = 1e-5,
    weight_decay: float = 1e-6,
    seed: int = 0,
) -> np.ndarray:
    """Weights ``[L, d_sae]`` of SAEBench's L1 multi-probe on codes (``train_sparse_multi_probe``).

    Minimises, for L one-vs-rest probes ``z = codes W^T + b`` with labels ``Y [n, L]`` in {0, 1}
    and ``pos_weight_l = n_neg_l / n_pos_l`` (``probing._calc_pos_weights``)::

        mean_{i,l} -[pw_l y_il log s(z_il) + (1 - y_il) log(1 - s(z_il))]
            + l1_decay * mean_l ||W_l||_1

    by Adam (``weight_decay`` as its coupled L2 term) over shuffled mini-batches for ``epochs``
    epochs, the learning rate decaying exponentially from ``lr`` to ``end_lr`` (one step per
    epoch, SAEBench ``_get_exponential_decay_scheduler``). Gradients are computed in closed form
    on the sparse codes (``dz = (s(z) (pw y + 1 - y) - pw y) / (n_b L)``), W starts at zero.
    """
    n, d = codes.shape
    n_probes = Y.shape[1]
    Y = Y.astype(np.float64)
    n_pos = Y.sum(0)
    pos_weight = (n - n_pos) / np.maximum(n_pos, 1.0)
    W = torch.zeros(n_probes, d, dtype=torch.float64)
    b = torch.zeros(n_probes, dtype=torch.float64)
    opt = torch.optim.Adam([W, b], lr=lr, weight_decay=weight_decay)
    gamma = math.exp(math.log(end_lr / lr) / epochs)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    gen = np.random.default_rng(seed)
    codes = codes.astype(np.float64).tocsr()
    for _ in range(epochs):
        order = gen.permutation(n) if n > batch_size else np.arange(n)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            Xb, Yb = codes[rows], Y[rows]
            z = Xb @ W.numpy().T + b.numpy()
            s = 1.0 / (1.0 + np.exp(-z))
            dz = (s * (pos_weight * Yb + 1.0 - Yb) - pos_weight * Yb) / (len(rows) * n_probes)
            grad_w = np.asarray((Xb.T @ dz).T) + l1_decay / n_probes * np.sign(W.numpy())
            W.grad = torch.from_numpy(np.ascontiguousarray(grad_w))
            b.grad = torch.from_numpy(dz.sum(0))
            opt.step()
        sched.step()
    return W.numpy().copy()


def select_main_latents(
    ranking: np.ndarray,
    codes_train: sp.csr_matrix,
    y_train: np.ndarray,
    codes_test: sp.csr_matrix,
    y_test: np.ndarray,
    max_k: int = MAX_K,
    f1_jump_threshold: float = F1_JUMP_THRESHOLD,
) -> tuple[list[int], float]:
    """A letter's main latents by SAEBench's feature-split rule; returns ``(latents, their F1)``.

    For k = 1, 2, ...: ``LogisticRegression(C=1, class_weight="balanced", max_iter=500)`` on the
    ``ranking[:k]`` columns of the training codes, F1 of ``decision > 0`` on the test codes; k is
    accepted while ``F1_k > best + f1_jump_threshold`` (best starts at -inf), the first refusal
    stops the search. ``y_*`` are boolean.
    """
    best, chosen = -math.inf, [int(ranking[0])]
    for k in range(1, min(max_k, len(ranking)) + 1):
        cols = ranking[:k]
        Xtr = codes_train[:, cols].toarray()
        model = _balanced_logistic(Xtr, y_train.astype(np.int64), 1.0, 500)
        pred = model.decision_function(codes_test[:, cols].toarray()) > 0
        f1 = f1_score(y_test, pred)
        if f1 > best + f1_jump_threshold:
            best, chosen = f1, [int(c) for c in cols]
        else:
            break
    return chosen, float(best)


def absorption_scores(
    act_proj: np.ndarray,
    contrib: np.ndarray,
    probe_cos: np.ndarray,
    main: Sequence[int],
    codes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Absorption fraction and full absorption of m words (formulas in the module docstring).

    Args:
        act_proj: ``[m]`` A = x . p of each word.
        contrib: ``[m, d_sae]`` c_j = f_j (W_dec[j] . p), in the input's units.
        probe_cos: ``[d_sae]`` cos(W_dec[j], p).
        main: the letter's main latents.
        codes: ``[m, d_sae]`` the codes f (for "main latents do not fire").

    Returns:
        ``(fraction [m] float64, full [m] bool)``.
    """
    m, d_sae = contrib.shape
    main = list(main)
    main_proj = contrib[:, main].sum(1)
    candidate = np.ones(d_sae, dtype=bool)
    candidate[main] = False
    candidate &= probe_cos >= ABSORPTION_FRACTION_PROBE_COS
    absorbing = np.where(candidate[None, :] & (contrib > 0), contrib, 0.0)
    k = min(MAX_ABSORBING_LATENTS, d_sae)
    top_sum = np.sort(absorbing, axis=1)[:, d_sae - k :].sum(1)
    fraction = np.zeros(m)
    full = np.zeros(m, dtype=bool)
    top = contrib.argmax(1) if d_sae else np.zeros(m, dtype=np.int64)
    for i in range(m):
        a, mp, t = float(act_proj[i]), float(main_proj[i]), float(top_sum[i])
        if a <= 0:
            continue  # SAEBench: T / A is then <= 0 (or a division by zero at A = 0)
        if mp < a and t / a >= PROBE_PROJECTION_PROPORTION:
            if mp <= 0:
                fraction[i] = 1.0
            else:
                absorbed = min(t, a - mp)
                fraction[i] = min(max(absorbed / (absorbed + mp), 0.0), 1.0)
        quiet = bool(np.all(np.abs(codes[i, main]) < FIRING_EPS))
        j = int(top[i])
        full[i] = (
            quiet
            and probe_cos[j] >= FULL_ABSORPTION_PROBE_COS
            and contrib[i, j] / a >= PROBE_PROJECTION_PROPORTION
        )
    return fraction, full


# ----- SAE side ------------------------------------------------------------------------------------
def _output_scale(sae: SAE, X: torch.Tensor) -> np.ndarray:
    """Per-row factor ``[n]`` taking a latent's decoder term to the input's units.

    1 without run-time normalisation; ``std`` of the row for ``layer_norm`` and ``1 / coeff``
    for ``constant_norm_rescale`` (``SAE.postprocess`` undoes ``norm_in`` this way).
    """
    mode = sae.cfg.normalize_activations
    if mode == "none":
        return np.ones(X.shape[0])
    with torch.no_grad():
        _, state = sae.preprocess(X.to(sae.device))
    if mode == "layer_norm":
        return state[1].reshape(-1).double().cpu().numpy()  # type: ignore[index]
    return (1.0 / state).reshape(-1).double().cpu().numpy()  # type: ignore[operator]


def _decoder_rows(sae: SAE) -> np.ndarray:
    return sae.W_dec.detach().to("cpu", torch.float64).numpy()


# ----- the eval ------------------------------------------------------------------------------------
def _check_settings(settings: dict[str, Any]) -> None:
    def positive_int(key: str) -> None:
        v = settings[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"absorption: '{key}' must be a positive int, got {v!r}")

    for key in ("min_words_per_letter", "max_k", "l1_epochs", "l1_batch_size", "batch_size"):
        positive_int(key)
    if settings["max_words_per_letter"] is not None:
        positive_int("max_words_per_letter")
    if settings["min_letters"] < 2 or isinstance(settings["min_letters"], bool):
        raise ConfigError(
            f"absorption: 'min_letters' must be an int >= 2, got {settings['min_letters']!r}"
        )
    if not 0.0 < settings["test_fraction"] < 1.0:
        raise ConfigError(
            f"absorption: 'test_fraction' must be in (0, 1), got {settings['test_fraction']!r}"
        )
    icl = settings["icl_examples"]
    if icl is not None and (isinstance(icl, bool) or not isinstance(icl, int) or icl < 0):
        raise ConfigError(f"absorption: 'icl_examples' must be an int >= 0, got {icl!r}")
    template = settings["prompt_template"]
    if not isinstance(template, str) or template.count("{word}") != 1:
        raise ConfigError(
            f"absorption: 'prompt_template' must contain '{{word}}' exactly once, got {template!r}"
        )
    for key in ("gt_probe_C", "l1_decay"):
        if not settings[key] > 0:
            raise ConfigError(f"absorption: '{key}' must be > 0, got {settings[key]!r}")


def absorption_eval(
    handle: ModelHandle,
    sae: SAE,
    hook: str | int,
    *,
    seed: int = 42,
    prompt_template: str = PROMPT_TEMPLATE,
    icl_examples: int | None = None,
    max_words_per_letter: int | None = 250,
    min_words_per_letter: int = 20,
    test_fraction: float = 0.2,
    max_k: int = MAX_K,
    f1_jump_threshold: float = F1_JUMP_THRESHOLD,
    min_gt_probe_f1: float = MIN_GT_PROBE_F1,
    min_letters: int = MIN_LETTERS,
    gt_probe_C: float = 1.0,
    l1_decay: float = 0.01,
    l1_epochs: int = 50,
    l1_batch_size: int = 4096,
    batch_size: int = 64,
    progress: bool = False,
) -> AbsorptionResult:
    """First-letter absorption of ``sae`` reading ``hook`` of ``handle`` (module docstring).

    Args:
        handle: the model (any ``transformers`` decoder or encoder with a fast tokenizer).
        sae: an SAE with ``d_in`` = the model's width at ``hook``.
        hook: ``blocks.L.hook_<kind>`` or a layer (the residual stream after block L).
        seed: seeds the word sample, the split, the examples and the L1 probe's batches.
        prompt_template: the prompt, with ``{word}`` once.
        icl_examples: solved examples before the word (default: 10 for decoders, 0 for
            encoders).
        max_words_per_letter: words drawn per first letter (None: all).
        min_words_per_letter: letters with fewer usable words are not probed (their words stay
            as negatives).
        test_fraction: share of each letter's words in the test split.
        max_k, f1_jump_threshold: the main-latent search (SAEBench: 10, 0.03).
        min_gt_probe_f1, min_letters: letters kept and the least number of them (SAEBench: 0.6,
            20).
        gt_probe_C: inverse L2 strength of the ground-truth probes.
        l1_decay, l1_epochs, l1_batch_size: the L1 probe that ranks latents (SAEBench: 0.01, 50,
            4096).
        batch_size: prompts per forward pass.
        progress: show extraction progress bars.
    """
    settings = {
        "seed": seed,
        "prompt_template": prompt_template,
        "icl_examples": icl_examples,
        "max_words_per_letter": max_words_per_letter,
        "min_words_per_letter": min_words_per_letter,
        "test_fraction": test_fraction,
        "max_k": max_k,
        "f1_jump_threshold": f1_jump_threshold,
        "min_gt_probe_f1": min_gt_probe_f1,
        "min_letters": min_letters,
        "gt_probe_C": gt_probe_C,
        "l1_decay": l1_decay,
        "l1_epochs": l1_epochs,
        "l1_batch_size": l1_batch_size,
        "batch_size": batch_size,
    }
    _check_settings(settings)
    layer, kind = handle.check_hook(hook)
    if sae.d_in != handle.d_model:
        raise ConfigError(
            f"absorption: the SAE reads d_in={sae.d_in} but {handle.name} at {hook} has width "
            f"{handle.d_model}"
        )
    n_icl = icl_examples if icl_examples is not None else (
        DECODER_ICL_EXAMPLES if handle.is_decoder else 0
    )  # fmt: skip
    config = {
        **settings,
        "icl_examples": n_icl,
        "hook": f"blocks.{layer}.hook_{kind}",
        "full_absorption_probe_cos": FULL_ABSORPTION_PROBE_COS,
        "absorption_fraction_probe_cos": ABSORPTION_FRACTION_PROBE_COS,
        "probe_projection_proportion": PROBE_PROJECTION_PROPORTION,
        "max_absorbing_latents": MAX_ABSORBING_LATENTS,
        "firing_eps": FIRING_EPS,
    }

    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        timings[stage] = now - clock[0]
        clock[0] = now

    def skipped(reason: str, details: list[dict[str, Any]] | None = None) -> AbsorptionResult:
        log.info("absorption skipped: %s", reason)
        return AbsorptionResult({}, details or [], reason, config, timings)

    tokenizer = handle.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        return skipped(
            f"the tokenizer of {handle.name} ({type(tokenizer).__name__}) gives no character "
            "offsets, so the word's token cannot be located"
        )
    started = time.perf_counter()
    vocab = whole_word_vocabulary(tokenizer)
    train_words, test_words = split_words(vocab, test_fraction, seed, max_words_per_letter)
    rng = np.random.default_rng([seed, 1])
    train_prompts = build_prompts(train_words, train_words, n_icl, rng, prompt_template)
    test_prompts = build_prompts(test_words, test_words, n_icl, rng, prompt_template)
    pos_tr, len_tr = locate_words(tokenizer, train_prompts, train_words)
    pos_te, len_te = locate_words(tokenizer, test_prompts, test_words)
    keep_tr, keep_te = np.nonzero(pos_tr >= 0)[0], np.nonzero(pos_te >= 0)[0]
    dropped = len(pos_tr) + len(pos_te) - len(keep_tr) - len(keep_te)
    if dropped:
        log.info("absorption: %d words are not one token inside their prompt; dropped", dropped)
    train_words = [train_words[i] for i in keep_tr]
    test_words = [test_words[i] for i in keep_te]
    y_tr = np.array([w.letter for w in train_words])
    y_te = np.array([w.letter for w in test_words])
    counts = {
        letter: (int(np.sum(y_tr == letter)), int(np.sum(y_te == letter))) for letter in LETTERS
    }
    letters = [
        letter
        for letter, (a, b) in counts.items()
        if a >= 1 and b >= 1 and a + b >= min_words_per_letter
    ]
    lap("words")
    if len(letters) < min_letters:
        return skipped(
            f"the tokenizer of {handle.name} has whole-word tokens (ASCII letters, length >= 2, "
            f"one token in the prompt) for {len(letters)} first letters with >= "
            f"{min_words_per_letter} words each; the task needs >= {min_letters} letters"
        )

    # Ground-truth probes on the activations.
    X_tr = word_activations(
        handle, hook, [train_prompts[i] for i in keep_tr], pos_tr[keep_tr], len_tr[keep_tr],
        batch_size, progress,
    )  # fmt: skip
    X_te = word_activations(
        handle, hook, [test_prompts[i] for i in keep_te], pos_te[keep_te], len_te[keep_te],
        batch_size, progress,
    )  # fmt: skip
    lap("activations")
    W, b = fit_letter_probes(X_tr.double().numpy(), y_tr, letters, gt_probe_C)
    scores_te = X_te.double().numpy() @ W.T + b
    details: list[dict[str, Any]] = []
    for j, letter in enumerate(letters):
        f1 = f1_score(y_te == letter, scores_te[:, j] > 0)
        details.append(
            {
                "first_letter": letter,
                "n_train_words": counts[letter][0],
                "n_test_words": counts[letter][1],
                "gt_probe_f1": f1,
                "included": f1 > min_gt_probe_f1,
            }
        )
    kept = [j for j, d in enumerate(details) if d["included"]]
    lap("gt_probes")
    if len(kept) < min_letters:
        best = max(d["gt_probe_f1"] for d in details)
        return skipped(
            f"the ground-truth probes at {config['hook']} of {handle.name} reach F1 > "
            f"{min_gt_probe_f1} for {len(kept)} letters (best F1 {best:.3f}); the task needs >= "
            f"{min_letters} (the model does not carry first letters linearly there)",
            details,
        )

    # SAE codes, the L1 ranking and the main latents.
    sae_device = sae.device
    codes_tr = encode_rows(sae, LayerActivations(pooled=X_tr), "last", device=sae_device)
    codes_te = encode_rows(sae, LayerActivations(pooled=X_te), "last", device=sae_device)
    lap("encode")
    Y = np.stack([y_tr == letters[j] for j in kept], axis=1)
    weights = l1_probe_weights(
        codes_tr, Y, l1_decay=l1_decay, epochs=l1_epochs, batch_size=l1_batch_size, seed=seed
    )
    lap("l1_probe")
    decoder = _decoder_rows(sae)
    dec_norm = np.linalg.norm(decoder, axis=1)
    scale_te = _output_scale(sae, X_te)
    x_te = X_te.double().numpy()
    for col, j in enumerate(kept):
        letter, record = letters[j], details[j]
        ranking = np.argsort(-weights[col], kind="stable")[: min(max_k, sae.d_sae)]
        main, main_f1 = select_main_latents(
            ranking, codes_tr, y_tr == letter, codes_te, y_te == letter, max_k, f1_jump_threshold
        )
        p = W[j] / np.linalg.norm(W[j])
        dec_proj = decoder @ p
        probe_cos = np.divide(dec_proj, dec_norm, out=np.zeros_like(dec_proj), where=dec_norm > 0)
        rows = np.nonzero((y_te == letter) & (scores_te[:, j] > 0))[0]
        f = codes_te[rows].toarray().astype(np.float64)
        contrib = f * dec_proj[None, :] * scale_te[rows, None]
        fraction, full = absorption_scores(x_te[rows] @ p, contrib, probe_cos, main, f)
        n_tp = len(rows)
        record.update(
            {
                "main_latents": main,
                "main_latents_f1": main_f1,
                "num_split_features": len(main),
                "num_probe_true_positives": n_tp,
                "num_full_absorption": int(full.sum()),
                "mean_absorption_fraction": float(fraction.sum() / n_tp) if n_tp else None,
                "full_absorption_rate": float(full.sum() / n_tp) if n_tp else None,
            }
        )
    lap("absorption")
    scored = [details[j] for j in kept if details[j]["num_probe_true_positives"]]
    metrics: dict[str, float] = {}
    for name, key in (
        ("absorption_fraction_score", "mean_absorption_fraction"),
        ("full_absorption_score", "full_absorption_rate"),
        ("num_split_features", "num_split_features"),
    ):
        values = [float(d[key]) for d in scored]
        metrics[f"mean_{name}"] = statistics.mean(values)
        metrics[f"std_dev_{name}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    metrics["n_letters"] = float(len(scored))
    metrics["n_train_words"] = float(len(train_words))
    metrics["n_test_words"] = float(len(test_words))
    log.info(
        "absorption at %s: fraction %.4f, full %.4f, split %.2f over %d letters in %.1f s",
        config["hook"],
        metrics["mean_absorption_fraction_score"],
        metrics["mean_full_absorption_score"],
        metrics["mean_num_split_features"],
        len(scored),
        time.perf_counter() - started,
    )
    return AbsorptionResult(metrics, details, None, config, timings)


__all__ = [
    "AbsorptionResult",
    "Prompt",
    "Word",
    "absorption_eval",
    "absorption_scores",
    "build_prompts",
    "fit_letter_probes",
    "l1_probe_weights",
    "locate_words",
    "select_main_latents",
    "split_words",
    "whole_word_vocabulary",
    "word_activations",
]
