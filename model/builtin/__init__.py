"""Built-in model families shipped with fewstep (fp16 safetensors), found without any configuration."""

from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent
DEFAULT_FAMILY = "shapes"


def builtin_families() -> dict[str, Path]:
    """Name -> directory of every built-in family present in this installation."""
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "family.json").is_file()}
