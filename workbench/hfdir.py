"""Plain Hugging Face model directories (no workbench manifest): integrity from the safetensors files themselves.

Every command takes such a directory as it takes a workbench checkpoint. Without a manifest there are no
hashes to check, so what *can* be checked is checked, from the files' own headers, before transformers sees
them (cheap: headers only, no tensor data is read):

- ``model.safetensors.index.json``, when present, parses, and every shard it names exists and holds the
  tensors the index puts in it;
- every shard's header parses and the file is exactly as long as the header says (8-byte length + header +
  the end of the last tensor's data): a truncated copy or an interrupted download is refused;
- a directory the workbench was writing (a ``.tmp-*`` save directory, or a checkpoint with ``trainer/`` state
  but no ``manifest.json``) is a save that did not finish, not a plain HF directory: refused.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

INDEX = "model.safetensors.index.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt or not a Llama model (public as
    ``workbench.models.CheckpointError``; defined here, the lowest module that reads model directories)."""


def shard_tensors(shard: Path) -> set[str]:
    """Tensor names of one safetensors file, after checking its header and length against each other."""
    size = shard.stat().st_size
    try:
        with open(shard, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100 << 20:
                raise ValueError(f"header length {n} beyond the file's {size} bytes")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{shard}: corrupt or truncated safetensors file ({exc}); copy or download it again"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shard}: corrupt or truncated safetensors file (header is not a JSON object)")
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(meta["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(
                f"{shard}: corrupt or truncated safetensors file (tensor {name} has no data_offsets)"
            ) from None
    expected = 8 + n + end
    if size != expected:
        raise CheckpointError(
            f"{shard}: {size} bytes but its header describes {expected} (truncated or still "
            "being written); copy or download it again"
        )
    return {k for k in header if k != "__metadata__"}


def check_plain(path: str | Path) -> None:
    """Refuse (CheckpointError, one line) a plain HF directory whose weights are incomplete or damaged."""
    path = Path(path)
    if path.name.startswith(".tmp-") or (path / "trainer").is_dir():
        raise CheckpointError(
            f"{path}: a workbench save that did not finish (no manifest.json, which is written "
            "last); use a complete checkpoint (workbench lists them with ckpt-*/manifest.json) "
            "or re-save it"
        )
    index = path / INDEX
    shards = sorted(path.glob("*.safetensors"))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
            raise CheckpointError(f"{index}: corrupt index (no weight_map); copy or download it again") from None
        wanted: dict[str, set[str]] = {}
        for tensor, shard in weight_map.items():
            wanted.setdefault(str(shard), set()).add(tensor)
        for shard, tensors in sorted(wanted.items()):
            f = path / shard
            if not f.is_file():
                raise CheckpointError(
                    f"{path}: shard {shard} named in {INDEX} is missing (an incomplete copy or download)"
                )
            missing = tensors - shard_tensors(f)
            if missing:
                raise CheckpointError(
                    f"{f}: lacks {len(missing)} tensor(s) {INDEX} puts there "
                    f"(e.g. {sorted(missing)[0]}); copy or download it again"
                )
        return
    if not shards:
        raise CheckpointError(f"{path}: no *.safetensors weights")
    for shard in shards:
        shard_tensors(shard)
