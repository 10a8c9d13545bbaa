"""Proteus: continual fine-tuning of pre-trained backbones.

    import proteus
    config = proteus.load_config("configs/offline/vision-fmnist-mnist.yaml", ["learner.name=simplecil"])
    results = proteus.run(config)          # learns every task, writes runs/<name>/
    model = proteus.load_model(f"runs/{config.name}/model")
    model.predict(images)                  # class names among all classes seen
"""

__version__ = "0.1.0"

from .config import ConfigError, RunConfig, load_config  # noqa: E402
from .engine import run  # noqa: E402
from .model import ProteusModel, load_model  # noqa: E402

__all__ = ["ConfigError", "ProteusModel", "RunConfig", "__version__", "load_config", "load_model",
           "run"]
