"""Typed configs: extends, --set, show, schema, and clear one-line errors for mistakes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stratagen import cli
from stratagen import config as cfg
from stratagen.config import files
from stratagen.registry import ConfigError
from tinyconfigs import tiny_config, write_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show_resolves_extends_set_and_defaults(tmp_path, capsys):
    base = write_config(tmp_path / "base.yaml", tiny_config(tmp_path / "run"))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\npriors:\n  main:\n    model:\n      depth: 3\n")
    code, out, _ = run_cli(capsys, "config", "show", str(tmp_path / "child.yaml"), "--set", "data.resolution=32",
                           "--set", "sampler.stage.steps=5")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["priors"]["main"]["model"]["depth"] == 3           # from the child
    assert shown["priors"]["main"]["model"]["width"] == 32          # from the base
    assert shown["priors"]["main"]["model"]["label_smoothing"] == 0.1  # a default
    assert shown["data"]["resolution"] == 32 and shown["sampler"]["stage"]["steps"] == 5
    assert base.exists()


def test_paper_and_demo_configs_share_one_definition():
    paper = cfg.load_config("configs/strait_r.yaml")
    demo = cfg.load_config("configs/demo/strait_r.yaml")
    assert paper.priors["top"].model.depth == 48 and demo.priors["top"].model.depth < 48
    assert paper.priors["bottom"].conditions == demo.priors["bottom"].conditions == ["vq.top"]
    assert demo.sampler.name == paper.sampler.name == "stratified"


def test_set_name_swaps_a_component_in_one_line(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", "strait"))
    config = cfg.load_config(str(path), ["tokenizers.vq.model.name=vqgan2-c"])
    assert config.tokenizers["vq"].model.name == "vqgan2-c"
    assert config.tokenizers["vq"].model.channels == 8  # same schema: the other keys are kept
    config = cfg.load_config(str(path), ["sampler.name=maskgit", "sampler.stream=vq.top"])
    assert config.sampler.name == "maskgit" and config.sampler.stream == "vq.top"


def test_schema_lists_installed_plugins(capsys):
    code, out, _ = run_cli(capsys, "config", "schema")
    assert code == 0
    text = json.dumps(json.loads(out))
    for name in ("vqgan2-r", "cmtm-bottom", "stratified", "cascade", "synthetic"):
        assert f'"{name}"' in text


MISTAKES = [
    # (description, edit of the tiny config or CLI args, expected fragments of the one-line error)
    ("unknown key", {"tokenizers.vq.model.codebok_size": 64},
     ["tokenizers.vq.model.codebok_size", "unknown key 'codebok_size'", "accepted:", "codebook_size"]),
    ("unknown plugin", {"tokenizers.vq.model.name": "vqgam"},
     ["tokenizers.vq.model", "'vqgam'", "'vqgan'", "'vqgan2-r'"]),
    ("wrong type", {"priors.main.train.steps": "many"},
     ["priors.main.train.steps", "integer", "'many'"]),
    ("out of range", {"priors.main.train.lr": -1},
     ["priors.main.train.lr", "greater than 0", "-1"]),
    ("unknown schedule", {"priors.main.mask_schedule": "cosin"},
     ["priors.main.mask_schedule", "'cosin'", "cosine"]),
    ("unknown stream level", {"priors.main.target": "vq.bottom"},
     ["priors.main.target", "no level 'bottom'", "tokens"]),
    ("bad stream syntax", {"priors.main.target": "vqtokens"},
     ["priors.main.target", "'<tokenizer>.<level>'"]),
    ("factor vs channel_mult", {"tokenizers.vq.model.factor": 8},
     ["tokenizers.vq.model", "factor 8 needs 4 channel_mult entries"]),
    ("incompatible sampler", {"sampler": {"name": "stratified"}},
     ["stratified sampler needs exactly one two-level tokenizer", "'vq' (1 level: tokens)"]),
    ("missing section", {"run": None},
     ["run", "required key is missing"]),
]


def _edit(config: dict, edits: dict) -> dict:
    for key, value in edits.items():
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            node = node[part]
        if value is None:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return config


@pytest.mark.parametrize("description,edits,fragments", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_config_mistake_gives_one_clear_line(tmp_path, capsys, description, edits, fragments):
    path = write_config(tmp_path / "mistake.yaml", _edit(tiny_config(tmp_path / "run"), edits))
    code, out, err = run_cli(capsys, "info", str(path))
    assert code == 2, out
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if description not in ("incompatible sampler", "unknown stream level"):
        assert str(path) in err  # names the file


@pytest.mark.parametrize("argv,fragments", [
    (["info", "missing.yaml"], ["missing.yaml: config file not found"]),
    (["config", "show", "{cfg}", "--set", "data.resolution"], ["--set 'data.resolution'", "KEY.PATH=VALUE"]),
    (["config", "show", "{bad_yaml}"], ["not valid YAML", "(line 3)"]),
    (["config", "show", "{bad_extends}"], ["nowhere.yaml: config file not found"]),
    (["sample", "{run}"], ["not a run directory"]),
], ids=["missing file", "malformed --set", "invalid yaml", "missing base file", "not a run dir"])
def test_file_and_cli_mistakes(tmp_path, capsys, argv, fragments):
    cfg_path = write_config(tmp_path / "ok.yaml", tiny_config(tmp_path / "run"))
    (tmp_path / "bad.yaml").write_text("run:\n  dir: [unclosed\n")
    (tmp_path / "child.yaml").write_text("extends: nowhere.yaml\n")
    names = {"cfg": cfg_path, "bad_yaml": tmp_path / "bad.yaml", "bad_extends": tmp_path / "child.yaml",
             "run": tmp_path}
    code, _, err = run_cli(capsys, *[a.format(**names) for a in argv])
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_real_cli_process_prints_no_traceback(tmp_path):
    path = write_config(tmp_path / "c.yaml", _edit(tiny_config(tmp_path / "run"), {"tokenizers.vq.model.name": "x"}))
    exe = Path(sys.executable).with_name("stratagen")
    result = subprocess.run([str(exe), "info", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "tokenizers.vq.model" in result.stderr


SHIPPED = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    if path.startswith("configs/compare/"):
        config = cfg.load_compare_config(path)
        assert config.variants
        return
    config = cfg.load_config(path)
    if path.startswith("configs/demo/"):  # small enough to build: check the sampler fits the model
        from stratagen.engine import build

        build.build(config)


def test_attention_backend_is_selected_from_the_config(tmp_path):
    from stratagen.engine import build
    from stratagen.nn import get_attention_backend

    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    build.build(cfg.load_config(str(path)))
    assert get_attention_backend() == "sdpa"
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="run.attention: .*xformers"):
            build.build(cfg.load_config(str(path), ["run.attention=xformers"]))


def test_set_name_to_another_schema_keeps_the_keys_it_accepts_and_names_the_rest(tmp_path, caplog):
    """A prior swapped with --set keeps its sizes (not the plugin's defaults: a 492M prior from a
    small one); keys the new component does not take are dropped with a warning naming them."""
    config = tiny_config(tmp_path / "run", "maskgit")
    config["priors"]["main"]["model"]["label_smoothing"] = 0.05
    path = write_config(tmp_path / "c.yaml", config)
    swapped = cfg.load_config(str(path), ["priors.main.model.name=cmtm-top"]).priors["main"].model
    assert swapped.name == "cmtm-top"
    assert (swapped.depth, swapped.width, swapped.heads, swapped.mlp_dim, swapped.label_smoothing) == (1, 32, 2, 64, 0.05)
    files._say_dropped.cache_clear()  # an earlier test may have swapped the same way
    swap = ["sampler.name=stratified", "sampler.top.steps=2", "sampler.bottom.steps=2"]
    notice = "--set sampler.name=stratified: 'stratified' takes no stage; dropped from sampler"
    for _ in range(2):  # said once (a comparison loads each variant once per seed)
        sampler = cfg.load_config(str(path), swap).sampler
        assert sampler.name == "stratified" and "stage" not in sampler.model_dump()
    assert caplog.text.count(notice) == 1
