"""Find a model's blocks and sublayers; capture activations at TransformerLens hook points.

Hook names follow TransformerLens (SAELens ``metadata.hook_name``): ``blocks.{L}.hook_{kind}``
with ``kind`` one of

- ``resid_post``: the residual stream after block ``L``: the output of the ``L``-th module of the
  block list (the first element when a block returns a tuple), i.e. ``hidden_states[L + 1]`` of
  ``output_hidden_states=True`` for every block but the last (whose ``hidden_states`` entry may
  have the final norm applied; the hook point does not). For post-LayerNorm encoders (BERT,
  MiniLM) this is the block's output after its final LayerNorm, which TransformerLens calls
  ``hook_normalized_resid_post``.
- ``attn_out`` / ``mlp_out``: what the attention / MLP sublayer of block ``L`` adds to the
  residual stream, before the residual add. As in TransformerLens
  (``transformer_lens/components/transformer_block.py``: ``hook_attn_out`` after ``ln1_post``,
  ``hook_mlp_out`` after ``ln2_post``), a norm applied to the sublayer's output before the add is
  part of it: for Gemma-2 these are the outputs of ``post_attention_layernorm`` and
  ``post_feedforward_layernorm`` (Gemma Scope's MLP SAEs read ``blocks.L.hook_mlp_out``, so
  defined; its attention SAEs read ``blocks.L.attn.hook_z``, the heads before ``W_O``, which is
  not one of these kinds). Hence, for pre-norm blocks (GPT-2, Llama, Gemma-2, GPT-NeoX with
  sequential or parallel residual)::

      resid_post[L] = resid_post[L - 1] + attn_out[L] + mlp_out[L]

  For post-LayerNorm blocks (BERT family: ``attention.output`` and ``output`` each hold
  ``dense``, ``dropout`` and ``LayerNorm``), ``attn_out`` / ``mlp_out`` are the sublayer's output
  projection after its dropout (the identity in eval), before the residual add and LayerNorm,
  as TransformerLens' ``BertBlock``::

      resid_post[L] = LN_mlp(LN_attn(resid_post[L - 1] + attn_out[L]) + mlp_out[L])

How the sublayers are found, without a table of model names: the attention module is the block's
child named ``self_attn``, ``attn``, ``attention`` or ``self_attention`` and the MLP the child named
``mlp``, ``feed_forward``, ``ffn``, ``ff`` or ``block_sparse_moe`` (the attribute conventions of
``transformers``); when the sublayer (or, for the MLP, the block) has an ``output`` child holding a
``dense`` Linear and a norm, that child's ``dense`` is the output projection (post-LN layout). The
captured value is the output of that module, then of every norm or dropout module beside it that is
called on exactly that tensor during the forward pass (followed by tensor identity, so
Gemma-2's post-norms are followed, while Llama's ``post_attention_layernorm``, which reads the
residual sum, is not).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from saelab.errors import ConfigError, ModelError

HookKind = Literal["resid_post", "attn_out", "mlp_out"]
HOOK_KINDS: tuple[str, ...] = get_args(HookKind)
HookKey = int | str
"""Key of one hook point in activation dicts: the layer (``int``) for the residual stream after a
block, the hook name (``blocks.L.hook_mlp_out``) for any other kind."""

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(" + "|".join(HOOK_KINDS) + r")$")
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "ff", "block_sparse_moe")


def hook_name(layer: int, kind: HookKind = "resid_post") -> str:
    """TransformerLens name of hook ``kind`` of block ``layer``: ``blocks.{layer}.hook_{kind}``."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ConfigError(f"layer must be a non-negative int, got {layer!r}")
    if kind not in HOOK_KINDS:
        raise ConfigError(f"hook kind must be one of {', '.join(HOOK_KINDS)}, got {kind!r}")
    return f"blocks.{layer}.hook_{kind}"


def parse_hook(name: str | int) -> tuple[int, HookKind]:
    """``(layer, kind)`` of ``blocks.{L}.hook_{kind}``; a bare layer (int or digits) is resid_post.

    >>> parse_hook("blocks.12.hook_mlp_out")
    (12, 'mlp_out')
    >>> parse_hook(3)
    (3, 'resid_post')
    """
    if isinstance(name, int) and not isinstance(name, bool):
        if name < 0:
            raise ConfigError(f"hook layer must be >= 0, got {name}")
        return name, "resid_post"
    if isinstance(name, str):
        text = name.strip()
        if text.isdigit():
            return int(text), "resid_post"
        match = _HOOK_RE.match(text)
        if match:
            return int(match.group(1)), match.group(2)  # type: ignore[return-value]
    raise ConfigError(
        f"cannot read a hook from {name!r}: expected 'blocks.<L>.hook_<kind>' with kind one of "
        f"{', '.join(HOOK_KINDS)}, or a non-negative integer (the residual stream after block L)"
    )


def parse_hook_name(name: str | int) -> int:
    """Layer index of ``blocks.{L}.hook_resid_post``, or of a bare non-negative int (string).

    Only the residual stream: another kind is an error here (use :func:`parse_hook`), so that a
    caller asking for a layer never reads an MLP or attention hook as the residual stream.
    """
    try:
        layer, kind = parse_hook(name)
    except ConfigError:
        kind = None
    if kind == "resid_post":
        return layer
    raise ConfigError(
        f"cannot read a layer from hook name {name!r}: expected 'blocks.<L>.hook_resid_post' "
        "or a non-negative integer"
    )


def hook_key(layer: int, kind: HookKind = "resid_post") -> HookKey:
    """Key of a hook point in activation dicts (see :data:`HookKey`)."""
    return layer if kind == "resid_post" else hook_name(layer, kind)


def key_of(hook: str | int) -> HookKey:
    """:func:`hook_key` of a hook name or layer: ``3`` and ``blocks.3.hook_resid_post`` -> 3."""
    return hook_key(*parse_hook(hook))


def text_config(model: nn.Module) -> Any:
    """The model's text config (``config.get_text_config()`` for multimodal wrappers)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(
            f"{type(model).__name__} has no .config; saelab needs a transformers model"
        )
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def n_layers_from_config(model: nn.Module) -> int:
    """Number of transformer blocks declared in the model's (text) config."""
    config = text_config(model)
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ModelError(
        f"config of {type(model).__name__} declares no layer count "
        f"(looked for {', '.join(_LAYER_COUNT_KEYS)})"
    )


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks.

    Found from the model itself, not a table of names: the ``nn.ModuleList`` whose length equals
    the config's layer count and whose entries all hold parameters; if several qualify (e.g. a
    vision tower of the same depth), the one holding the most parameters.
    """
    n_layers = n_layers_from_config(model)
    best: nn.ModuleList | None = None
    best_params = -1
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) != n_layers:
            continue
        counts = [sum(p.numel() for p in block.parameters()) for block in module]
        if min(counts) == 0:
            continue
        if sum(counts) > best_params:
            best, best_params = module, sum(counts)
    if best is None:
        raise ModelError(
            f"no transformer block list found in {type(model).__name__}: no nn.ModuleList of "
            f"{n_layers} blocks (the config's layer count)"
        )
    return best


@dataclass(frozen=True)
class SublayerSite:
    """Where the output of one sublayer (attention or MLP) of a block is read.

    Attributes:
        source: the module whose output (the first element of a tuple) is the sublayer's output.
        followers: norm and dropout modules beside ``source``; one called on exactly the tensor
            read so far replaces it with its output (Gemma-2's post-norms, NeoX's dropouts).
        path: ``source``'s attribute path inside the block (for messages), e.g. ``self_attn``.
    """

    source: nn.Module
    followers: tuple[nn.Module, ...]
    path: str


def _is_norm(module: nn.Module) -> bool:
    """A normalization module (torch's, or a model's own ``*Norm`` class such as ``LlamaRMSNorm``)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
        return True
    return "norm" in type(module).__name__.lower()


def _is_norm_or_dropout(module: nn.Module) -> bool:
    """Shape-preserving post-processing: a normalization, a dropout or an identity module."""
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return True
    return _is_norm(module) or "dropout" in type(module).__name__.lower()


def _output_projection(module: nn.Module | None) -> nn.Module | None:
    """The ``output`` child of a post-LN sublayer (BERT's ``BertSelfOutput`` / ``BertOutput``):
    a module holding a ``dense`` Linear and a norm, whose forward adds the residual. Else None."""
    output = getattr(module, "output", None) if module is not None else None
    if not isinstance(output, nn.Module):
        return None
    dense = getattr(output, "dense", None)
    has_norm = any(_is_norm(child) for child in output.children())
    return output if isinstance(dense, nn.Linear) and has_norm else None


def _named_child(block: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module) and any(True for _ in child.parameters()):
            return name, child
    return None


def _site(parent: nn.Module, source_name: str, prefix: str) -> SublayerSite:
    source = getattr(parent, source_name)
    followers = tuple(
        m for n, m in parent.named_children() if n != source_name and _is_norm_or_dropout(m)
    )
    return SublayerSite(source=source, followers=followers, path=prefix + source_name)


def find_sublayer(block: nn.Module, kind: HookKind) -> SublayerSite:
    """Where ``attn_out`` or ``mlp_out`` of ``block`` is read (the rules of the module docstring)."""
    if kind == "attn_out":
        names, what = _ATTENTION_NAMES, "attention"
    elif kind == "mlp_out":
        names, what = _MLP_NAMES, "MLP"
    else:
        raise ConfigError(f"find_sublayer reads attn_out or mlp_out, got {kind!r}")
    found = _named_child(block, names)
    if found is not None:
        name, module = found
        projection = _output_projection(module)
        if projection is not None:  # post-LN sublayer: its own output is already normalised
            return _site(projection, "dense", f"{name}.output.")
        return _site(block, name, "")
    projection = _output_projection(block) if kind == "mlp_out" else None
    if projection is not None:  # BERT family: the block's `intermediate` + `output` are the MLP
        return _site(projection, "dense", "output.")
    children = ", ".join(n for n, _ in block.named_children()) or "none"
    raise ModelError(
        f"cannot find the {what} of {type(block).__name__} for hook_{kind}: looked for a child "
        f"named {', '.join(names)}"
        + (" or a post-LN 'output' child with 'dense' and a norm" if kind == "mlp_out" else "")
        + f"; its children are: {children}"
    )


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block to end the forward pass early."""


def block_output(output: object) -> torch.Tensor:
    """The hidden state a block returns: the tensor itself or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(
        f"a transformer block returned {type(output).__name__}; expected a tensor or a tuple "
        "whose first element is the hidden state"
    )


@contextlib.contextmanager
def capture_hooks(
    blocks: nn.ModuleList, hooks: Sequence[int | str], stop_early: bool = True
) -> Iterator[dict[HookKey, torch.Tensor]]:
    """Hook every point of ``hooks``; yield the dict they fill with ``[B, S, d]`` per forward.

    ``hooks`` are layers (the residual stream after that block) or hook names of any kind; the
    dict is keyed by :func:`hook_key`. Sublayer outputs are copied when read (a model may add the
    residual in place into them). With ``stop_early`` the hook of the deepest block raises a
    private exception once the block has run, so no later block runs; call the model through
    :func:`run_until_captured`. Hooks are removed on exit, also on error.
    """
    points = sorted({parse_hook(h) for h in hooks})
    if not points:
        raise ConfigError("no hook points requested")
    for layer, _ in points:
        if layer >= len(blocks):
            raise ModelError(f"layer {layer} out of range: the model has {len(blocks)} blocks")
    captured: dict[HookKey, torch.Tensor] = {}
    read: dict[HookKey, torch.Tensor] = {}  # the tensor object a follower must receive
    deepest = points[-1][0]
    by_layer: dict[int, list[str]] = {}
    for layer, kind in points:
        by_layer.setdefault(layer, []).append(kind)
    by_layer.setdefault(deepest, [])
    followers: dict[nn.Module, list[HookKey]] = {}
    handles = []

    def block_hook(layer: int, kinds: list[str]) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if "resid_post" in kinds:
                captured[layer] = block_output(output)
            for kind in kinds:
                read.pop(hook_key(layer, kind), None)  # the block is done: no follower is left
            if stop_early and layer == deepest:
                raise _StopForward

        return hook

    def source_hook(key: HookKey) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            value = block_output(output)
            read[key] = value
            captured[key] = value.clone()

        return hook

    def follower_hook(keys: list[HookKey]) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            first = next(
                (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None
            )
            for key in keys:
                if first is not None and key in read and first is read[key]:
                    value = block_output(output)
                    read[key] = value
                    captured[key] = value.clone()

        return hook

    try:
        for layer, kinds in sorted(by_layer.items()):
            for kind in kinds:
                if kind == "resid_post":
                    continue
                site = find_sublayer(blocks[layer], kind)  # type: ignore[arg-type]
                key = hook_key(layer, kind)  # type: ignore[arg-type]
                handles.append(site.source.register_forward_hook(source_hook(key)))
                for module in site.followers:
                    followers.setdefault(module, []).append(key)
            handles.append(blocks[layer].register_forward_hook(block_hook(layer, kinds)))
        for module, keys in followers.items():
            handles.append(module.register_forward_hook(follower_hook(keys), with_kwargs=True))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        read.clear()


@contextlib.contextmanager
def capture_resid_post(
    blocks: nn.ModuleList, layers: Sequence[int], stop_early: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """Hook ``blocks[L]`` for each ``L`` in ``layers``; yield the dict they fill with ``[B, S, d]``
    (:func:`capture_hooks` restricted to the residual stream, keyed by layer)."""
    with capture_hooks(blocks, [parse_hook_name(layer) for layer in layers], stop_early) as got:
        yield got  # type: ignore[misc]


def run_until_captured(model: nn.Module, **inputs: object) -> None:
    """Call ``model(**inputs)``; the early-stop signal of :func:`capture_hooks` ends it."""
    with contextlib.suppress(_StopForward):
        model(**inputs)


@dataclass
class HookReplacement:
    """What :func:`replace_hook` splices into the forward pass; set between passes.

    Attributes:
        hook: the hook name, ``blocks.{L}.hook_{kind}``.
        fn: maps the hook's value at the chosen positions, ``[n, d]``, to its replacement
            ``[n, d]`` (cast back to the value's dtype and device); None leaves the pass clean
            (the hooks then only follow the value).
        positions: ``[B, S]`` bool, the positions to replace (the others keep their clean value);
            None replaces every position. ``fn`` receives the rows in row-major ``(b, s)`` order,
            so the positions of one sequence are contiguous.
        passes: forward passes through the hooked block so far.
    """

    hook: str
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    positions: torch.Tensor | None = None
    passes: int = 0
    end: nn.Module | None = field(default=None, repr=False)
    """The module whose output is the hook value (the block, the sublayer or its last follower),
    learned in the first pass."""

    def splice(self, value: torch.Tensor) -> torch.Tensor:
        """A new ``[B, S, d]`` tensor: ``fn(value[positions])`` at ``positions``, else ``value``."""
        if value.ndim != 3:
            raise ModelError(
                f"{self.hook} has shape {tuple(value.shape)}, expected [batch, tokens, d_model]"
            )
        mask = self.positions
        if mask is None:
            mask = torch.ones(value.shape[:2], dtype=torch.bool, device=value.device)
        if tuple(mask.shape) != tuple(value.shape[:2]):
            raise ConfigError(
                f"positions to replace at {self.hook} have shape {tuple(mask.shape)}, expected "
                f"[batch, tokens] = {tuple(value.shape[:2])}"
            )
        mask = mask.to(device=value.device, dtype=torch.bool)
        out = value.clone()
        n = int(mask.sum())
        if n and self.fn is not None:
            new = self.fn(value[mask])
            if tuple(new.shape) != (n, value.shape[-1]):
                raise ConfigError(
                    f"replacement at {self.hook} has shape {tuple(new.shape)}, expected "
                    f"[positions, d_model] = {(n, value.shape[-1])}"
                )
            out[mask] = new.to(device=value.device, dtype=value.dtype)
        return out


def _with_first(output: object, value: torch.Tensor) -> object:
    """``output`` with its hidden state (the tensor or a sequence's first element) set to ``value``."""
    if isinstance(output, torch.Tensor):
        return value
    if isinstance(output, tuple):
        return (value, *output[1:])
    return [value, *output[1:]]  # type: ignore[misc]


@contextlib.contextmanager
def replace_hook(
    blocks: nn.ModuleList,
    hook: int | str,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    positions: torch.Tensor | None = None,
) -> Iterator[HookReplacement]:
    """Replace the value at ``hook`` with ``fn`` of it at ``positions`` in every forward pass.

    The value is exactly what :func:`capture_hooks` reads (module docstring): the block's hidden
    state for ``resid_post``; for ``attn_out`` / ``mlp_out`` the sublayer's output, followed
    through every norm or dropout called on exactly it (Gemma-2's post-norms). Which module ends
    that chain is learned in the first forward pass of the context; until then each step of the
    chain is replaced, and a follower called on a replaced value is handed the clean value
    instead, so ``fn`` may run more than once in that pass (the last result is the one used; a
    first pass with ``fn=None`` learns the chain without calling ``fn``). From then on ``fn`` runs
    once per pass, on the value of the chain's end. Yields the :class:`HookReplacement`, whose
    ``fn`` and ``positions`` may be changed between passes. Hooks are removed on exit.
    """
    layer, kind = parse_hook(hook)
    if layer >= len(blocks):
        raise ModelError(f"layer {layer} out of range: the model has {len(blocks)} blocks")
    state = HookReplacement(hook=hook_name(layer, kind), fn=fn, positions=positions)
    block = blocks[layer]
    cur: dict[str, Any] = {}  # this pass: orig (clean value), repl, last (its module), pending
    handles = []

    def replace_at(module: nn.Module, output: object) -> object:
        value = block_output(output)
        cur.update(orig=value, repl=None, last=module)
        if state.fn is None or state.end not in (None, module):
            return None
        cur["repl"] = state.splice(value)
        return _with_first(output, cur["repl"])

    def follower_pre(module: nn.Module, args: tuple, kwargs: dict) -> object:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is None or "orig" not in cur:
            return None
        if first is cur["repl"]:  # called on our replacement: give it the clean value
            cur["pending"] = module
            orig = cur["orig"]
            return (
                tuple(orig if a is first else a for a in args),
                {k: orig if v is first else v for k, v in kwargs.items()},
            )
        if first is cur["orig"]:
            cur["pending"] = module
        return None

    def follower_hook(module: nn.Module, _args: tuple, _kwargs: dict, output: object) -> object:
        if cur.get("pending") is not module:
            return None
        cur["pending"] = None
        if block_output(output) is cur["orig"]:  # passes its input through (dropout in eval)
            return None if cur["repl"] is None else _with_first(output, cur["repl"])
        return replace_at(module, output)

    def block_hook(module: nn.Module, _inputs: object, output: object) -> object:
        state.passes += 1
        if kind == "resid_post":
            state.end = module
            if state.fn is None:
                return None
            return _with_first(output, state.splice(block_output(output)))
        last = cur.get("last")
        cur.clear()
        if last is None:
            raise ModelError(f"the sublayer of {state.hook} did not run in the forward pass")
        if state.end is None:
            state.end = last
        elif last is not state.end:
            raise ModelError(f"{state.hook} was read from another module than in the first pass")
        return None

    try:
        handles.append(block.register_forward_pre_hook(lambda *_: cur.clear()))
        if kind != "resid_post":
            site = find_sublayer(block, kind)
            handles.append(site.source.register_forward_hook(lambda m, _i, o: replace_at(m, o)))
            for module in site.followers:
                handles.append(module.register_forward_pre_hook(follower_pre, with_kwargs=True))
                handles.append(module.register_forward_hook(follower_hook, with_kwargs=True))
        handles.append(block.register_forward_hook(block_hook))
        yield state
    finally:
        for handle in handles:
            handle.remove()
        cur.clear()
