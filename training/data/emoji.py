"""`python -m training data emoji --out FOLDER [--size 64] [--font PATH]`: an imagefolder of
colour emoji rendered from a font file, captioned from their Unicode names.

Every single-code-point emoji the font draws in colour (symbols, Unicode category So, outside
the regional-indicator letters and skin-tone modifiers) is rendered at the font's bitmap
size, cropped to its ink, centred on white and resized to `size` pixels. Captions: "an emoji
of red apple"; the bare name ("red apple") is kept as `name`. About 10% of the names are held
out (FOLDER/held_out/), chosen so that each of their words also appears in a training name
("green apple" out, "red apple" in): a measure of generalisation to new combinations of known
words. FOLDER/train/ is what `--data-dir` takes. Deterministic: the same font gives the same
folders. The default font is Debian's fonts-noto-color-emoji (SIL OFL).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

from .imagefolder import DataError

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
BITMAP_SIZE = 109  # Noto Color Emoji's one bitmap strike
HELD_OUT_SHARE = 0.10


def emoji_code_points(font_path: Path) -> list[int]:
    """Single code points the font maps that are emoji symbols (category So)."""
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(font_path), lazy=True).getBestCmap() or {}
    out = []
    for cp in sorted(cmap):
        if cp < 0x2000 or 0x1F1E6 <= cp <= 0x1F1FF or 0x1F3FB <= cp <= 0x1F3FF:
            continue  # ASCII and punctuation, regional-indicator letters, skin-tone modifiers
        ch = chr(cp)
        if unicodedata.category(ch) == "So" and unicodedata.name(ch, ""):
            out.append(cp)
    return out


def render(font, cp: int, size: int):
    """The emoji of `cp` on white, size x size RGB; None where the font draws nothing."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (BITMAP_SIZE * 2, BITMAP_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((BITMAP_SIZE // 2, BITMAP_SIZE // 2), chr(cp), font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    return square.convert("RGB").resize((size, size), Image.LANCZOS)


def caption_name(cp: int) -> str:
    return unicodedata.name(chr(cp)).lower()


def held_out_names(names: list[str], share: float = HELD_OUT_SHARE) -> set[str]:
    """About `share` of the names, each of whose words stays in some training name."""
    order = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    want = round(share * len(names))
    counts: dict[str, int] = {}
    for n in names:
        for w in set(n.split()):
            counts[w] = counts.get(w, 0) + 1
    out: set[str] = set()
    for n in order:
        if len(out) >= want:
            break
        words = set(n.split())
        if len(words) > 1 and all(counts[w] > 1 for w in words):  # every word is left elsewhere
            out.add(n)
            for w in words:
                counts[w] -= 1
    return out


def build(out: Path, size: int = 64, font_path: Path | None = None) -> dict:
    """Write out/train and out/held_out (imagefolders); returns counts."""
    from PIL import ImageFont

    font_path = Path(font_path or DEFAULT_FONT)
    if not font_path.is_file():
        raise DataError(f"emoji: no font at {font_path}; install Debian's fonts-noto-color-emoji or pass --font PATH (a colour emoji font)")
    if not 8 <= size <= 512:
        raise DataError(f"emoji: --size must lie in [8, 512], got {size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"emoji: --out {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"emoji: {out} exists and is not empty; choose another --out")
    try:
        font = ImageFont.truetype(str(font_path), BITMAP_SIZE)
    except OSError as exc:
        raise DataError(f"emoji: {font_path} is not a font Pillow can read at size {BITMAP_SIZE} ({exc})") from None
    rendered = []
    try:
        points = emoji_code_points(font_path)
    except Exception as exc:  # noqa: BLE001 - fontTools has its own kinds (TTLibError: a font collection, a damaged table)
        raise DataError(f"emoji: {font_path} is not a single font fontTools can read ({type(exc).__name__}: {exc}); pass a .ttf") from None
    for cp in points:
        image = render(font, cp, size)
        if image is not None:
            rendered.append((cp, caption_name(cp), image))
    if not rendered:
        raise DataError(f"emoji: {font_path} drew no colour emoji")
    held = held_out_names([n for _, n, _ in rendered])
    counts = {"train": 0, "held_out": 0}
    lines: dict[str, list[str]] = {"train": [], "held_out": []}
    for cp, name, image in rendered:
        split = "held_out" if name in held else "train"
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        file_name = f"u{cp:05x}.png"
        image.save(folder / file_name)
        lines[split].append(json.dumps({"file_name": file_name, "text": f"an emoji of {name}", "name": name}))
        counts[split] += 1
    for split, rows in lines.items():
        (out / split / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return counts
