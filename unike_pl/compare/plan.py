"""The comparison plan: every method × protocol as a composed `validate` config, and the fits they need.

A comparison config names a base editing config (trainer, data, backbone, scoring), the protocols (data
settings), the methods (model settings, optionally taken from another config, and the checkpoint they edit
with) and the fits that produce those checkpoints. Each run's composed config is written to its own
folder (`run.yaml`), so any cell of the table can be rerun alone with
`python -m unike_pl validate --config .../run.yaml`.

`seeds` (protocol → list of seeds) repeats a protocol's cells with other editing seeds, for a mean and a
standard deviation per cell: the run of the base config's own seed (`seed_everything`) is the cell's
folder as usual, every other seed `s` sets `seed_everything` and the editing module's `seed` to `s` and
runs in the cell's `seed_<s>/` folder. The seed draws what is random in an edit (UniKE's memory sample and
key jitter, the random-ζ control); fitted checkpoints (encoders, MEND, SERAC, the router) are shared.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ComparisonConfigError(ValueError):
    """A comparison config that cannot be run; the message names the file and the entry."""


@dataclass(frozen=True)
class Prerequisite:
    config: str
    checkpoint: str


@dataclass(frozen=True)
class Run:
    method: str
    protocol: str
    folder: Path
    config: dict[str, Any]
    ckpt_path: str | None
    seed: int = 0

    @property
    def result_file(self) -> Path:
        return self.folder / "results" / "run_val.json"


@dataclass(frozen=True)
class Plan:
    output_dir: Path
    prerequisites: list[Prerequisite]
    runs: list[Run]
    methods: list[str]
    protocols: list[str]
    encoders_checkpoint: str | None
    """The DisentangleModule checkpoint whose spaces are drawn (None: no projection plot)."""
    base_model: dict[str, Any]
    """The base config's model settings (backbone, memory): what the drawn spaces were trained on."""
    data_root: str = "."
    """The base config's dataset folder (`data.init_args.root`), which the memory's sources are inside."""
    sweep: Sweep | None = None
    """A setting swept across the methods, drawn as scores against its value (`sweep.png`)."""


@dataclass(frozen=True)
class Sweep:
    """Methods that differ in one setting: `label` names it, `values` gives each method's value. Methods
    without one (the dynamic α of the α sweep) are drawn as horizontal references."""

    label: str
    values: dict[str, float]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _load_yaml(path: str | Path, source: Path, entry: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ComparisonConfigError(f"{source}: {entry} names {file}, which does not exist")
    return yaml.safe_load(file.read_text())


def _require(mapping: dict[str, Any], key: str, source: Path, entry: str) -> Any:
    if key not in mapping:
        raise ComparisonConfigError(f"{source}: {entry} has no {key!r}")
    return mapping[key]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` deep-merged into a copy of `base` (an explicit None replaces a whole entry)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _model(base: dict[str, Any], method: dict[str, Any], source: Path, entry: str) -> dict[str, Any]:
    """The method's model block: its own config's model if it names one, else the base model; then its
    overrides. A different module class keeps only the shared settings (backbone, scoring)."""
    model = base["model"]
    if "model_from" in method:
        model = _load_yaml(method["model_from"], source, entry)["model"]
    override = method.get("model", {})
    if "class_path" in override and override["class_path"] != model["class_path"]:
        shared = {k: v for k, v in model.get("init_args", {}).items() if k in ("backbone", "scoring")}
        model = {"class_path": override["class_path"], "init_args": shared}
    return _merge(model, override)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed config."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _seeds(settings: dict[str, Any], protocols: dict[str, Any], source: Path) -> dict[str, list[int]]:
    """The `seeds` entry checked: known protocols, each a non-empty list of distinct integers."""
    seeds = settings.get("seeds") or {}
    if not isinstance(seeds, dict):
        raise ComparisonConfigError(f"{source}: seeds must map protocols to lists of seeds")
    for protocol, values in seeds.items():
        if protocol not in protocols:
            raise ComparisonConfigError(f"{source}: seeds names no protocol {protocol!r}")
        valid = isinstance(values, list) and values and all(type(v) is int for v in values)
        if not valid or len(set(values)) != len(values):
            raise ComparisonConfigError(
                f"{source}: seeds of {protocol!r} must be a non-empty list of distinct integers, "
                f"not {values!r}"
            )
    return seeds


def _seeded(run: Run, seed: int) -> Run:
    """`run` repeated with editing seed `seed` in its `seed_<seed>/` folder."""
    folder = run.folder / f"seed_{seed}"
    config = copy.deepcopy(run.config)
    config["seed_everything"] = seed
    config["model"]["init_args"]["seed"] = seed
    _place(config, folder)
    return Run(run.method, run.protocol, folder, config, run.ckpt_path, seed)


def _place(config: dict[str, Any], folder: Path) -> None:
    """Point a composed config's edits, logs and results at `folder`."""
    config["model"]["init_args"]["edits_dir"] = str(folder / "edits")
    config["trainer"]["default_root_dir"] = str(folder)
    config["trainer"]["callbacks"] = [
        c for c in config["trainer"].get("callbacks", []) if not c["class_path"].endswith("ResultsReport")
    ] + [
        {
            "class_path": "unike_pl.callbacks.ResultsReport",
            "init_args": {"output_dir": str(folder / "results"), "run_name": "run"},
        }
    ]


def build_plan(
    path: str | Path, methods: list[str] | None = None, protocols: list[str] | None = None
) -> Plan:
    """The runs of the comparison config at `path`, optionally restricted to some methods and protocols."""
    source = Path(path)
    settings = _load_yaml(source, source, "the command line")
    base = _load_yaml(_require(settings, "base", source, "the file"), source, "base")
    runs_dir = Path(settings.get("runs_dir", "runs/comparison"))
    all_methods = _require(settings, "methods", source, "the file")
    all_protocols = _require(settings, "protocols", source, "the file")
    for wanted, known, kind in ((methods, all_methods, "method"), (protocols, all_protocols, "protocol")):
        unknown = sorted(set(wanted or []) - set(known))
        if unknown:
            raise ComparisonConfigError(f"{source}: no {kind} {unknown}; known: {', '.join(known)}")
    seeds = _seeds(settings, all_protocols, source)
    base_seed = base.get("seed_everything", 0)
    runs = []
    for name in methods or list(all_methods):
        method = all_methods[name] or {}
        model = _model(base, method, source, f"method {name!r}")
        for protocol in protocols or list(all_protocols):
            if protocol in method.get("skip_protocols", []):
                continue
            folder = runs_dir / slug(name) / slug(protocol)
            config = copy.deepcopy(base)
            config["model"] = copy.deepcopy(model)
            data_args = config["data"]["init_args"]
            data_args.update(all_protocols[protocol] or {})
            if settings.get("limit") is not None:
                data_args["limit"] = settings["limit"]
            _place(config, folder)
            run = Run(name, protocol, folder, config, method.get("ckpt_path"), base_seed)
            runs.append(run)
            runs += [_seeded(run, seed) for seed in seeds.get(protocol, []) if seed != base_seed]
    prerequisites = [
        Prerequisite(
            _require(item, "config", source, "a prerequisite"),
            _require(item, "checkpoint", source, "a prerequisite"),
        )
        for item in settings.get("prerequisites", [])
    ]
    # Needed when a run names the checkpoint: as its --ckpt_path or in its settings (LDKE's router).
    used = {run.ckpt_path for run in runs} | {settings.get("encoders_checkpoint")}
    used |= {value for run in runs for value in _strings(run.config)}
    prerequisites = [item for item in prerequisites if item.checkpoint in used]
    sweep = None
    if "sweep" in settings:
        entry = settings["sweep"]
        values = {name: float(value) for name, value in _require(entry, "values", source, "sweep").items()}
        unknown = sorted(set(values) - set(all_methods))
        if unknown:
            raise ComparisonConfigError(f"{source}: sweep values name no method {unknown}")
        sweep = Sweep(str(_require(entry, "label", source, "sweep")), values)
    return Plan(
        sweep=sweep,
        output_dir=Path(settings.get("output_dir", "results/comparison")),
        prerequisites=prerequisites,
        runs=runs,
        methods=list(dict.fromkeys(run.method for run in runs)),
        protocols=list(dict.fromkeys(run.protocol for run in runs)),
        encoders_checkpoint=settings.get("encoders_checkpoint"),
        base_model=base["model"]["init_args"],
        data_root=base.get("data", {}).get("init_args", {}).get("root", "."),
    )
