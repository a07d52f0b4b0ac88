"""LightningDataModule over MMEdit splits (or the embedded world, which has the same format)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from unike_pl.backbones.loader import BackboneConfig, load_encoder
from unike_pl.backbones.prompts import VQA_TEMPLATE
from unike_pl.data.cases import CrossTaskDataset, EditCollator, MMEditDataset, wrapped_cases
from unike_pl.data.fingerprint import split_fingerprint
from unike_pl.data.mmedit import MMEditSplit, read_mmedit, under_root
from unike_pl.data.sharding import eval_sampler
from unike_pl.errors import UserError
from unike_pl.settings import require_positive


class MMEditDataModule(L.LightningDataModule):
    """E-VQA or E-IC: `train_file` for methods that learn, `eval_file` for validate/test/predict."""

    def __init__(
        self,
        eval_file: str,
        image_root: str = "images",
        rephrase_image_root: str = "images_rephrase",
        root: str = ".",
        backbone: BackboneConfig | None = None,
        task: str = "vqa",
        train_file: str | None = None,
        use_template: bool = False,
        batch_size: int = 1,
        train_batch_size: int | None = None,
        num_workers: int = 0,
        limit: int | None = None,
        cross_task_file: str | None = None,
        cross_task: str = "caption",
        cross_task_every: int = 3,
        allow_outside_roots: bool = False,
    ) -> None:
        """
        Args:
            eval_file: MMEdit JSON list scored by validate, test and predict.
            image_root: folder the `image` and `m_loc` paths are relative to (COCO in MMEdit).
            rephrase_image_root: folder the `image_rephrase` paths are relative to.
            root: the dataset's folder: every relative path of the run's data (these files and image
                roots, and the model's memory sources and demonstrations) is inside it, so that one
                `--data.init_args.root` moves a run to another copy of the data (absolute paths are kept).
            backbone: the model whose tokenizer, image processor and prompt format encode the batches;
                None: the model's own (`model.init_args.backbone`), which is how the configs name it.
            task: "vqa" (E-VQA) or "caption" (E-IC).
            train_file: MMEdit JSON list for training (knowledge memory, trained editors).
            use_template: wrap VQA questions as `Question: {} Short answer:` (recorded in results).
            batch_size: records per batch (editing methods use 1: one edit at a time).
            train_batch_size: records per batch while fitting (training and its validation);
                None: `batch_size`.
            num_workers: DataLoader worker processes.
            limit: use only the first `limit` records of each split.
            cross_task_file: cross-task editing: an eval split of the other task mixed into the stream
                (same image roots); with batch_size T, each sequence of T edits mixes both tasks.
            cross_task: the task of `cross_task_file`.
            cross_task_every: one edit in `cross_task_every` comes from `cross_task_file` (3 = 1:2).
            allow_outside_roots: read image paths that are absolute or contain `..` (refused by default:
                they lead outside the image roots).
        """
        super().__init__()
        require_positive("data", batch_size=batch_size, train_batch_size=train_batch_size, limit=limit)
        # The backbone is the model's hyperparameter (loggers merge both sets and refuse two values).
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.root = root
        self.task = task
        self.use_template = use_template
        self.files = {
            name: None if file is None else under_root(root, file)
            for name, file in (("train", train_file), ("eval", eval_file), ("cross", cross_task_file))
        }
        self.roots = (Path(under_root(root, image_root)), Path(under_root(root, rephrase_image_root)))
        self.datasets: dict[str, MMEditDataset | CrossTaskDataset] = {}

    @property
    def backbone_config(self) -> BackboneConfig:
        """The backbone that encodes the batches: this module's, or else the model's."""
        if self.backbone is not None:
            return self.backbone
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or getattr(model, "backbone_config", None) is None:
            raise UserError("data.init_args.backbone is not set and the model names no backbone")
        return model.backbone_config

    def _read(self, file: str, task: str) -> MMEditSplit:
        return read_mmedit(file, task, *self.roots, allow_outside_roots=self.hparams.allow_outside_roots)

    def result_settings(self) -> dict[str, object]:
        """What the scores depend on from the data side, written beside every score."""
        wrapped = wrapped_cases(self.task, self.use_template)
        return {
            "task": self.task,
            "eval_file": self.files["eval"],
            "image_root": str(self.roots[0]),
            "rephrase_image_root": str(self.roots[1]),
            "limit": self.hparams.limit,
            **self._split_counts(),
            "prompt_template": VQA_TEMPLATE if wrapped else "none",
            "templated_cases": wrapped,
            # Editing methods apply a batch's edits one after another: 1 = one-step, T = sequential.
            "sequence_length": self.hparams.batch_size,
            "cross_task_file": self.files["cross"],
        }

    def _split_counts(self) -> dict[str, int]:
        """Records of the eval split served (after `limit`) and skipped when read (an empty `alt`)."""
        if self._eval_split not in self.datasets:
            return {}
        splits = [self.datasets["eval"].split]
        if "cross" in self.datasets:
            splits.append(self.datasets["cross"].mixed.split)
        return {
            "eval_records": len(self.datasets[self._eval_split]),
            "skipped_records": sum(split.skipped_empty_alt for split in splits),
        }

    def fingerprint(self) -> dict[str, object]:
        """What the scores depend on from the data's contents: the hashes of the eval split's file and
        images (and of the cross-task split's), wherever they lie."""
        if "eval" not in self.datasets:
            raise RuntimeError("fingerprint() needs the eval split: call setup() first")
        parts = {"eval": split_fingerprint(self.datasets["eval"].split)}
        if "cross" in self.datasets:
            parts["cross_task"] = split_fingerprint(self.datasets["cross"].mixed.split)
        return parts

    def setup(self, stage: str) -> None:
        self.collator = EditCollator(load_encoder(self.backbone_config))
        wanted = ["train", "eval"] if stage == "fit" else ["eval"]
        for split in wanted:
            file = self.files[split]
            if file is None:
                raise UserError(f"stage {stage!r} needs data.{split}_file")
            if split not in self.datasets:
                records = self._read(file, self.task)
                self.datasets[split] = MMEditDataset(records, self.use_template, self.hparams.limit)
        if "eval" in wanted and self.files["cross"] and "cross" not in self.datasets:
            mixed = self._read(self.files["cross"], self.hparams.cross_task)
            self.datasets["cross"] = CrossTaskDataset(
                self.datasets["eval"],
                MMEditDataset(mixed, self.use_template, self.hparams.limit),
                self.hparams.cross_task_every,
            )

    def eval_groups(self) -> tuple[str, ...]:
        """The labelled groups (`group` field) of the records validate/test/predict serve, sorted; empty
        for data without groups. Read from the whole split, so every process gets the same groups."""
        if self._eval_split not in self.datasets:
            raise RuntimeError("eval_groups() needs the eval split: call setup() first")
        groups = self.datasets[self._eval_split].record_groups
        return tuple(sorted({group for group in groups if group is not None}))

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        train_batch_size = self.hparams.train_batch_size or self.hparams.batch_size
        batch_size = train_batch_size if fitting else self.hparams.batch_size
        # Not Lightning's padded per-record sampler for evaluation: see unike_pl.data.sharding.
        sampler = None if split == "train" else eval_sampler(self.datasets[split], batch_size, self.trainer)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=self.collator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @property
    def _eval_split(self) -> str:
        return "cross" if self.hparams.cross_task_file else "eval"

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._eval_split)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._eval_split)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._eval_split)
