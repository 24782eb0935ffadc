"""``stratagen edit``: inpaint, outpaint, re-class or domain-transfer one image file."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from stratagen import api
from stratagen.engine.editing import box_mask, domain_transfer, inpaint, load_image, load_mask, save_edit
from stratagen.registry import StratagenError

from .verbs import verb


def add_parser(sub: argparse._SubParsersAction, add_set: Callable[[argparse.ArgumentParser], None]) -> None:
    """Declare ``stratagen edit``; :func:`run_edit` handles it."""
    p = sub.add_parser(
        "edit", help="inpaint, outpaint, re-class or domain-transfer an image with a trained run",
        description="Regenerate part of an image (--mode inpaint: white pixels of --mask, or the --box; "
                    "--outside for outpainting) under --class, keeping the rest exactly; or transfer it to --class "
                    "(--mode transfer, StraIT §4.4): regenerate the top-level tokens of the --mask/--box region and "
                    "re-predict every bottom-level token (--bottom-only: keep every top token). The image is resized and "
                    "centre-cropped to the run's resolution. Writes the result and <out>_strip.png "
                    "(input | mask | result).")
    p.add_argument("source", metavar="RUN", help="run directory or config")
    p.add_argument("--image", metavar="PATH", required=True, help="input image file")
    region = p.add_mutually_exclusive_group()
    region.add_argument("--mask", metavar="PATH",
                        help="mask image, white = regenerate (resized and cropped like --image)")
    region.add_argument("--box", metavar="TOP,LEFT,H,W", help="a box, in pixels of the resized image")
    p.add_argument("--outside", action="store_true", help="regenerate outside the --box (outpainting)")
    p.add_argument("--class", dest="label", metavar="CLASS", type=int, required=True,
                   help="class of the edited image")
    p.add_argument("--mode", choices=["inpaint", "transfer"], default="inpaint",
                   help="regenerate the masked region (default), or transfer the image to --class")
    p.add_argument("--bottom-only", action="store_true",
                   help="--mode transfer: keep every top-level token, re-predict the bottom level only")
    p.add_argument("--keep-children", action="store_true",
                   help="--mode inpaint: keep the bottom tokens under a regenerated top token where their own "
                        "cell is not masked (by default they are regenerated with it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="PATH", default=None,
                   help="output PNG, or a folder for <image>_<mode>.png (default: <run>/edits/)")
    add_set(p)
    p._negative_number_matcher = re.compile(r"^-\d")  # `--box -2,0,4,4` reaches the box rule, not "expected one argument"


@verb("edit")
def run_edit(args: argparse.Namespace) -> int:
    """``stratagen edit``: load the run and the image, edit, write the result and its strip."""

    if args.outside and args.box is None:
        raise StratagenError("--outside needs --box")
    if args.keep_children and args.mode != "inpaint":
        raise StratagenError("--keep-children goes with --mode inpaint")
    if args.bottom_only and (args.mode != "transfer" or args.mask is not None or args.box is not None):
        raise StratagenError("--bottom-only goes with --mode transfer and no --mask/--box")
    if not args.bottom_only and args.mask is None and args.box is None:
        raise StratagenError(f"--mode {args.mode} needs --mask or --box (the region to edit)"
                             + ("; or --bottom-only" if args.mode == "transfer" else ""))
    box = _parse_box(args.box) if args.box is not None else None
    if args.mask is not None:
        _check_aspect(args.image, args.mask)
    pipe = api.Pipeline.from_run(args.source, args.set)
    R = pipe.model.resolution
    image = load_image(args.image, R)
    mask = None
    if args.mask is not None:
        mask = load_mask(args.mask, R)
    elif box is not None:
        mask = box_mask(1, R, R, *box, inside=not args.outside)
    if args.mode == "inpaint":
        result = inpaint(pipe, image, mask, [args.label], args.seed, keep_children=args.keep_children)
    else:
        result = domain_transfer(pipe, image, [args.label], mask, args.seed, bottom_only=args.bottom_only)
    name = f"{Path(args.image).stem}_{args.mode}.png"
    out = args.out or os.path.join(pipe.run.local_path("edits"), name)
    if os.path.isdir(out):
        out = os.path.join(out, name)
    shown = mask if mask is not None else torch.zeros(1, R, R, dtype=torch.bool)
    strip = save_edit(image, shown, result.images, out)
    print(f"edited: {out}\nstrip: {strip}")
    return 0


def _parse_box(text: str) -> tuple[int, int, int, int]:
    rule = f"--box must be TOP,LEFT,H,W (four integers: TOP, LEFT >= 0; H, W >= 1), got {text!r}"
    try:
        top, left, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise StratagenError(rule) from None
    if min(top, left) < 0 or min(height, width) < 1:
        raise StratagenError(rule)
    return top, left, height, width


def _check_aspect(image: str, mask: str) -> None:
    """Refuse a mask whose aspect ratio is not the image's (both are resized and centre-cropped
    alike, so the mask would cover another region than drawn). Unreadable files are left to the
    loaders, which name them."""
    try:
        with Image.open(image) as a, Image.open(mask) as b:
            (iw, ih), (mw, mh) = a.size, b.size
    except (OSError, ValueError):
        return
    if abs(mw * ih - mh * iw) > 0.01 * iw * mh:
        raise StratagenError(f"--mask {mask}: {mw}x{mh} has another aspect ratio than --image {image} ({iw}x{ih}); "
                             f"give a mask of the image's shape")
