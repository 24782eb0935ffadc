"""Official MaskGIT checkpoints: the flax msgpack reader, the converter and the converted run.

The fixtures were made by running the official JAX code with random weights at small widths
(../shared/fixtures/maskgit-official/README.md); the converted models must reproduce its outputs.
"""
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from stratagen import api
from stratagen.cli import main
from stratagen.plugins.maskgit_official import read_flax_checkpoint
from stratagen.plugins.maskgit_official.convert import convert_maskgit_official
from stratagen.registry import LevelSpec, StratagenError

# ../shared/fixtures beside the checkout (or a worktree of it)
FIXTURES = next((p / "shared/fixtures/maskgit-official" for p in Path(__file__).resolve().parents
                 if (p / "shared/fixtures/maskgit-official").is_dir()), Path("fixtures-not-found"))
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="official MaskGIT fixtures not present")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> api.Pipeline:
    out = tmp_path_factory.mktemp("official") / "run"
    convert_maskgit_official(tokenizer=str(FIXTURES / "tokenizer.msgpack"),
                             transformer=str(FIXTURES / "transformer.msgpack"), data_root="unused", steps=8,
                             out=str(out))
    return api.Pipeline.from_run(str(out))


def test_flax_arrays_are_msgpack_ext_type_1_with_shape_dtype_and_bytes():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = msgpack.packb([list(array.shape), "float32", array.tobytes()])
    data = msgpack.packb({"params": {"layer": {"kernel": msgpack.ExtType(1, payload)}}})
    params = read_flax_checkpoint(data, "x")
    assert torch.equal(params["layer"]["kernel"], torch.from_numpy(array))
    fixture = read_flax_checkpoint((FIXTURES / "tokenizer.msgpack").read_bytes(), "tokenizer")
    assert fixture["quantizer"]["codebook"].shape == (64, 16)
    with pytest.raises(StratagenError, match="not a flax msgpack checkpoint"):
        read_flax_checkpoint(msgpack.packb({"w": msgpack.ExtType(9, b"")}), "bad.msgpack")


def test_converted_tokenizer_reproduces_the_official_outputs(converted):
    io = np.load(FIXTURES / "tokenizer_io.npz")
    tokenizer = converted.model.tokenizers["vq"]
    images = torch.from_numpy(io["images_nhwc_01"]).permute(0, 3, 1, 2) * 2 - 1  # stratagen's [-1, 1]
    official_indices = torch.from_numpy(io["encoding_indices"]).long()
    with torch.no_grad():
        assert torch.equal(tokenizer.encode(images)["tokens"], official_indices)
        decoded = (tokenizer.decode({"tokens": official_indices}) + 1) / 2
    torch.testing.assert_close(decoded, torch.from_numpy(io["decoded_nhwc"]).permute(0, 3, 1, 2),
                               atol=1e-4, rtol=1e-4)


def test_converted_transformer_reproduces_the_official_logits(converted):
    io = np.load(FIXTURES / "transformer_io.npz")
    prior = converted.model.priors["main"].prior
    official_ids = torch.from_numpy(io["input_ids"]).long()
    official_logits = torch.from_numpy(io["logits"])
    codebook = prior.target.codebook_size
    with torch.no_grad():
        full = prior.vocabulary_logits(torch.where(official_ids < 0, prior.vocab_size - 1, official_ids))
        # The Prior contract: stratagen's [MASK] id and labels in, codebook logits of the image positions out.
        tokens = torch.where(official_ids[:, 1:] < 0, prior.mask_token_id, official_ids[:, 1:])
        logits = prior(tokens, official_ids[:, 0] - codebook)
    torch.testing.assert_close(full, official_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, official_logits[:, 1:, :codebook], atol=1e-4, rtol=1e-4)


def test_cli_converts_and_samples_the_converted_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["convert", "maskgit-official", "--tokenizer", str(FIXTURES / "tokenizer.msgpack"),
                 "--transformer", str(FIXTURES / "transformer.msgpack"), str(out)]) == 0
    assert (out / "config.yaml").is_file() and (out / "priors" / "main" / "model.safetensors").is_file()
    assert main(["sample", str(out), "--classes", "0,7", "--count", "1", "--out", str(tmp_path / "s")]) == 0
    pictures = sorted((tmp_path / "s").glob("class*.png"))
    assert len(pictures) == 2 and Image.open(pictures[0]).size == (64, 64)


def test_convert_refuses_a_used_folder_and_overwrite_replaces_it_whole(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    convert = ["convert", "maskgit-official", "--tokenizer", str(FIXTURES / "tokenizer.msgpack"),
               "--transformer", str(FIXTURES / "transformer.msgpack"), str(out)]
    assert main(convert) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x00not msgpack")  # a failed conversion with --overwrite keeps the old run
    assert main(convert[:3] + [str(garbage)] + convert[4:] + ["--overwrite"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(convert + ["--overwrite"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.safetensors")) == [
        "priors/main/model.safetensors", "tokenizers/vq/model.safetensors"]  # no file of the old run is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.msgpack", "run"]  # nothing set aside is left


def test_convert_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", "maskgit-offical", str(tmp_path / "run")]) == 2
    assert "unknown converter 'maskgit-offical'; installed: llamagen-vq, maskgit-official, var-official" in capsys.readouterr().err
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x00not msgpack")
    assert main(["convert", "maskgit-official", "--tokenizer", str(garbage), "--transformer", str(garbage),
                 str(tmp_path / "run")]) == 2
    assert "garbage.msgpack: not a flax msgpack checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bert_prior_trains_with_the_masked_token_loss():
    from stratagen.plugins.maskgit_official import BertMaskedTokenTransformer
    from stratagen.registry import get_registry

    torch.manual_seed(0)
    prior = BertMaskedTokenTransformer(target=LevelSpec("tokens", 2, 2, 8), num_classes=3, depth=1, width=16,
                                       heads=2, mlp_dim=32, dropout=0.0, label_smoothing=0.0)
    tokens, labels = torch.randint(0, 8, (4, 2, 2)), torch.tensor([0, 1, 2, 0])
    schedule = get_registry().build("schedule", "cosine")
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        loss = prior.loss(tokens, labels, [], schedule, torch.Generator().manual_seed(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
