"""shapes: procedural images of a coloured shape on a coloured background, generated from a seed.

Each image has a caption, a class label (shape and colour) and five attribute labels
(shape, colour, size, position, background), plus random inpainting masks. Some
shape/colour combinations are held out of training (no class id, no caption, no image),
so that prompt adherence on unseen combinations measures generalisation.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from . import Attribute, Batch, random_box_masks, step_generator

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")
BACKGROUNDS = ("black", "white", "gray")
RGB = {
    "red": (0.9, 0.15, 0.15), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
    "black": (0.05, 0.05, 0.05), "white": (0.95, 0.95, 0.95), "gray": (0.5, 0.5, 0.5),
}
HELD_OUT = (("blue", "triangle"), ("yellow", "cross"))
RADIUS = {"small": 0.2, "large": 0.32}  # as a fraction of the image side
OFFSET = {"center": (0.0, 0.0), "top left": (-0.25, -0.25), "top right": (0.25, -0.25), "bottom left": (-0.25, 0.25), "bottom right": (0.25, 0.25)}
SUPERSAMPLE = 4

ATTRIBUTES = [
    Attribute("shape", SHAPES), Attribute("colour", COLOURS), Attribute("size", SIZES),
    Attribute("position", POSITIONS), Attribute("background", BACKGROUNDS),
]


def seen_combinations() -> list[tuple[str, str]]:
    return [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in HELD_OUT]


def caption(attrs: tuple[int, int, int, int, int], detail: int) -> tuple[str, list[bool]]:
    """A caption mentioning shape and colour, plus size/position/background as `detail` (bits) says.
    Returns the caption and which attributes it asks for."""
    shape, colour, size, pos, bg = (SHAPES[attrs[0]], COLOURS[attrs[1]], SIZES[attrs[2]], POSITIONS[attrs[3]], BACKGROUNDS[attrs[4]])
    words = ["a"]
    if detail & 1:
        words.append(size)
    words += [colour, shape]
    if detail & 2:
        words.append("in the center" if pos == "center" else f"at the {pos}")
    if detail & 4:
        words.append(f"on a {bg} background")
    return " ".join(words), [True, True, bool(detail & 1), bool(detail & 2), bool(detail & 4)]


def render(attrs: torch.Tensor, resolution: int, g: torch.Generator) -> torch.Tensor:
    """Images (B, 3, R, R) in [-1, 1] for attribute rows (shape, colour, size, position, background),
    anti-aliased by supersampling, with small jitter in position, size and colour."""
    n = attrs.shape[0]
    ss = resolution * SUPERSAMPLE
    coords = (torch.arange(ss) + 0.5) / ss - 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(n, 3, ss, ss)
    jitter = (torch.rand(n, 4, generator=g) - 0.5)
    for k in range(n):
        shape, colour, size, pos, bg = (int(v) for v in attrs[k])
        r = RADIUS[SIZES[size]] * (1 + 0.15 * jitter[k, 0].item())
        ox, oy = OFFSET[POSITIONS[pos]]
        dx = xx - (ox + 0.06 * jitter[k, 1].item())
        dy = yy - (oy + 0.06 * jitter[k, 2].item())
        kind = SHAPES[shape]
        if kind == "circle":
            inside = dx**2 + dy**2 <= r**2
        elif kind == "square":
            inside = torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r
        elif kind == "triangle":
            inside = (dy <= 0.8 * r) & (dx.abs() <= (dy + r) / 1.8)
        else:  # cross
            arm = r / 3
            inside = ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))
        fg = torch.tensor(RGB[COLOURS[colour]]) * (1 + 0.1 * jitter[k, 3].item())
        back = torch.tensor(RGB[BACKGROUNDS[bg]])
        images[k] = torch.where(inside[None], fg[:, None, None], back[:, None, None])
    images = F.avg_pool2d(images, SUPERSAMPLE)
    return (images.clamp(0, 1) * 2 - 1)


class ShapesDataset:
    kind = "shapes"
    channels = 3
    has_inpainting = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.resolution = cfg.resolution
        self.has_text = cfg.text
        self.combos = seen_combinations()
        self.class_names = [f"{c} {s}" for c, s in self.combos]
        self.num_classes = len(self.combos) if cfg.classes else 0
        self.attributes = ATTRIBUTES
        self.held_out_combos = list(HELD_OUT)

    def random_attrs(self, n: int, g: torch.Generator, combos: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, attrs) with shape and colour drawn from `combos`, the rest uniform."""
        pick = torch.randint(0, len(combos), (n,), generator=g)
        attrs = torch.stack([
            torch.tensor([SHAPES.index(combos[i][1]) for i in pick]),
            torch.tensor([COLOURS.index(combos[i][0]) for i in pick]),
            torch.randint(0, len(SIZES), (n,), generator=g),
            torch.randint(0, len(POSITIONS), (n,), generator=g),
            torch.randint(0, len(BACKGROUNDS), (n,), generator=g),
        ], dim=1)
        return pick, attrs

    def caption_vocabulary(self) -> list[str]:
        """Every caption a training batch can carry (1008): the seen shape/colour pairs, each
        size, position and background, and each choice of what the caption mentions."""
        pairs = [(SHAPES.index(s), COLOURS.index(c)) for c, s in self.combos]
        rest = itertools.product(range(len(SIZES)), range(len(POSITIONS)), range(len(BACKGROUNDS)), range(8))
        return sorted({caption((*pair, size, pos, bg), detail)[0] for pair, (size, pos, bg, detail) in itertools.product(pairs, rest)})

    def captions_for(self, attrs: torch.Tensor, g: torch.Generator, detail: int | None = None) -> tuple[list[str], torch.Tensor]:
        """Captions and the attributes they ask for (unasked set to -1)."""
        details = torch.randint(0, 8, (attrs.shape[0],), generator=g) if detail is None else torch.full((attrs.shape[0],), detail)
        captions, asked = [], attrs.clone()
        for k in range(attrs.shape[0]):
            text, mentioned = caption(tuple(int(v) for v in attrs[k]), int(details[k]))
            captions.append(text)
            for a, m in enumerate(mentioned):
                if not m:
                    asked[k, a] = -1
        return captions, asked

    def batch(self, size: int, seed_parts: tuple[int, ...]) -> Batch:
        g = step_generator(self.cfg.seed, *seed_parts)
        labels, attrs = self.random_attrs(size, g, self.combos)
        captions = self.captions_for(attrs, g)[0] if self.has_text else None
        x = render(attrs, self.resolution, g)
        masks = random_box_masks(size, self.resolution, g)
        return Batch(x=x, labels=labels if self.num_classes else None, captions=captions, attrs=attrs, masks=masks)
