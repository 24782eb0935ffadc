"""Every bad input a user can give, one row each: exit code 2, one ``error:`` line naming what is
wrong, no traceback, and nothing that was on disk changed or lost.

``BAD_INPUTS`` is the table: one row per distinct bad input (``len(BAD_INPUTS)`` counts them).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from stratagen import api, cli
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.registry import manager
from referencefiles import statistics, write_npz_with_code
from tinyconfigs import tiny_config, write_config
from weightfiles import write_pickle_with_code


def broken_run(run: Path, copy: Path, damage: Callable[[Path], object]) -> None:
    """A copy of ``run`` (its config.yaml naming the copy) that ``damage(copy)`` then breaks."""
    shutil.copytree(run, copy)
    Run(str(copy)).save_config(api.load(str(copy)))
    damage(copy)


def other_shape_checkpoint(run: Path) -> None:
    """The prior's checkpoint: one step before the end (so it is resumed), a weight of another shape."""
    url = str(run / "priors/main/checkpoint.safetensors")
    tensors, meta = checkpoint.load_tensors(url)
    tensors["model.token_embedding.weight"] = tensors["model.token_embedding.weight"][:, :16].contiguous()
    checkpoint.save_tensors(url, tensors, {**meta, "step": 1})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, trained_run) -> Path:
    """A trained tiny run and the files the rows name (made once)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    broken_run(trained_run, root / "run", lambda run: None)
    write_config(root / "ok.yaml", tiny_config(root / "fresh-run"))
    broken_run(root / "run", root / "other-shape-checkpoint", other_shape_checkpoint)
    broken_run(root / "run", root / "garbage-weights", lambda run: (run / "priors/main/model.safetensors")
               .write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header"))
    (root / "binary.yaml").write_bytes(b"\x00\xff\xfe\x00binary")
    (root / "latin1.yaml").write_bytes("run: {dir: caf\xe9}\n".encode("latin-1"))
    (root / "cfg").mkdir()
    (root / "cfg/a.yaml").write_text("extends: ../cfg/b.yaml\n")
    (root / "cfg/b.yaml").write_text("extends: ../cfg/a.yaml\n")
    (root / "self.yaml").write_text("extends: self.yaml\n")
    (root / "afile").write_text("not a directory\n")
    Image.new("L", (16, 16), 0).save(root / "black.png")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "image.png")
    Image.new("L", (32, 8), 255).save(root / "wide.png")
    (root / "notimage.png").write_text("text, not an image\n")
    write_pickle_with_code(root / "code.pth", root / "MARKER")
    np.savez(root / "ref_missing.npz", mu=np.zeros(2048))
    np.savez(root / "ref_ok.npz", **statistics())
    write_npz_with_code(root / "ref_code.npz", root / "MARKER")
    (root / "images/c0").mkdir(parents=True)
    Image.new("RGB", (16, 16), (0, 90, 200)).save(root / "images/c0/a.png")
    compare = {"dir": str(root / "cmp"), "variants": {"a": {"config": "ok.yaml"}}}
    (root / "no_source.yaml").write_text(yaml.safe_dump({**compare, "variants": {"a": {"set": []}}}))
    (root / "bad_sweep.yaml").write_text(yaml.safe_dump({**compare, "sweeps": {"steps": [[-3]]}}))
    (root / "zero_temperature.yaml").write_text(yaml.safe_dump({**compare, "sweeps": {"temperature": [0]}}))
    (root / "not_mapping.yaml").write_text("- a\n- list\n")
    return root


# (id, argv, environment, a fragment the error line must hold)
BAD_INPUTS = [
    # command-line arguments
    ("classes-not-ints", ["sample", "{run}", "--classes", "a,b"], {}, "comma-separated class ids"),
    ("classes-empty", ["sample", "{run}", "--classes", ","], {}, "comma-separated class ids"),
    ("class-out-of-range", ["sample", "{run}", "--classes", "9"], {}, "classes must be in [0, 4)"),
    ("count-zero", ["sample", "{run}", "--count", "0"], {}, "--count: must be at least 1, got 0"),
    ("count-negative", ["sample", "{run}", "--count", "-2"], {}, "--count: must be at least 1, got -2"),
    ("count-not-int", ["sample", "{run}", "--count", "x"], {}, "expected a positive integer, got 'x'"),
    ("seed-not-int", ["sample", "{run}", "--seed", "x"], {}, "--seed: invalid int value"),
    ("out-is-a-file", ["sample", "{run}", "--out", "{root}/afile"], {}, "afile is a file; give a folder"),
    ("tokenize-batch-zero", ["tokenize", "{run}", "--batch-size", "0"], {}, "--batch-size: must be at least 1"),
    ("bench-repeats-zero", ["bench", "{root}/ok.yaml", "--repeats", "0"], {}, "--repeats: must be at least 1"),
    ("pack-shard-size-zero", ["data", "pack", "{root}", "{root}/shards", "--shard-size", "0"], {},
     "--shard-size: must be at least 1"),
    ("unknown-command", ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    ("unknown-option", ["sample", "{run}", "--colour", "red"], {}, "unrecognized arguments: --colour red"),
    ("not-a-run-dir", ["sample", "{root}/cfg"], {}, "not a run directory (no config.yaml)"),
    ("run-dir-is-a-file", ["sample", "{root}/afile"], {}, "not a run directory"),
    ("read-only-run-dir", ["sample", "{readonly}"], {}, "samples"),
    ("read-only-run-train", ["train", "{readonly}", "--resume"], {}, "readonly-run: cannot write into the run directory"),
    ("caption-on-class-run", ["sample", "{run}", "--caption", "a red disc"], {},
     "error: sampler 'maskgit': it generates by class and takes no captions; captions need a text-conditioned model"),
    ("caption-and-classes", ["sample", "{run}", "--caption", "a red disc", "--classes", "0"], {},
     "give --classes or --caption, not both"),
    # edits
    ("edit-all-black-mask", ["edit", "{run}", "--image", "{root}/image.png", "--mask", "{root}/black.png",
                             "--class", "1"], {}, "nothing to edit"),
    ("edit-outside-whole-image", ["edit", "{run}", "--image", "{root}/image.png", "--box", "0,0,16,16", "--outside",
                                  "--class", "1"], {}, "nothing to edit"),
    ("edit-empty-box", ["edit", "{run}", "--image", "{root}/image.png", "--box", "0,0,0,0", "--class", "1"], {},
     "--box must be TOP,LEFT,H,W (four integers: TOP, LEFT >= 0; H, W >= 1), got '0,0,0,0'"),
    ("edit-box-negative", ["edit", "{run}", "--image", "{root}/image.png", "--box", "-2,0,4,4", "--class", "1"], {},
     "--box must be TOP,LEFT,H,W (four integers: TOP, LEFT >= 0; H, W >= 1), got '-2,0,4,4'"),
    ("edit-box-outside-image", ["edit", "{run}", "--image", "{root}/image.png", "--box", "10,10,8,8", "--class", "1"],
     {}, "does not fit"),
    ("edit-mask-other-aspect", ["edit", "{run}", "--image", "{root}/image.png", "--mask", "{root}/wide.png",
                                "--class", "1"], {}, "wide.png: 32x8 has another aspect ratio than --image"),
    ("edit-box-not-ints", ["edit", "{run}", "--image", "{root}/image.png", "--box", "a,b", "--class", "1"], {},
     "--box must be TOP,LEFT,H,W"),
    ("edit-image-missing", ["edit", "{run}", "--image", "{root}/absent.png", "--box", "0,0,4,4", "--class", "1"], {},
     "does not exist"),
    ("edit-image-not-an-image", ["edit", "{run}", "--image", "{root}/notimage.png", "--box", "0,0,4,4",
                                 "--class", "1"], {}, "cannot read image"),
    ("edit-outside-without-box", ["edit", "{run}", "--image", "{root}/image.png", "--outside", "--class", "1"], {},
     "--outside needs --box"),
    # config files
    ("config-missing", ["info", "{root}/absent.yaml"], {}, "config file not found"),
    ("config-binary", ["info", "{root}/binary.yaml"], {}, "not a text file"),
    ("config-latin1", ["info", "{root}/latin1.yaml"], {}, "not a text file"),
    ("config-not-a-mapping", ["info", "{root}/not_mapping.yaml"], {}, "a config must be a YAML mapping"),
    ("extends-cycle-via-parent", ["info", "{root}/cfg/a.yaml"], {}, "'extends' forms a cycle"),
    ("extends-itself", ["info", "{root}/self.yaml"], {}, "'extends' forms a cycle"),
    ("set-without-value", ["info", "{root}/ok.yaml", "--set", "data.resolution"], {}, "expected KEY.PATH=VALUE"),
    ("run-dir-unknown-protocol", ["info", "{root}/ok.yaml", "--set", "run.dir=foo://x"], {},
     "run.dir: unknown protocol 'foo'"),
    ("run-dir-is-a-file-train", ["train", "{root}/ok.yaml", "--set", "run.dir={root}/afile"], {},
     "is a file; give a directory"),
    ("run-dir-under-a-file", ["train", "{root}/ok.yaml", "--set", "run.dir={root}/afile/run"], {},
     "Not a directory"),
    ("resolution-vs-factor", ["info", "{root}/ok.yaml", "--set", "data.resolution=18"], {},
     "tokenizers.vq.model: image size (18, 18) is not divisible by the factor 4"),
    ("heads-vs-width", ["info", "{root}/ok.yaml", "--set", "priors.main.model.heads=3"], {},
     "priors.main.model: dim (32) must be divisible by num_heads (3)"),
    ("dead-code-steps-zero", ["info", "{root}/ok.yaml", "--set", "tokenizers.vq.model.dead_code_steps=0"], {},
     "dead_code_steps"),
    ("s3-data-without-s3fs", ["train", "{root}/ok.yaml", "--set", "run.dir={fresh}", "--set", "data={{name: imagefolder, root: "
                              "'s3://bucket/train', num_classes: 4, resolution: 16}}"], {}, "Install s3fs"),
    # weights and runs
    ("weights-of-another-shape", ["sample", "{run}", "--set", "priors.main.model.width=64"], {},
     "weights do not fit the configured prior 'main'"),
    ("weights-of-another-plugin", ["sample", "{run}", "--set", "priors.main.model={{name: cmtm-top, depth: 1, "
                                   "width: 32, heads: 2, mlp_dim: 64, dropout: 0.0}}"], {},
     "holds the weights of prior plugin 'maskgit', but priors.main is configured as 'cmtm-top'"),
    ("resume-with-changed-tokenizer", ["train", "{run}", "--resume", "--set", "tokenizers.vq.model.codebook_size=64"],
     {}, "--resume with a changed config: tokenizers.vq.model.codebook_size was 32, now 64"),
    ("resume-with-changed-data", ["train", "{run}", "--resume", "--set", "data.train_size=64"], {},
     "--resume with a changed config: data.train_size"),
    ("retrain-without-resume", ["train", "{run}"], {}, "pass --resume"),
    ("checkpoint-of-another-shape", ["train", "{root}/other-shape-checkpoint", "--resume"], {},
     "checkpoint.safetensors: weights do not fit the configured component (other shapes (file vs config) "
     "['token_embedding.weight [33, 16] vs [33, 32]']"),
    ("convert-over-a-run", ["convert", "maskgit-official", "--tokenizer", "{root}/absent.msgpack", "--transformer",
                            "{root}/absent.msgpack", "{run}"], {},
     "run already holds a run; give a new or empty folder, or pass --overwrite to replace it"),
    ("convert-over-files", ["convert", "maskgit-official", "--tokenizer", "{root}/absent.msgpack", "--transformer",
                            "{root}/absent.msgpack", "{root}/cfg"], {}, "cfg already holds files"),
    ("weights-not-safetensors", ["sample", "{root}/garbage-weights"], {}, "not a readable safetensors file"),
    ("perceptual-weights-carry-code", ["train", "{root}/ok.yaml", "--set", "run.dir={fresh}", "--set",
                                       "tokenizers.vq.model.loss.perceptual_weights={root}/code.pth"], {},
     "refused, it holds"),
    ("inception-weights-carry-code", ["eval", "{run}", "--tokenizers-only", "--set",
                                      "eval.metrics=[{{name: inception, weights: {root}/code.pth}}]"], {},
     "refused, it holds"),
    # reference batches (ADM's evaluation protocol)
    ("reference-missing-keys", ["eval", "{run}", "--reference", "{root}/ref_missing.npz"], {},
     "ref_missing.npz: missing sigma, mu_s, sigma_s"),
    ("reference-object-array", ["eval", "{run}", "--reference", "{root}/ref_code.npz"], {},
     "mu is a pickled object array; refused"),
    ("reference-not-npz", ["eval", "{run}", "--reference", "{root}/image.png"], {}, "not a readable .npz file"),
    ("reference-without-inception-weights", ["eval", "{run}", "--reference", "{root}/ref_ok.npz"], {},
     "eval --reference needs torch-fidelity's Inception weights"),
    ("reference-with-tokenizers-only", ["eval", "{run}", "--reference", "{root}/ref_ok.npz", "--tokenizers-only"], {},
     "--reference scores samples; drop --tokenizers-only"),
    ("reference-only-without-reference", ["eval", "{run}", "--reference-only"], {},
     "scoring against the reference batch only needs a reference batch (--reference)"),
    ("stats-weights-carry-code", ["data", "stats", "{root}/images", "{root}/out.npz", "--inception-weights",
                                  "{root}/code.pth", "--resolution", "16"], {},
     "refused, it holds"),
    ("stats-source-missing", ["data", "stats", "{root}/absent", "{root}/out.npz", "--inception-weights",
                              "{root}/code.pth", "--resolution", "16"], {}, "image folder root not found"),
    ("stats-out-exists", ["data", "stats", "{root}/images", "{root}/ref_ok.npz", "--inception-weights",
                          "{root}/code.pth", "--resolution", "16"], {}, "ref_ok.npz exists"),
    ("stats-out-not-npz", ["data", "stats", "{root}/images", "{root}/out.zip", "--inception-weights",
                           "{root}/code.pth", "--resolution", "16"], {}, "OUT must end in .npz"),
    # processes and plugins
    ("batch-smaller-than-processes", ["train", "{root}/ok.yaml"], {"WORLD_SIZE": "16"},
     "batch_size: 8 does not split over 16 processes"),
    ("batch-not-divisible", ["train", "{root}/ok.yaml"], {"WORLD_SIZE": "3"}, "does not split over 3 processes"),
    ("batch-not-divisible-by-one-process", ["train", "{root}/ok.yaml", "--set", "priors.main.train.accumulate=3"],
     {}, "priors.main.train.batch_size: 8 does not split over 1 process x 3 micro-batches; use a multiple of 3"),
    ("batch-not-divisible-into-micro-batches", ["train", "{root}/ok.yaml", "--set",
                                                "priors.main.train.accumulate=3"], {"WORLD_SIZE": "2"},
     "priors.main.train.batch_size: 8 does not split over 2 processes x 3 micro-batches; use a multiple of 6"),
    ("fsdp-tokenizer", ["info", "{root}/ok.yaml", "--set", "tokenizers.vq.train.parallel=fsdp"], {},
     "parallel: fsdp shards priors and critics; tokenizers train with ddp"),
    ("unknown-parallel", ["info", "{root}/ok.yaml", "--set", "priors.main.train.parallel=zero"], {},
     "priors.main.train.parallel: Input should be 'ddp' or 'fsdp' (got 'zero')"),
    ("accumulate-zero", ["info", "{root}/ok.yaml", "--set", "priors.main.train.accumulate=0"], {},
     "priors.main.train.accumulate: Input should be greater than or equal to 1 (got 0)"),
    ("collective-timeout-not-seconds", ["train", "{root}/ok.yaml", "--set", "run.dir={fresh}"],
     {"WORLD_SIZE": "2", "STRATAGEN_COLLECTIVE_TIMEOUT": "ten"},
     "STRATAGEN_COLLECTIVE_TIMEOUT='ten': a number of seconds, at least 1 and"),
    ("unknown-allowed-plugin", ["plugins"], {"STRATAGEN_PLUGINS": "schedules,nosuch"},
     "STRATAGEN_PLUGINS: no installed plugin is named 'nosuch'"),
    ("unknown-disabled-plugin", ["info", "{root}/ok.yaml"], {"STRATAGEN_DISABLE_PLUGINS": "nosuch"},
     "STRATAGEN_DISABLE_PLUGINS: no installed plugin is named 'nosuch'"),
    # compare configs
    ("compare-variant-without-source", ["compare", "{root}/no_source.yaml"], {}, "give exactly one of 'config' or 'run'"),
    ("compare-negative-steps", ["compare", "{root}/bad_sweep.yaml"], {}, "sweeps"),
    ("compare-zero-temperature", ["compare", "{root}/zero_temperature.yaml"], {}, "temperature"),
]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def immutable(path: Path, on: bool) -> bool:
    """Make ``path`` read-only even for root (``chattr +i``), or chmod it; False if neither works."""
    try:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        path.chmod(0o555 if on else 0o755)
    probe = path / ".probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    return not on


@pytest.mark.parametrize("argv,env,fragment", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_clean_line_and_changes_nothing(workspace, tmp_path, capsys, monkeypatch, argv, env,
                                                         fragment):
    readonly = tmp_path / "readonly-run"
    if "{readonly}" in argv:
        shutil.copytree(workspace / "run", readonly)
        assert immutable(readonly, True), "cannot make a read-only directory here"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if any(key.startswith("STRATAGEN_") for key in env):
        monkeypatch.setattr(manager, "_default", None)  # load the plugins afresh under this environment
    before = snapshot(workspace)
    try:
        try:
            code = cli.main([a.format(root=workspace, run=workspace / "run", readonly=readonly, fresh=tmp_path / "run")
                                 for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    finally:
        if readonly.exists():
            immutable(readonly, False)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert fragment in errors[0], errors[0]
    after = snapshot(workspace)
    assert {k: after.get(k) for k in before} == before  # nothing changed, nothing lost
    assert not (workspace / "MARKER").exists()  # no code in a weights file ran (tests/io/test_weights_files.py
    # shows that unpickling such a file does run it)


def test_a_real_process_prints_one_line(workspace):
    exe = Path(sys.executable).with_name("stratagen")
    result = subprocess.run([str(exe), "sample", str(workspace / "run"), "--classes", "a,b"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
