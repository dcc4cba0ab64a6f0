"""Tiny random-weight transformers models and word-level tokenizers, built from configs for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    BertConfig,
    Gemma2Config,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

N_LAYERS = 3
HIDDEN = 32

_WORD_LIST = (
    "the a cat dog sat on mat big small red blue runs jumps over under tree house "
    "bird sings loud quiet green old new fast slow"
)
WORDS = _WORD_LIST.split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}


def tiny_config(arch: str):
    v = len(VOCAB)
    common = {"vocab_size": v, "bos_token_id": VOCAB["<s>"], "eos_token_id": VOCAB["</s>"]}
    if arch == "gpt2":
        return GPT2Config(n_layer=N_LAYERS, n_embd=HIDDEN, n_head=2, n_positions=64, **common)
    if arch == "llama":
        return LlamaConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
    if arch == "gemma2":
        return Gemma2Config(
            num_hidden_layers=N_LAYERS,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
            sliding_window=16,
            **common,
        )
    if arch == "neox":
        return GPTNeoXConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_attention_heads=4,
            max_position_embeddings=128,
            **common,
        )
    return BertConfig(
        num_hidden_layers=N_LAYERS,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=VOCAB["[PAD]"],
        vocab_size=v,
    )


def tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: BERT style ([CLS] x [SEP], has pad), GPT-2 style (no BOS, no pad),
    Llama style (<s> x, no pad)."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if arch == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    if arch != "gpt2":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 4)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )


def build_tiny_model(folder: Path, arch: str, seed: int = 0) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(tiny_config(arch))
    model.save_pretrained(folder)
    tiny_tokenizer(arch).save_pretrained(folder)
    return folder


def build_tiny_causal_lm(folder: Path, arch: str, seed: int = 0) -> Path:
    """A tiny random decoder *with* its LM head (``AutoModelForCausalLM``), saved with its tokenizer."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(arch))
    model.save_pretrained(folder)
    tiny_tokenizer(arch).save_pretrained(folder)
    return folder


def write_word_dataset(path, n: int, seed: int) -> None:
    """Sentences of random words; the label is decided by the last word (first or second half of WORDS)."""
    rng = np.random.default_rng(seed)
    half = len(WORDS) // 2
    rows = []
    for i in range(n):
        label = i % 2
        body = rng.choice(WORDS, size=rng.integers(2, 7)).tolist()
        last = rng.choice(WORDS[half:] if label else WORDS[:half])
        rows.append({"prompt": " ".join([*body, last]), "target": "yes" if label else "no"})
    pd.DataFrame(rows).to_csv(path, index=False)
