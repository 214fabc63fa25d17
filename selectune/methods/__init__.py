"""The method registry: the only list of methods. Adding a method = one module + one line below.

A method is a plain function ``select(model, **options) -> list[str]`` over ``named_parameters``
plus a dataclass of options (one docstring per field, shown by ``selectune methods``).
Element-mask methods return a ``MaskedResult`` (whole tensors + bool masks) instead; those fitted on data
set ``needs_data=True`` and are called ``select(model, batches=..., **options)`` (``sparse.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from selectune.methods.spec import MethodSpec


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if not spec.name.isidentifier():
        raise ValueError(f"method name {spec.name!r} must be an identifier")
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if not dataclasses.is_dataclass(spec.options):
        raise TypeError(f"method {spec.name!r}: options must be a dataclass type")
    example_name, example_options = parse_method(spec.example_text)
    if example_name != spec.name:
        raise ValueError(f"method {spec.name!r}: its example {spec.example!r} names another method")
    spec.resolve_options(example_options)  # the example (or the defaults) must be valid options
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))} (see `selectune methods`)") from None


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"bitfit:roles=query+mlp_in,include_key_bias=true"`` -> ("bitfit", {...}). Used by the CLI.

    Commas separate options, so a value cannot hold one: list values take ``+`` (``roles=query+mlp_in``,
    ``ranges=0-1+5``) and regexes take ``|`` alternation (``include=.*\\.bias|classifier\\..*``).
    The first ``=`` ends the key, so a value may contain ``=``.
    """
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method option {item!r} in {text!r} must look like key=value. Commas separate options, so write "
                             "lists with + (roles=query+mlp_in, ranges=0-1+5) and regex alternatives with | (include=a|b)")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return name.strip(), options


def _parse_value(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


from selectune.methods import bitfit, fish, full, head, layernorm, layers, lt_sft, pafi, pattern, random_mask  # noqa: E402

register_method(bitfit.SPEC)
register_method(full.SPEC)
register_method(head.SPEC)
register_method(layernorm.SPEC)
register_method(layers.SPEC)
register_method(pattern.SPEC)
register_method(random_mask.SPEC)
register_method(pafi.SPEC)
register_method(fish.SPEC)
register_method(lt_sft.SPEC)
