"""The mnist1d MLP under LightningCLI, every lightning-sas callback configured from YAML.

    python examples/mnist1d_cli.py fit --config examples/sas_config.yaml
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist1d_common import MLP, GeneratedMNIST1D  # noqa: E402
from pytorch_lightning.cli import LightningCLI  # noqa: E402


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(MLP, GeneratedMNIST1D, args=args)


if __name__ == "__main__":
    main()
