"""`python -m unike_pl {fit,validate,test,predict} --config configs/<run>.yaml`: the LightningCLI."""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI


class UnikeCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule selectable by `class_path`."""


def main(args: list[str] | None = None) -> UnikeCLI:
    # Tokenizers' own thread pool fights DataLoader workers for the few cores we have.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return UnikeCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
