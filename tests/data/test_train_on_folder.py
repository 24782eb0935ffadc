"""Training straight from an image folder with a corrupt and a non-image file in it."""
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from stratagen import api
from stratagen.io.tokens import TokenCache
from tinyconfigs import tiny_config, write_config


def test_folder_with_a_corrupt_and_a_non_image_file_trains_and_reports_both(tmp_path: Path, caplog) -> None:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    (root / "class1" / "corrupt.png").write_bytes(rng.bytes(300))
    (root / "class2" / "labels.csv").write_text("id,label\n")
    config = tiny_config(tmp_path / "run")
    config["data"] = {"name": "imagefolder", "root": str(root), "num_classes": 4, "resolution": 16}
    config["loader"] = {"views": 2, "workers": 0}
    with caplog.at_level(logging.WARNING, logger="stratagen"):
        api.train(api.load(str(write_config(tmp_path / "c.yaml", config))))
    bad = {str(root / "class1/corrupt.png"), str(root / "class2/labels.csv")}
    assert {m for m in bad if any(m in r.getMessage() for r in caplog.records)} == bad
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tb")); events.Reload()
    assert events.Scalars("tokenizer/vq/data/skipped_files")[-1].value == 2
    cache = TokenCache(str(tmp_path / "run/tokens/vq/train")).open()
    assert len(cache) == 26 and cache.views == 2  # 24 images + 2 stand-ins for the bad files
    grids, _ = cache.gather(np.arange(26), np.ones(26, dtype=np.int64))
    centre, _ = cache.gather(np.arange(26), np.zeros(26, dtype=np.int64))
    assert not np.array_equal(grids["tokens"].numpy(), centre["tokens"].numpy())  # a cropped view is not the centre
