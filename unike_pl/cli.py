"""`python -m unike_pl {fit,validate,test,predict} --config configs/<run>.yaml`: the LightningCLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from unike_pl.errors import UserError, exit_on_user_error, read_torch_file
from unike_pl.knowledge.index import check_faiss_install
from unike_pl.noise import quiet_third_party

STOPPED_BY_SIGTERM = 143
"""Exit code of a run stopped by SIGTERM (128 + the signal's number, as shells report it)."""


class UnikeCLI(LightningCLI):
    """LightningCLI with any LightningModule / LightningDataModule selectable by `class_path`.

    `--ckpt_path` may name a checkpoint of another module than the configured one: an EditingModule
    loads the encoders of a DisentangleModule checkpoint. LightningCLI would replace the configured
    settings by the checkpoint's class and hyperparameters; here that only happens when `fit` resumes a
    run of the same module. `validate`/`test` take the weights from the checkpoint and every setting
    from the config and the command line (a protocol, a results folder), never silently from the
    checkpoint.
    """

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand != "fit":
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            hparams = read_checkpoint(ckpt_path).get("hyper_parameters", {})
            stored = hparams.get("_class_path")
            configured = self.config[subcommand].get("model", {}).get("class_path")
            if stored is not None and configured is not None and stored != configured:
                return
        super()._parse_ckpt_path()

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # The table of `ResultsReport` replaces Lightning's table of every logged value
            # (`--verbose true` brings it back).
            parser.set_defaults(verbose=False)
        return parser

    def _run_subcommand(self, subcommand: str) -> None:
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in CHECKPOINT_ALIASES:
            read_checkpoint(ckpt_path)  # fails naming the file, before Lightning's own reader
        super()._run_subcommand(subcommand)


DESCRIPTION = (
    "Knowledge editing for multimodal LLMs (UniKE, LDKE and the usual baselines): `fit` builds the "
    "knowledge memory and trains what a method learns, `validate`/`test` edit an MMEdit split and score "
    "it. Every run takes a config from configs/ (--config) and any of its values on the command line."
)

CHECKPOINT_ALIASES = ("last", "best", "hpc", "registry")
"""`--ckpt_path` values that Lightning resolves itself instead of naming a file."""


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint (memory-mapped: only what is looked at is read), or a named error."""
    checkpoint = read_torch_file(path, "a Lightning checkpoint", map_location="cpu", mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def main(args: list[str] | None = None) -> UnikeCLI:
    # Tokenizers' own thread pool fights DataLoader workers for the few cores we have.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_third_party()
    check_faiss_install()
    try:
        return UnikeCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "python -m unike_pl", "description": DESCRIPTION},
        )
    except SIGTERMException:
        # Lightning stops after the current batch and would exit 0 as if the run had finished.
        print(
            "stopped by SIGTERM after the current edit: partial results written, rerun to resume",
            file=sys.stderr,
        )
        sys.exit(STOPPED_BY_SIGTERM)


def run() -> None:
    """The command line: `main`, with user errors printed on one line (exit 2; `--debug` shows the
    traceback)."""
    exit_on_user_error(main)()
