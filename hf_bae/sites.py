"""Sites: where in a decoder-only language model a dictionary reads its activations, and the hooks
that read (or replace) them.

A site is a decoder layer L (0-based) and one of

- `resid_post`: the output of decoder layer L, i.e. the residual stream after L+1 blocks. It equals
  `model(..., output_hidden_states=True).hidden_states[L + 1]` for every layer but the last; for the
  last layer transformers returns the stream *after the final norm* there, while `resid_post` is
  always the raw residual stream. The original BAE code's `--layer N` (an index into
  `hidden_states`, 0 = embeddings) is our `layers.{N-1}.resid_post`.
- `mlp_in`: the input of layer L's MLP, after its norm (Llama `post_attention_layernorm`, GPT-2
  `ln_2`, GPT-NeoX `post_attention_layernorm`, Gemma2 `pre_feedforward_layernorm`).
- `mlp_out`: what layer L's MLP adds to the residual stream: the MLP's output, after the
  post-feed-forward norm in models that have one (Gemma2/Gemma3).

Sites are found by module path (`<base>.layers[L].mlp` and its kin), so any transformers decoder
laid out like Llama, Qwen2, Mistral, Gemma, GPT-2 or GPT-NeoX works; others get an error that says
what was looked for.

`HookedForward` reads several sites in one forward pass and stops the model right after the last
of them (a private exception raised from the hook), so a middle layer costs half a model.
`replace_site` swaps a site's activation for a function of it in a full forward, which is how a
dictionary's reconstruction is spliced in to measure downstream loss.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .configuration import SITES
from .formats import hookpoint, parse_hookpoint

# Forward order of the sites inside one decoder layer.
_ORDER = {"mlp_in": 0, "mlp_out": 1, "resid_post": 2}
# Where decoder layers live, relative to the model (CausalLM wrappers and bare base models).
_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma, Gemma2, Phi3, OLMo ... (CausalLM)
    "layers",  # the same, bare base model; GPT-NeoX base
    "transformer.h",  # GPT-2, GPT-J, Bloom (CausalLM)
    "h",  # GPT-2 base
    "gpt_neox.layers",  # GPT-NeoX / Pythia (CausalLM)
    "model.decoder.layers",  # OPT
    "model.language_model.layers",  # multimodal wrappers (Gemma3, ...)
)
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
# Norms applied to the MLP output before it joins the residual stream (part of mlp_out).
_POST_MLP_NORMS = ("post_feedforward_layernorm",)


@dataclass(frozen=True)
class Site:
    """A place to read activations: decoder layer `layer` (0-based) and a site `name`.

    `str(site)` is the canonical spelling, `layers.5.resid_post`, also used as Hub subfolder and
    tensor name.
    """

    layer: int
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ValueError(f"Site layer must be a non-negative integer, got {self.layer!r}.")
        if self.name not in SITES:
            raise ValueError(f"Unknown site {self.name!r}; choose one of {', '.join(SITES)} (e.g. 'layers.5.resid_post').")

    @classmethod
    def parse(cls, text: "str | Site") -> "Site":
        """Read `layers.5.resid_post` (canonical) or `5.resid_post`; a `Site` is returned as is."""
        if isinstance(text, Site):
            return text
        try:
            layer, name = parse_hookpoint(str(text))
        except ValueError:
            raise ValueError(
                f"Cannot read site {text!r}: write it as 'layers.<layer>.<site>' with <site> one of "
                f"{', '.join(SITES)}, e.g. 'layers.5.resid_post'."
            ) from None
        try:
            return cls(layer, name)
        except ValueError as error:  # say which of the user's sites it was
            raise ValueError(f"Cannot read site {text!r}: {error}") from None

    def __str__(self) -> str:
        return hookpoint(self.layer, self.name)

    @property
    def order(self) -> tuple[int, int]:
        """Sort key in forward order (layer, then mlp_in < mlp_out < resid_post)."""
        return (self.layer, _ORDER[self.name])


def parse_sites(sites: "Sequence[str | Site] | str | Site") -> list[Site]:
    """Parse one or several sites; duplicates are an error (they would silently share a tensor)."""
    if isinstance(sites, (str, Site)):
        sites = [sites]
    parsed = [Site.parse(s) for s in sites]
    if not parsed:
        raise ValueError("No site given: name at least one, e.g. 'layers.5.resid_post'.")
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"Duplicate sites in {[str(s) for s in parsed]}.")
    return parsed


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The `nn.ModuleList` of decoder layers of a transformers causal LM (or its base model)."""
    for root in (model, getattr(model, "module", None)):  # also inside DDP / accelerate wrappers
        if not isinstance(root, nn.Module):
            continue
        for path in _LAYER_PATHS:
            layers = _get_path(root, path)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    raise ValueError(
        f"Cannot find the decoder layers of {type(model).__name__}: looked for "
        f"{', '.join(_LAYER_PATHS)}. Supported layouts: Llama, Qwen2, Mistral, Gemma/Gemma2, GPT-2, GPT-NeoX "
        "and models laid out like them. Valid sites are then 'layers.<L>.<site>' with <site> in "
        f"{', '.join(SITES)}."
    )


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


def _layer(model: nn.Module, site: Site) -> nn.Module:
    layers = decoder_layers(model)
    if site.layer >= len(layers):
        raise ValueError(
            f"Layer {site.layer} is out of range for {type(model).__name__}: it has {len(layers)} decoder layers, "
            f"so valid sites are layers.0 to layers.{len(layers) - 1} with {', '.join(SITES)}."
        )
    return layers[site.layer]


def _mlp(layer: nn.Module, site: Site) -> nn.Module:
    for name in _MLP_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(
        f"Cannot find the MLP of {type(layer).__name__} (looked for {', '.join(_MLP_NAMES)}), so {site} is not "
        f"available; resid_post sites still are (e.g. {hookpoint(site.layer, 'resid_post')})."
    )


def resolve_site_module(model: nn.Module, site: "Site | str") -> nn.Module:
    """The module whose output (`resid_post`, `mlp_out`) or input (`mlp_in`) is the site's activation."""
    site = Site.parse(site)
    layer = _layer(model, site)
    if site.name == "resid_post":
        return layer
    mlp = _mlp(layer, site)
    if site.name == "mlp_in":
        return mlp
    for name in _POST_MLP_NORMS:
        norm = getattr(layer, name, None)
        if isinstance(norm, nn.Module):
            return norm
    return mlp


def _first_tensor(output: Any) -> torch.Tensor:
    """The hidden states in a module's output (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


def _input_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    for value in kwargs.values():
        if torch.is_tensor(value):
            return value
    raise RuntimeError("Could not find the MLP's input tensor among its arguments.")


def _with_input(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else next(k for k, v in kwargs.items() if torch.is_tensor(v))
    return args, {**kwargs, key: value}


def _register(module: nn.Module, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Hook `module` so that `fn(activation)` sees the site; a tensor it returns replaces the activation."""
    if site.name == "mlp_in":

        def pre_hook(_module, args, kwargs):
            new = fn(_input_tensor(args, kwargs))
            return None if new is None else _with_input(args, kwargs, new)

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(_module, _args, output):
        new = fn(_first_tensor(output))
        return None if new is None else _replace_first(output, new)

    return module.register_forward_hook(hook)


class _StopForward(Exception):
    """Raised from the hook of the last needed site to skip the rest of the model."""


class HookedForward:
    """Read several sites in one forward pass that stops right after the last of them.

    Use as a context manager (hooks are registered once) or call directly (hooks live for the call):

    ```python
    >>> with HookedForward(model, [Site(5, "resid_post"), Site(5, "mlp_in")]) as forward:
    ...     acts = forward(input_ids)            # {"layers.5.resid_post": [batch, seq, d], ...}
    ```

    The forward runs in `torch.inference_mode`, with `use_cache=False`, in eval mode (restored after);
    the returned tensors are the model's own (its dtype and device). Layers after the last site, the
    final norm and the LM head never run.
    """

    def __init__(self, model: nn.Module, sites: "Sequence[Site | str]", stop_early: bool = True) -> None:
        self.model = model
        self.sites = sorted(parse_sites(sites), key=lambda s: s.order)
        self.modules = [resolve_site_module(model, s) for s in self.sites]
        self.stop_early = stop_early
        self._handles: list = []
        self._store: dict[str, torch.Tensor] = {}

    def _hook_for(self, site: Site, last: bool):
        key = str(site)

        def capture(activation: torch.Tensor) -> None:
            self._store[key] = activation.detach()
            if last and self.stop_early:
                raise _StopForward

        return capture

    def __enter__(self) -> "HookedForward":
        if not self._handles:
            for i, (site, module) in enumerate(zip(self.sites, self.modules)):
                self._handles.append(_register(module, site, self._hook_for(site, i == len(self.sites) - 1)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the model on `input_ids` `[batch, seq]`; returns `str(site) -> [batch, seq, d]`."""
        registered_here = not self._handles
        if registered_here:
            self.__enter__()
        was_training = self.model.training
        if was_training:  # eval() walks every module: only when needed
            self.model.eval()
        self._store = {}
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            if was_training:
                self.model.train()
            if registered_here:
                self.__exit__()
        missing = [str(s) for s in self.sites if str(s) not in self._store]
        if missing:
            raise RuntimeError(f"The forward pass never reached {missing}: does this model run those modules?")
        store, self._store = self._store, {}
        return {str(s): store[str(s)] for s in self.sites}


@contextmanager
def replace_site(
    model: nn.Module,
    site: "Site | str",
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    source: "Site | str | None" = None,
) -> Iterator[None]:
    """While active, the activation at `site` is replaced by `fn(activation)` in every forward pass.

    With `source` (a transcoder: read `mlp_in`, write `mlp_out`), `fn` receives the activation at
    `source` of the same forward pass instead, and its output replaces `site`; `source` must come
    before `site` in the forward order. `fn` must return a tensor of the activation's shape; the
    model then runs to the end (use it for next-token loss / KL with a dictionary spliced in).
    """
    site = Site.parse(site)
    target_module = resolve_site_module(model, site)
    handles = []
    captured: dict[str, torch.Tensor] = {}

    def replace(activation: torch.Tensor) -> torch.Tensor:
        given = captured.pop("source") if source is not None else activation
        new = fn(given)
        if not torch.is_tensor(new) or new.shape != activation.shape:
            shape = tuple(new.shape) if torch.is_tensor(new) else type(new).__name__
            raise ValueError(f"replace_site: fn returned {shape} for {site}, expected {tuple(activation.shape)}.")
        return new.to(activation.dtype)

    try:
        if source is not None:
            source = Site.parse(source)
            if source.order >= site.order:
                raise ValueError(f"source {source} must come before {site} in the forward pass.")

            def keep(activation: torch.Tensor) -> None:
                captured["source"] = activation

            handles.append(_register(resolve_site_module(model, source), source, keep))
        handles.append(_register(target_module, site, replace))
        yield
    finally:
        for handle in handles:
            handle.remove()
