"""SyntheticShapes: a built-in, procedurally generated class-conditional image dataset.

Every image is a textured shape on a textured background. A class fixes

* a shape (coarse structure), drawn from a soft-edged signed distance field,
* a layout: the base position and size of the shape,
* a palette: foreground and background colours of distinct hues,
* a texture (fine structure) inside the shape, plus a weaker second texture on the background.

Class ``c`` uses ``SHAPES[c % 10]``, ``PALETTES[c % 12]``, ``TEXTURES[c % 8]`` and
``LAYOUTS[c % 3]``. Shape, palette and texture cycle with periods 10, 12 and 8, so any two of
the first ``lcm(10, 12, 8) = 120`` classes differ in at least one of them; the first 10 classes
all have different shapes, and classes ``c`` and ``c + 10`` (same shape) differ in colour and
texture. Per sample, the position, size, colours and texture phases are jittered. The default
jitter (position +-0.06, size +-0.15) keeps each class near a fixed template; wider jitter (up to
+-0.25 and +-0.35) gives a dataset whose layout varies from image to image, so that a coarse
token level has something of its own to carry (StraIT's claim, §3.1).

Images are generated once at construction from a single ``torch.Generator`` and stored as
uint8. Rendering uses only exactly rounded float operations (no sin/cos/exp), so the same
arguments give bitwise identical images on every machine.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from stratagen.data.sampling import Key, sample_index

# Signed distance (negative inside) of each shape, in units of the shape radius;
# x points right and y points down, both centred on the shape.
_SHAPE_SDF: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "disc": lambda x, y: (x * x + y * y).sqrt() - 1.0,
    "square": lambda x, y: torch.maximum(x.abs(), y.abs()) - 0.85,
    "triangle": lambda x, y: torch.maximum(
        (1.8 * x.abs() - (y + 1.0)) / math.sqrt(1.8**2 + 1.0), y - 0.8
    ),
    "ring": lambda x, y: ((x * x + y * y).sqrt() - 0.72).abs() - 0.28,
    "cross": lambda x, y: torch.minimum(
        torch.maximum(x.abs() - 1.0, y.abs() - 0.32), torch.maximum(x.abs() - 0.32, y.abs() - 1.0)
    ),
    "bar": lambda x, y: torch.maximum(x.abs() - 1.1, y.abs() - 0.42),
    "diamond": lambda x, y: (x.abs() + y.abs() - 1.1) / math.sqrt(2.0),
    "twins": lambda x, y: torch.minimum(
        ((x - 0.6) ** 2 + y * y).sqrt() - 0.52, ((x + 0.6) ** 2 + y * y).sqrt() - 0.52
    ),
    "frame": lambda x, y: (torch.maximum(x.abs(), y.abs()) - 0.75).abs() - 0.2,
    "halfdisc": lambda x, y: torch.maximum((x * x + (y - 0.4) ** 2).sqrt() - 1.0, y - 0.4),
}
SHAPES: tuple[str, ...] = tuple(_SHAPE_SDF)

# (name, foreground RGB, background RGB), colours in [0, 1].
PALETTES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("red", (0.90, 0.15, 0.15), (0.05, 0.28, 0.32)),
    ("orange", (0.98, 0.55, 0.10), (0.08, 0.10, 0.38)),
    ("yellow", (0.95, 0.90, 0.15), (0.32, 0.10, 0.38)),
    ("green", (0.20, 0.80, 0.25), (0.38, 0.08, 0.12)),
    ("cyan", (0.15, 0.85, 0.90), (0.32, 0.18, 0.05)),
    ("blue", (0.20, 0.35, 0.95), (0.85, 0.80, 0.55)),
    ("purple", (0.62, 0.22, 0.90), (0.08, 0.32, 0.10)),
    ("pink", (0.98, 0.55, 0.78), (0.12, 0.18, 0.30)),
    ("white", (0.95, 0.95, 0.95), (0.42, 0.05, 0.05)),
    ("lime", (0.65, 0.95, 0.20), (0.05, 0.05, 0.30)),
    ("magenta", (0.90, 0.15, 0.70), (0.05, 0.32, 0.30)),
    ("navy", (0.10, 0.12, 0.45), (0.95, 0.70, 0.45)),
)

# (name, kind, frequency in cycles per image width, stripe direction (du, dv)).
TEXTURES: tuple[tuple[str, str, float, tuple[int, int]], ...] = (
    ("hstripes", "stripes", 8.0, (0, 1)),
    ("checker", "checker", 6.0, (0, 0)),
    ("vstripes", "stripes", 8.0, (1, 0)),
    ("dots", "dots", 7.0, (0, 0)),
    ("dstripes", "stripes", 5.0, (1, 1)),
    ("noise", "noise", 0.0, (0, 0)),
    ("grid", "grid", 6.0, (0, 0)),
    ("rings", "rings", 9.0, (0, 0)),
)

# (centre x, centre y, radius) as fractions of the image size.
LAYOUTS: tuple[tuple[float, float, float], ...] = (
    (0.50, 0.50, 0.31),
    (0.42, 0.43, 0.27),
    (0.58, 0.57, 0.28),
)

# Words of the class captions (:func:`class_caption`), aligned with PALETTES' backgrounds,
# TEXTURES and LAYOUTS.
GROUNDS: tuple[str, ...] = ("teal", "navy", "plum", "maroon", "brown", "beige", "forest", "slate", "maroon",
                            "navy", "teal", "peach")
TEXTURE_WORDS: tuple[str, ...] = ("horizontal stripes", "checks", "vertical stripes", "dots", "diagonal stripes",
                                  "noise", "a grid", "rings")
PLACES: tuple[str, ...] = ("in the centre", "at the top left", "at the bottom right")

MAX_CLASSES = math.lcm(len(SHAPES), len(PALETTES), len(TEXTURES))  # 120
POSITION_JITTER = 0.06  # default: +- fraction of the image size
SIZE_JITTER = 0.15  # default: radius scaled by a factor in [1 - j, 1 + j]
MAX_POSITION_JITTER = 0.25
MAX_SIZE_JITTER = 0.35
COLOUR_JITTER = 0.06  # +- per RGB channel
FG_TEXTURE_AMPLITUDE = 0.22
BG_TEXTURE_AMPLITUDE = 0.08
_CHUNK = 256  # images rendered per vectorised step, bounds peak memory


def _tri(s: Tensor) -> Tensor:
    """Triangle wave with period 1 and range [-1, 1]; 1 at integers."""
    return 4.0 * (s - s.floor() - 0.5).abs() - 1.0


def _frac(s: Tensor) -> Tensor:
    return s - s.floor()


def _texture(
    kind: str,
    freq: float,
    direction: tuple[int, int],
    u: Tensor,
    v: Tensor,
    phase: Tensor,
    centre: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """One texture for a group of images, values in [-1, 1].

    u: [1, 1, R] and v: [1, R, 1] pixel-centre coordinates in [0, 1]; phase: [n, 2] in [0, 1);
    centre: [n, 2] shape centres (for rings). Returns [n, R, R].
    """
    p, q = phase[:, 0, None, None], phase[:, 1, None, None]
    if kind == "stripes":
        du, dv = direction
        return _tri((du * u + dv * v) * freq + p)
    if kind == "checker":
        return _tri(u * freq + p) * _tri(v * freq + q)
    if kind == "dots":
        d2 = (_frac(u * freq + p) - 0.5) ** 2 + (_frac(v * freq + q) - 0.5) ** 2
        return (1.0 - 16.0 * d2).clamp(-1.0, 1.0)
    if kind == "grid":
        m = torch.maximum(_tri(u * freq + p), _tri(v * freq + q))
        return (4.0 * m - 3.0).clamp(-1.0, 1.0)
    if kind == "rings":
        cx, cy = centre[:, 0, None, None], centre[:, 1, None, None]
        return _tri(((u - cx) ** 2 + (v - cy) ** 2).sqrt() * freq + p)
    if kind == "noise":
        res = u.shape[-1]
        return torch.rand(phase.shape[0], res, res, generator=generator) * 2.0 - 1.0
    raise ValueError(f"unknown texture kind {kind!r}")


def _class_name(label: int) -> str:
    """Palette, shape and texture of a class, e.g. "red-disc-hstripes"."""
    palette = PALETTES[label % len(PALETTES)][0]
    return f"{palette}-{SHAPES[label % len(SHAPES)]}-{TEXTURES[label % len(TEXTURES)][0]}"


def class_caption(label: int) -> str:
    """What class ``label`` draws, in words (captions for text-to-image priors, STAR), e.g.
    "a red disc with horizontal stripes in the centre on a teal ground"."""
    palette = label % len(PALETTES)
    colour = PALETTES[palette][0]
    article = "an" if colour[0] in "aeiou" else "a"
    return (f"{article} {colour} {SHAPES[label % len(SHAPES)]} with {TEXTURE_WORDS[label % len(TEXTURES)]} "
            f"{PLACES[label % len(LAYOUTS)]} on a {GROUNDS[palette]} ground")


def _grouped(ids: Tensor, fn: Callable[[int, Tensor], Tensor], res: int) -> Tensor:
    """Evaluate fn(k, idx) -> [len(idx), R, R] for each group of equal ids; returns [n, R, R]."""
    out = torch.empty(ids.shape[0], res, res)
    for k in ids.unique().tolist():
        idx = (ids == k).nonzero().squeeze(1)
        out[idx] = fn(k, idx)
    return out


class SyntheticShapes(Dataset):
    """Class-conditional textured shapes, deterministic from ``seed``.

    Sample ``i`` has label ``i % num_classes``. ``__getitem__`` returns
    (image float32 [3, resolution, resolution] in [-1, 1], label int).
    """

    def __init__(
        self,
        num_classes: int = 10,
        resolution: int = 64,
        size: int = 2000,
        seed: int = 0,
        position_jitter: float = POSITION_JITTER,
        size_jitter: float = SIZE_JITTER,
    ) -> None:
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
        if not 0 <= position_jitter <= MAX_POSITION_JITTER:
            raise ValueError(f"position_jitter must be in [0, {MAX_POSITION_JITTER}], got {position_jitter}")
        if not 0 <= size_jitter <= MAX_SIZE_JITTER:
            raise ValueError(f"size_jitter must be in [0, {MAX_SIZE_JITTER}], got {size_jitter}")
        self.num_classes = num_classes
        self.position_jitter = position_jitter
        self.size_jitter = size_jitter
        self.resolution = resolution
        self.seed = seed
        self.class_names = [_class_name(c) for c in range(num_classes)]
        self.labels = torch.arange(size) % num_classes
        generator = torch.Generator().manual_seed(seed)
        # One draw for all per-sample parameters: 2 position, 1 size, 6 colour, 4 phase.
        params = torch.rand(size, 13, generator=generator)
        self.images = torch.cat(
            [
                self._render(self.labels[i : i + _CHUNK], params[i : i + _CHUNK], generator)
                for i in range(0, size, _CHUNK)
            ]
        )  # uint8 [size, 3, R, R]

    def _render(self, labels: Tensor, params: Tensor, generator: torch.Generator) -> Tensor:
        """labels: [n], params: [n, 13] uniform in [0, 1). Returns uint8 [n, 3, R, R]."""
        res = self.resolution
        coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res
        u, v = coords.view(1, 1, res), coords.view(1, res, 1)

        layout = torch.tensor(LAYOUTS)[labels % len(LAYOUTS)]
        centre = layout[:, :2] + (params[:, 0:2] * 2.0 - 1.0) * self.position_jitter
        radius = layout[:, 2] * (1.0 + (params[:, 2] * 2.0 - 1.0) * self.size_jitter)
        x = (u - centre[:, 0, None, None]) / radius[:, None, None]
        y = (v - centre[:, 1, None, None]) / radius[:, None, None]
        sdf = _grouped(
            labels % len(SHAPES), lambda k, idx: _SHAPE_SDF[SHAPES[k]](x[idx], y[idx]), res
        )
        # Soft edge one pixel wide: convert the distance from radius units to pixels.
        mask = (0.5 - sdf * (radius * res)[:, None, None]).clamp(0.0, 1.0)

        def textured(k_offset: int, phase: Tensor) -> Tensor:
            ids = (labels + k_offset) % len(TEXTURES)

            def fn(k: int, idx: Tensor) -> Tensor:
                _, kind, freq, direction = TEXTURES[k]
                return _texture(kind, freq, direction, u, v, phase[idx], centre[idx], generator)

            return _grouped(ids, fn, res)

        palette = labels % len(PALETTES)
        fg_rgb = torch.tensor([p[1] for p in PALETTES])[palette]
        bg_rgb = torch.tensor([p[2] for p in PALETTES])[palette]
        fg_rgb = fg_rgb + (params[:, 3:6] * 2.0 - 1.0) * COLOUR_JITTER
        bg_rgb = bg_rgb + (params[:, 6:9] * 2.0 - 1.0) * COLOUR_JITTER
        # The background texture is offset by 3 so that it differs from the foreground one.
        fg = fg_rgb[:, :, None, None] + FG_TEXTURE_AMPLITUDE * textured(0, params[:, 9:11])[:, None]
        bg_texture = textured(3, params[:, 11:13])
        bg = bg_rgb[:, :, None, None] + BG_TEXTURE_AMPLITUDE * bg_texture[:, None]
        image = bg + (fg - bg) * mask[:, None]
        return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key: int | Key) -> tuple[Tensor, int]:
        """Returns (image float32 [3, R, R] in [-1, 1], label); the same image in every epoch
        (generated data is not augmented)."""
        index = sample_index(key)
        return self.images[index].float() / 127.5 - 1.0, int(self.labels[index])
