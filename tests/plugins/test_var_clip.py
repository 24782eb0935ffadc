"""STAR with a local pretrained CLIP text tower: the BPE tokenizer, the tower read from a Hugging
Face CLIPTextModel safetensors file, and a STAR prior trained with it (frozen)."""
from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from stratagen import api
from stratagen.data.synthetic import class_caption
from stratagen.plugins.var.clip import ClipTextEncoder, ClipTokenizer, load_clip_text
from stratagen.plugins.var.text import CaptionError
from stratagen.registry import ConfigError, MissingWeightsError, StratagenError
from tinyconfigs import tiny_config, write_config

WIDTH, DEPTH, HEADS, MLP, LENGTH = 32, 2, 4, 64, 77
#: a hand-made BPE: letters, letters ending a word, two punctuation marks, then these merges by rank
MERGES = [("r", "e"), ("re", "d</w>"), ("e", "d</w>"), ("c", "i"), ("ci", "r"), ("l", "e</w>"), ("c", "le</w>"),
          ("cir", "cle</w>")]
LETTERS = string.ascii_lowercase
VOCAB = [*LETTERS, *(c + "</w>" for c in LETTERS), ",</w>", "-</w>", *("".join(m) for m in MERGES),
         "<|startoftext|>", "<|endoftext|>"]
START, END = 62, 63


def hf_clip_tensors(seed: int = 0, depth: int = DEPTH) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as Hugging Face's CLIPTextModel (text_model.*)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, mean: float = 0.0) -> torch.Tensor:
        return mean + 0.2 * torch.randn(*shape, generator=g)

    tensors = {"text_model.embeddings.token_embedding.weight": r(len(VOCAB), WIDTH),
               "text_model.embeddings.position_embedding.weight": r(LENGTH, WIDTH),
               "text_model.final_layer_norm.weight": r(WIDTH, mean=1), "text_model.final_layer_norm.bias": r(WIDTH)}
    for i in range(depth):
        p = f"text_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors[p + f"self_attn.{name}.weight"], tensors[p + f"self_attn.{name}.bias"] = r(WIDTH, WIDTH), r(WIDTH)
        for name in ("layer_norm1", "layer_norm2"):
            tensors[p + f"{name}.weight"], tensors[p + f"{name}.bias"] = r(WIDTH, mean=1), r(WIDTH)
        tensors[p + "mlp.fc1.weight"], tensors[p + "mlp.fc1.bias"] = r(MLP, WIDTH), r(MLP)
        tensors[p + "mlp.fc2.weight"], tensors[p + "mlp.fc2.bias"] = r(WIDTH, MLP), r(WIDTH)
    return tensors


def write_clip(folder: Path, tensors: dict[str, torch.Tensor] | None = None, config: bool = True) -> Path:
    """A tiny local CLIP: model.safetensors, vocab.json, merges.txt (and config.json) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hf_clip_tensors() if tensors is None else tensors, str(folder / "model.safetensors"))
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    if config:
        (folder / "config.json").write_text(json.dumps({"num_attention_heads": HEADS, "hidden_act": "quick_gelu",
                                                        "layer_norm_eps": 1e-5}))
    return folder / "model.safetensors"


@pytest.fixture
def clip_file(tmp_path) -> Path:
    return write_clip(tmp_path / "clip")


# ----------------------------------------------------------------------------- tokenizer
def test_bpe_gives_the_hand_made_ids(clip_file):
    tokenizer = ClipTokenizer(str(clip_file.parent), length=20)
    # a: a</w>; red: r e d</w> -> re d</w> (rank 0 before "e d</w>") -> red</w>; circle: ci, cir, le</w>,
    # cle</w>, circle</w>; ",": ,</w>; bed: b ed</w>; top: t o p</w>; "-": -</w>; left: no ranked pair
    # ("l e" is ranked only as "l e</w>", at a word's end)
    ids = [26, 55, 61, 52, 1, 56, 19, 14, 41, 53, 11, 4, 5, 45]
    assert tokenizer.ids("A  Red circle, bed top-left") == ids
    assert tokenizer.encode(["A  Red circle, bed top-left", ""]).tolist() == [
        [START, *ids, *[END] * 5], [START] + [END] * 19]
    with pytest.raises(CaptionError, match=r"19 BPE tokens; the CLIP text tower reads at most 18") as error:
        tokenizer.encode(["red " * 19])
    assert "\n" not in str(error.value)
    with pytest.raises(CaptionError, match=r"missing from the CLIP vocabulary: !</w>"):
        tokenizer.encode(["red!"])


def test_missing_tokenizer_files_are_named_in_one_line(tmp_path, clip_file):
    (clip_file.parent / "merges.txt").unlink()
    with pytest.raises(MissingWeightsError, match=r"clip/merges.txt: no such file \(expected CLIP's BPE merges"):
        ClipTokenizer(str(clip_file.parent), LENGTH)
    with pytest.raises(MissingWeightsError, match=r"absent.safetensors: no such file \(expected a safetensors file "
                                                  r"of Hugging Face's CLIPTextModel layout"):
        load_clip_text(str(tmp_path / "absent.safetensors"))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_vocabulary_or_config_that_is_not_a_json_object_is_named(clip_file, text):
    (clip_file.parent / "vocab.json").write_text(text)
    with pytest.raises(ConfigError, match=r"clip/vocab.json: not a CLIP vocabulary \(a JSON map of tokens to ids\)"):
        ClipTokenizer(str(clip_file.parent), LENGTH)
    (clip_file.parent / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=r"clip/config.json: not Hugging Face's CLIP config.json"):
        load_clip_text(str(clip_file))


# ----------------------------------------------------------------------------- the tower
def hf_state_of(tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower's tensors under Hugging Face's names (attn.kv split into k and v), written independently
    of the loader's mapping."""
    names = {"norm1": "layer_norm1", "attn.q": "self_attn.q_proj", "attn.proj": "self_attn.out_proj",
             "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    state = {"text_model.embeddings.token_embedding.weight": tower.token_embedding.weight,
             "text_model.embeddings.position_embedding.weight": tower.position_embedding.weight,
             "text_model.final_layer_norm.weight": tower.final_norm.weight,
             "text_model.final_layer_norm.bias": tower.final_norm.bias}
    for i, layer in enumerate(tower.layers):
        for key, value in layer.state_dict().items():
            module, parameter = key.rsplit(".", 1)
            p = f"text_model.encoder.layers.{i}."
            if module == "attn.kv":
                k, v = value.chunk(2)
                state[p + f"self_attn.k_proj.{parameter}"], state[p + f"self_attn.v_proj.{parameter}"] = k, v
            else:
                state[p + f"{names[module]}.{parameter}"] = value
    return state


def test_every_tensor_of_the_file_is_consumed(clip_file):
    tensors = load_file(str(clip_file))
    tower = load_clip_text(str(clip_file))
    assert (tower.width, len(tower.layers), tower.length, tower.token_embedding.num_embeddings) == \
        (WIDTH, DEPTH, LENGTH, len(VOCAB))
    assert tower.layers[0].attn.num_heads == HEADS  # from config.json
    state = hf_state_of(tower)
    assert set(state) == set(tensors)
    assert all(torch.equal(state[k], tensors[k]) for k in tensors)


def test_mismatched_files_are_refused_with_a_few_keys(tmp_path):
    tensors = hf_clip_tensors()
    extra = write_clip(tmp_path / "extra", {**tensors, "text_model.encoder.layers.0.adapter.weight": torch.ones(2)})
    with pytest.raises(StratagenError, match=r"not a CLIP text tower in Hugging Face's CLIPTextModel layout: "
                                             r"unexpected 1 \(text_model.encoder.layers.0.adapter.weight\)") as e:
        load_clip_text(str(extra))
    assert "\n" not in str(e.value)
    gaps = {k: v for k, v in tensors.items() if "layers.1.self_attn.v_proj" not in k and "final_layer_norm.bias" not in k}
    with pytest.raises(StratagenError, match=r"missing 3 \(.*layers.1.self_attn.v_proj.weight") as e:
        load_clip_text(str(write_clip(tmp_path / "gaps", gaps)))
    assert "final_layer_norm.bias" in str(e.value)
    reshaped = write_clip(tmp_path / "reshaped", {**tensors, "text_model.encoder.layers.1.mlp.fc2.bias": torch.ones(3)})
    with pytest.raises(StratagenError, match=r"other shapes .*mlp.fc2.bias \[3\] vs \[32\]"):
        load_clip_text(str(reshaped))
    openclip = write_clip(tmp_path / "openclip", {"transformer.resblocks.0.attn.in_proj_weight": torch.ones(2)})
    with pytest.raises(StratagenError, match=r"missing 3 \(text_model.embeddings.token_embedding.weight.*unexpected 1 "
                                             r"\(transformer.resblocks.0.attn.in_proj_weight\)"):
        load_clip_text(str(openclip))
    no_heads = write_clip(tmp_path / "no_config", tensors, config=False)
    with pytest.raises(ConfigError, match="text_encoder.heads: .* does not tell the number of attention heads"):
        load_clip_text(str(no_heads))
    assert load_clip_text(str(no_heads), heads=2).layers[0].attn.num_heads == 2
    full = write_clip(tmp_path / "full", {**tensors, "vision_model.post_layernorm.weight": torch.ones(4),
                                          "logit_scale": torch.ones(()),
                                          "text_model.embeddings.position_ids": torch.arange(LENGTH)[None]})
    assert torch.equal(load_clip_text(str(full)).final_norm.bias, tensors["text_model.final_layer_norm.bias"])
    assert torch.equal(load_clip_text(str(full.parent)).final_norm.bias,  # a model folder names its file
                       tensors["text_model.final_layer_norm.bias"])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(full.read_bytes()[:300])
    pickled = tmp_path / "pickled.safetensors"
    torch.save(tensors, pickled)
    for broken in (truncated, pickled):
        with pytest.raises(StratagenError, match=r"not a readable safetensors file") as e:
            load_clip_text(str(broken))
        assert "\n" not in str(e.value)


def reference_layer(x: torch.Tensor, t: dict[str, torch.Tensor], p: str, heads: int) -> torch.Tensor:
    """One CLIP text layer by hand from the file's tensors: pre-norm causal attention, QuickGELU MLP."""
    B, M, D = x.shape
    d = D // heads
    h = F.layer_norm(x, (D,), t[p + "layer_norm1.weight"], t[p + "layer_norm1.bias"], eps=1e-5)
    q, k, v = ((h @ t[p + f"self_attn.{n}_proj.weight"].T + t[p + f"self_attn.{n}_proj.bias"])
               .view(B, M, heads, d).transpose(1, 2) for n in "qkv")
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    scores = scores.masked_fill(torch.ones(M, M, dtype=torch.bool).triu(1), float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, M, D)
    x = x + attended @ t[p + "self_attn.out_proj.weight"].T + t[p + "self_attn.out_proj.bias"]
    h = F.layer_norm(x, (D,), t[p + "layer_norm2.weight"], t[p + "layer_norm2.bias"], eps=1e-5)
    h = h @ t[p + "mlp.fc1.weight"].T + t[p + "mlp.fc1.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ t[p + "mlp.fc2.weight"].T + t[p + "mlp.fc2.bias"]


def test_tower_equals_a_reference_computed_by_hand(clip_file):
    t = load_file(str(clip_file))
    tower = load_clip_text(str(clip_file)).eval()
    ids = torch.randint(0, len(VOCAB), (3, 9), generator=torch.Generator().manual_seed(1))
    x = t["text_model.embeddings.token_embedding.weight"][ids] + t["text_model.embeddings.position_embedding.weight"][:9]
    layer0 = reference_layer(x, t, "text_model.encoder.layers.0.", HEADS)
    torch.testing.assert_close(tower.layers[0](x, mask=tower.causal[:9, :9]), layer0, rtol=1e-5, atol=1e-5)
    expected = F.layer_norm(reference_layer(layer0, t, "text_model.encoder.layers.1.", HEADS), (WIDTH,),
                            t["text_model.final_layer_norm.weight"], t["text_model.final_layer_norm.bias"], eps=1e-5)
    torch.testing.assert_close(tower(ids), expected, rtol=1e-5, atol=1e-5)


def test_causal_masking_is_exact(clip_file):
    tower = load_clip_text(str(clip_file)).eval()
    ids = torch.randint(0, len(VOCAB), (2, 12), generator=torch.Generator().manual_seed(2))
    before = tower(ids)
    for j in (1, 6, 11):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % len(VOCAB)
        after = tower(changed)
        assert torch.equal(after[:, :j], before[:, :j]), j
        assert not torch.allclose(after[:, j:], before[:, j:]), j


def test_pooled_feature_is_the_end_tokens(clip_file):
    encoder = ClipTextEncoder(width=8, weights=str(clip_file)).eval()
    ids = encoder.tokenize(["a red circle", "red"])
    tokens, pooled = encoder(ids)
    assert tokens.shape == (2, LENGTH, 8) and pooled.shape == (2, 8)
    ends = [4, 2]  # start, three words, end; start, one word, end (the padding is end tokens too)
    assert [ids[0, 4].item(), ids[1, 2].item()] == [END, END]
    for row, end in enumerate(ends):
        assert torch.equal(pooled[row], tokens[row, end])
        assert not torch.allclose(pooled[row], tokens[row, end + 1])
        torch.testing.assert_close(pooled[row], encoder.projection(encoder.tower(ids)[row, end]))


def test_a_frozen_tower_stays_out_of_gradients_and_state_dicts(clip_file):
    frozen = ClipTextEncoder(width=8, weights=str(clip_file))
    assert not any(p.requires_grad for p in frozen.tower.parameters()) and frozen.projection.weight.requires_grad
    assert sorted(frozen.state_dict()) == ["projection.bias", "projection.weight", "tower_fingerprint"]
    other = ClipTextEncoder(width=8, weights=str(clip_file))
    other.load_state_dict(frozen.state_dict())  # strict: the tower keeps its pretrained tensors
    assert torch.equal(other.projection.weight, frozen.projection.weight)
    tuned = ClipTextEncoder(width=8, weights=str(clip_file), fine_tune=True)
    assert all(p.requires_grad for p in tuned.parameters())
    assert len(tuned.state_dict()) == 2 + len(hf_clip_tensors()) - 2 * DEPTH  # k and v in one tensor per layer


def test_a_frozen_tower_from_another_file_is_refused_on_load(clip_file, tmp_path):
    """The checkpoint keeps the tower's fingerprint: a file with other tensors in its place (here one
    layer norm weight moved by 1e-3) is refused in one line, not silently used."""
    saved = ClipTextEncoder(width=8, weights=str(clip_file)).state_dict()
    tensors = hf_clip_tensors()
    tensors["text_model.final_layer_norm.weight"] = tensors["text_model.final_layer_norm.weight"] + 1e-3
    other_file = write_clip(tmp_path / "other", tensors)
    with pytest.raises(StratagenError, match=r"other/model.safetensors: not the CLIP text tower this prior was "
                                             r"trained with"):
        ClipTextEncoder(width=8, weights=str(other_file)).load_state_dict(saved)
    ClipTextEncoder(width=8, weights=str(write_clip(tmp_path / "copy"))).load_state_dict(saved)  # same tensors


# ----------------------------------------------------------------------------- STAR with CLIP, end to end
def clip_star_config(tmp_path: Path, clip_file: Path) -> dict:
    config = tiny_config(tmp_path / "run", "var")
    config["priors"]["main"]["model"].update(
        position="rope", captions=[class_caption(c) for c in range(4)],
        text_encoder={"name": "clip", "weights": str(clip_file)})
    return config


def test_star_with_a_frozen_clip_tower_trains_end_to_end(tmp_path, clip_file):
    config = clip_star_config(tmp_path, clip_file)
    config["tokenizers"]["vq"]["train"]["steps"] = 20
    config["priors"]["main"]["train"].update(steps=40, batch_size=16, lr=3e-3, log_every=1, checkpoint_every=40)
    config = api.load(str(write_config(tmp_path / "c.yaml", config)))
    initial = api.build(config).model.priors["main"].prior.text
    pipe = api.train(config)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tb")); events.Reload()
    losses = [e.value for e in events.Scalars("prior/main/loss/prior")]
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5]), losses  # 3.4 (uniform over 32 codes) to about 2.8
    text = pipe.model.priors["main"].prior.text
    state, tensors = hf_state_of(text.tower), load_file(str(clip_file))
    assert all(torch.equal(state[k], tensors[k]) for k in tensors)  # the pretrained tower is unchanged
    assert not torch.allclose(text.projection.weight, initial.projection.weight)  # the projection trained
    for name in ("model", "checkpoint"):  # the weights and the training state
        saved = load_file(str(tmp_path / f"run/priors/main/{name}.safetensors"))
        assert not any("text.tower." in k for k in saved) and any("text.projection.weight" in k for k in saved)
    reloaded = api.Pipeline.from_run(str(tmp_path / "run"))
    assert torch.equal(reloaded.model.priors["main"].prior.text.projection.weight, text.projection.weight.cpu())
    a = reloaded.sample([0, 0], seed=3, captions=["a red circle on a navy ground"] * 2)
    b = pipe.sample([0, 0], seed=3, captions=["a red circle on a navy ground"] * 2)
    assert all(torch.equal(a.tokens[s], b.tokens[s]) for s in a.tokens)


def test_clip_encoder_without_captions_is_refused(tmp_path, clip_file):
    config = tiny_config(tmp_path / "run", "var")
    config["priors"]["main"]["model"]["text_encoder"] = {"name": "clip", "weights": str(clip_file)}
    with pytest.raises(ConfigError, match="text_encoder reads captions: give model.captions"):
        api.load(str(write_config(tmp_path / "c.yaml", config)))
    config = clip_star_config(tmp_path, tmp_path / "nowhere" / "model.safetensors")
    with pytest.raises(MissingWeightsError, match=r"nowhere/model.safetensors: no such file") as error:
        api.build(api.load(str(write_config(tmp_path / "d.yaml", config))))
    assert "\n" not in str(error.value)
