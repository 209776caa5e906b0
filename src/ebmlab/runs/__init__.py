"""The run layer: everything the command line does, from Python, on one API.

```python
from ebmlab import runs
cfg = runs.TrainConfig.resolve(data="eight_gaussians", method="pcd", seed=0, max_seconds=30, steps=10**6)
run = runs.train(cfg, out="runs/eg", callbacks=[runs.ProgressPrinter()])
run = runs.Run.load("runs/eg")                 # runs made by `ebmlab train` alike
x = run.sample(2000, generator=g)              # the way it was trained
m = runs.evaluate(run, seed=0)                 # what `ebmlab evaluate --json` prints
cfg2 = runs.TrainConfig.from_file("runs/eg/config.json", steps=20_000)
```

A run directory holds ``config.json`` (``model``, ``data`` and ``train``
sections), ``checkpoint.safetensors`` (written atomically; loading never
unpickles) and ``metrics.jsonl``.
"""

from .callbacks import ProgressPrinter, TensorBoardLogger, progress_text
from .config import IMAGE_DATA, METHODS, SCORE_METHODS, TRAIN_DEFAULTS, ConfigError, TrainConfig
from .evaluate import evaluate, image_classifier
from .models import SCORE_KINDS, build_energy, image_score_config, load_data, load_image_data
from .run import CONFIG, Run, chain_sampler, load_run, save_config
from .sampling import SampleConfig, sample
from .train import train

__all__ = [
    "CONFIG",
    "ConfigError",
    "IMAGE_DATA",
    "METHODS",
    "ProgressPrinter",
    "Run",
    "SCORE_KINDS",
    "SCORE_METHODS",
    "SampleConfig",
    "TRAIN_DEFAULTS",
    "TensorBoardLogger",
    "TrainConfig",
    "build_energy",
    "chain_sampler",
    "evaluate",
    "image_classifier",
    "image_score_config",
    "load_data",
    "load_image_data",
    "load_run",
    "progress_text",
    "sample",
    "save_config",
    "train",
]
