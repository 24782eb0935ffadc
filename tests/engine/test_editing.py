"""Editing (StraIT §4.4, Appendix A): kept tokens and pixels are exactly the input's, masked
ones are regenerated, domain transfer keeps the top and re-predicts the bottom, mistakes are named."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from stratagen import api
from stratagen.cli import edit as edit_verb
from stratagen.cli.verbs import HANDLERS
from stratagen.engine import editing
from stratagen.plugins.maskgit import MaskGITSampler
from stratagen.registry import StageSettings
from stratagen.registry import StratagenError, split_stream_key
from tinyconfigs import tiny_config, write_config

R = 16  # tiny runs: 16 px; strait top 4x4, bottom 8x8; cascade f16 4x4, f8 8x8


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, api.Pipeline]:
    root = tmp_path_factory.mktemp("editing")
    loaded = {}
    for variant in ("strait", "strait-c", "cascade"):
        config = tiny_config(root / variant, variant.removesuffix("-c"))
        if variant == "strait-c":  # VQGAN2-C, the paper's concat fusion
            config["tokenizers"]["vq"]["model"]["name"] = "vqgan2-c"
        for component in (*config["tokenizers"].values(), *config["priors"].values()):
            component["train"].update(steps=2, checkpoint_every=2)  # editing needs weights, not quality
        api.train(api.load(str(write_config(root / f"{variant}.yaml", config))))
        loaded[variant] = api.Pipeline.from_run(str(root / variant))
    return loaded


def noise_images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, R, R, generator=torch.Generator().manual_seed(0)) * 2 - 1


def encoded(pipe: api.Pipeline, images: torch.Tensor, stream: str) -> torch.Tensor:
    return pipe.model.tokenizer_of(stream).encode(images)[split_stream_key(stream)[1]]


def test_project_mask_marks_exactly_the_cells_holding_masked_pixels():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 5, 2] = True
    at4, at2 = torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)
    at4[0, 2, 1] = True
    at2[0, 1, 0] = True
    assert torch.equal(editing.project_mask(mask, 4, 4), at4)
    assert torch.equal(editing.project_mask(mask, 2, 2), at2)
    assert torch.equal(editing.project_mask(mask, 8, 8), mask)
    # 3 cells over 8 pixels span 0-2, 2-5 and 5-7 (borders shared): pixel (5, 2) is in two cells each way
    at3 = torch.zeros(1, 3, 3, dtype=torch.bool)
    at3[0, 1:, :2] = True
    assert torch.equal(editing.project_mask(mask, 3, 3), at3)


def test_box_mask_inside_and_outside():
    inside = editing.box_mask(2, 6, 8, top=1, left=2, box_h=3, box_w=4, inside=True)
    assert inside.shape == (2, 6, 8) and inside.sum() == 2 * 12 and inside[:, 1:4, 2:6].all()
    assert torch.equal(editing.box_mask(2, 6, 8, 1, 2, 3, 4, inside=False), ~inside)
    with pytest.raises(StratagenError, match="does not fit"):
        editing.box_mask(1, 6, 8, top=4, left=0, box_h=3, box_w=1)


def test_children_are_the_finer_tokens_under_each_coarse_token():
    top = torch.tensor([[[True, False], [False, False]]])
    bottom = editing.children(top, 4, 4)
    assert bottom[0, :2, :2].all() and bottom.sum() == 4
    # VAR's scales 2 -> 3: coarse cell [0, 1/2) overlaps fine cells [0, 1/3) and [1/3, 2/3)
    assert editing.children(top, 3, 3)[0].tolist() == [[True, True, False], [True, True, False],
                                                        [False, False, False]]
    # a coarse cell with a border inside a fine cell shares that cell with its neighbour
    right = torch.tensor([[[False, True], [False, False]]])
    assert editing.children(right, 3, 3)[0].tolist() == [[False, True, True], [False, True, True],
                                                          [False, False, False]]


def expected_regenerated(mask: torch.Tensor, top_shape, bottom_shape, keep_children: bool):
    """The top level's projected mask; the bottom's projected mask and the 2x2 children of every
    regenerated top token (computed here with index arithmetic, not with ``editing.children``)."""
    top = editing.project_mask(mask, *top_shape)
    bottom = editing.project_mask(mask, *bottom_shape)
    if not keep_children:
        rows = torch.arange(bottom_shape[0]) * top_shape[0] // bottom_shape[0]
        cols = torch.arange(bottom_shape[1]) * top_shape[1] // bottom_shape[1]
        bottom = bottom | top[:, rows][:, :, cols]
    return top, bottom


@pytest.mark.parametrize("variant, inside, keep_children", [
    ("strait", True, False), ("strait", False, False), ("strait-c", True, False), ("strait", True, True),
    ("strait-c", True, True), ("cascade", True, False)])
def test_inpaint_and_outpaint_keep_the_unmasked_tokens_and_pixels(pipes, variant, inside, keep_children):
    pipe, images = pipes[variant], noise_images()
    mask = editing.box_mask(2, R, R, top=4, left=4, box_h=8, box_w=6, inside=inside)
    result = editing.inpaint(pipe, images, mask, classes=[1, 3], seed=1, keep_children=keep_children)
    streams = ["f16.tokens", "f8.tokens"] if variant == "cascade" else ["vq.top", "vq.bottom"]
    assert set(result.tokens) == set(result.token_masks) == set(streams)
    if variant == "cascade":  # two tokenizers: no parent and children, each level its own projection
        expected = [editing.project_mask(mask, *result.tokens[s].shape[1:]) for s in streams]
    else:
        expected = expected_regenerated(mask, result.tokens[streams[0]].shape[1:],
                                        result.tokens[streams[1]].shape[1:], keep_children)
    for stream, want in zip(streams, expected):
        tokens = result.tokens[stream]
        source, regenerated = encoded(pipe, images, stream), result.token_masks[stream]
        assert torch.equal(regenerated, want), stream
        assert torch.equal(tokens[~regenerated], source[~regenerated]), stream
        assert (tokens != source)[regenerated].any(), stream
    if variant != "cascade" and inside:  # the box's edge cuts top cells: children beyond the projection
        projected = editing.project_mask(mask, *result.tokens["vq.bottom"].shape[1:])
        assert torch.equal(result.token_masks["vq.bottom"], projected) == keep_children
    pixels = mask[:, None].expand_as(images)
    assert torch.equal(result.images[~pixels], images[~pixels])
    assert torch.equal(result.images[pixels], result.generated[pixels])


def test_same_seed_same_edit(pipes):
    pipe, images = pipes["strait"], noise_images()
    mask = editing.box_mask(2, R, R, top=4, left=4, box_h=8, box_w=6, inside=True)
    a, b = (editing.inpaint(pipe, images, mask, classes=[1, 3], seed=1) for _ in range(2))
    assert torch.equal(a.images, b.images) and all(torch.equal(a.tokens[s], b.tokens[s]) for s in a.tokens)


@pytest.mark.parametrize("variant", ["strait", "cascade"])
def test_domain_transfer_regenerates_the_regions_top_and_repredicts_the_bottom(pipes, variant):
    pipe, images = pipes[variant], noise_images()
    top, bottom = [stage.stream for stage in pipe.sampler().stages(pipe.model)]
    result = editing.domain_transfer(pipe, images, new_classes=[2, 0], seed=3, bottom_only=True)
    assert result.images is result.generated
    assert torch.equal(result.tokens[top], encoded(pipe, images, top))
    assert not result.token_masks[top].any() and result.token_masks[bottom].all()
    assert (result.tokens[bottom] != encoded(pipe, images, bottom)).any()

    top_mask = editing.box_mask(2, R, R, top=0, left=0, box_h=8, box_w=8, inside=True)
    masked = editing.domain_transfer(pipe, images, new_classes=[2, 0], region=top_mask, seed=3)
    regenerated = editing.project_mask(top_mask, *masked.tokens[top].shape[1:])
    assert torch.equal(masked.token_masks[top], regenerated) and masked.token_masks[bottom].all()
    source = encoded(pipe, images, top)
    assert torch.equal(masked.tokens[top][~regenerated], source[~regenerated])


def test_mistakes_raise_one_clear_error(pipes):
    pipe, images = pipes["strait"], noise_images()
    mask = editing.box_mask(2, R, R, 4, 4, 8, 8, inside=True)
    single_stage = MaskGITSampler(StageSettings(steps=2), stream="vq.top")
    cases = [
        (lambda: editing.inpaint(pipe, images, mask[:, :8], [0, 1]), "mask must be a bool tensor [2, 16, 16]"),
        (lambda: editing.inpaint(pipe, images, mask.float(), [0, 1]), "mask must be a bool tensor"),
        (lambda: editing.inpaint(pipe, images, mask, [0]), "2 images, 1 classes"),
        (lambda: editing.inpaint(pipe, torch.zeros(2, 3, 32, 32), mask, [0, 1]), "run's resolution is 16x16"),
        (lambda: editing.inpaint(pipe, images * 127.5 + 127.5, mask, [0, 1]), "must be in [-1, 1]"),
        (lambda: editing.inpaint(pipe, images, mask, [0, 9]), "classes must be in [0, 4)"),
        (lambda: editing.domain_transfer(pipe, images, [0, 1], bottom_only=True, sampler=single_stage),
         "single stream (vq.top)"),
        (lambda: editing.domain_transfer(pipe, images, [0, 1]), "give a region (pixel mask), or bottom_only=True"),
    ]
    for call, message in cases:
        with pytest.raises(StratagenError) as caught:
            call()
        assert message in str(caught.value)


def test_image_files_load_resized_and_name_bad_files(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    assert torch.equal(editing.load_image(str(tmp_path / "white.png"), R), torch.ones(1, 3, R, R))
    drawn = np.zeros((32, 32), dtype=np.uint8)
    drawn[8:16, 0:4] = 255
    Image.fromarray(drawn).save(tmp_path / "mask.png")
    mask = editing.load_mask(str(tmp_path / "mask.png"), R)
    assert torch.equal(mask, editing.box_mask(1, R, R, top=4, left=0, box_h=4, box_w=2, inside=True))
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    for name, message in (("missing.png", "does not exist"), ("corrupt.png", "cannot read image")):
        with pytest.raises(StratagenError, match=message) as caught:
            editing.load_image(str(tmp_path / name), R)
        assert name in str(caught.value)


def test_edit_verb_writes_the_result_and_its_strip(pipes, tmp_path):
    parser = argparse.ArgumentParser()
    edit_verb.add_parser(parser.add_subparsers(dest="command"),
                       lambda p: p.add_argument("--set", action="append", default=[]))
    assert HANDLERS["edit"] is edit_verb.run_edit
    run = str(pipes["strait"].run.path())
    pixels = (np.random.default_rng(0).random((R, R, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    drawn = np.zeros((R, R), dtype=np.uint8)
    drawn[4:12, 4:12] = 255
    Image.fromarray(drawn).save(tmp_path / "mask.png")

    def edit(*flags: str) -> int:
        return edit_verb.run_edit(parser.parse_args(["edit", run, "--image", str(tmp_path / "in.png"), *flags]))

    assert edit("--mask", str(tmp_path / "mask.png"), "--class", "2", "--out", str(tmp_path / "a/out.png")) == 0
    out = np.array(Image.open(tmp_path / "a/out.png"))
    kept = drawn == 0
    assert out.shape == (R, R, 3) and np.array_equal(out[kept], pixels[kept])
    assert Image.open(tmp_path / "a/out_strip.png").size == (3 * R + 4, R + 2)
    assert edit("--box", "0,0,8,8", "--outside", "--class", "1", "--out", str(tmp_path / "b.png")) == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "b.png"))[:8, :8], pixels[:8, :8])
    assert edit("--mode", "transfer", "--bottom-only", "--class", "3", "--out", str(tmp_path / "t.png")) == 0
    assert edit("--mode", "transfer", "--box", "0,0,8,8", "--class", "3", "--out", str(tmp_path / "u.png")) == 0
    assert (tmp_path / "t.png").exists() and (tmp_path / "t_strip.png").exists()
    assert edit("--box", "2,2,8,8", "--keep-children", "--class", "1", "--out", str(tmp_path / "k.png")) == 0
    for flags, message in ((["--class", "1"], "needs --mask or --box"),
                           (["--mode", "transfer", "--bottom-only", "--keep-children", "--class", "1"],
                            "--keep-children goes with --mode inpaint"),
                           (["--box", "1,2", "--class", "1"], "four integers"),
                           (["--outside", "--class", "1"], "--outside needs --box")):
        with pytest.raises(StratagenError, match=message):
            edit(*flags)
