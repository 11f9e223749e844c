"""Capture and hook names, in one place (the idea of TransformerLens' ``utils.get_act_name``).

Both backends return captures under TransformerLens-style names, and the TransformerLens backend hooks the
bridge at its own hook points; every such name is built by :func:`act_name` and read back by
:func:`parse_act_name`. Known kinds (``i`` a layer index, or ``*`` for a glob over layers):

- ``logits``                         -> ``logits`` (no layer)
- ``resid_post``                     -> ``blocks.{i}.hook_resid_post`` (bridge point ``blocks.{i}.hook_out``)
- ``attn_out``                       -> ``blocks.{i}.hook_attn_out`` (bridge point ``blocks.{i}.attn.hook_out``)
- ``q`` / ``k``                      -> ``blocks.{i}.attn.hook_q`` / ``hook_k`` (pre-RoPE)
- ``rot_q`` / ``rot_k``              -> ``blocks.{i}.attn.hook_rot_q`` / ``hook_rot_k`` (post-RoPE)
- ``pattern``                        -> ``blocks.{i}.attn.hook_pattern``
- ``pattern_js``                     -> ``blocks.{i}.attn.pattern_js`` (a statistic of the pattern, read at
  ``blocks.{i}.attn.hook_pattern``)
"""

from __future__ import annotations

# kind -> (capture name, the TransformerBridge hook point it is read at), {i} the layer
_NAMES: dict[str, tuple[str, str]] = {
    "resid_post": ("blocks.{i}.hook_resid_post", "blocks.{i}.hook_out"),
    "attn_out": ("blocks.{i}.hook_attn_out", "blocks.{i}.attn.hook_out"),
    "q": ("blocks.{i}.attn.hook_q", "blocks.{i}.attn.hook_q"),
    "k": ("blocks.{i}.attn.hook_k", "blocks.{i}.attn.hook_k"),
    "rot_q": ("blocks.{i}.attn.hook_rot_q", "blocks.{i}.attn.hook_rot_q"),
    "rot_k": ("blocks.{i}.attn.hook_rot_k", "blocks.{i}.attn.hook_rot_k"),
    "pattern": ("blocks.{i}.attn.hook_pattern", "blocks.{i}.attn.hook_pattern"),
    "pattern_js": ("blocks.{i}.attn.pattern_js", "blocks.{i}.attn.hook_pattern"),
}
KINDS = ("logits", *_NAMES)
_BY_SUFFIX = {template.split("}", 1)[1]: kind for kind, (template, _) in _NAMES.items()}


def act_name(kind: str, layer: int | str | None = None, *, bridge: bool = False) -> str:
    """The capture name of ``kind`` at ``layer`` (an index, or ``"*"`` for a glob pattern); with ``bridge``,
    the TransformerBridge hook point that capture is read at. Raises ``ValueError`` for an unknown kind."""
    if kind == "logits":
        if layer is not None:
            raise ValueError(f"activation 'logits' has no layer (got layer={layer!r})")
        return "logits"
    if kind not in _NAMES:
        raise ValueError(f"unknown activation {kind!r}; known: {', '.join(KINDS)}")
    if layer is None:
        raise ValueError(f"activation {kind!r} needs a layer (an index or '*')")
    return _NAMES[kind][bridge].format(i=layer)


def parse_act_name(name: str) -> tuple[str, int | None]:
    """``(kind, layer)`` of a capture name built by :func:`act_name` (layer None for ``logits``)."""
    if name == "logits":
        return "logits", None
    head, _, rest = name.partition(".")
    layer, dot, suffix = rest.partition(".")
    kind = _BY_SUFFIX.get(dot + suffix)
    if head != "blocks" or not layer.isdigit() or kind is None:
        raise ValueError(f"not a capture name: {name!r} (known kinds: {', '.join(KINDS)})")
    return kind, int(layer)
