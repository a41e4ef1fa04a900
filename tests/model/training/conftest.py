"""Fixtures for the train/eval tests: one small generated MVTec-style tree per session,
the tiny backbone at 112 px (7 x 7 patches), and a CLI runner with train + eval."""

from __future__ import annotations

import dataclasses

import pytest
import torch

IMAGE_SIZE = 112  # vip2-tiny has 16 px patches: 7 x 7 tokens, fast on 2 cores
CATEGORIES = ("disc", "carpet_like")


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    torch.set_num_threads(2)  # 2 cores shared by several helpers


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> str:
    """2 categories x (4 good + 4 defective, one per defect type) = 16 labelled images."""
    from vip2scan.model.data.synthetic import write_mvtec_tree

    root = str(tmp_path_factory.mktemp("data") / "mvtec")
    return write_mvtec_tree(root, categories=CATEGORIES, n_good=4, n_defect=1, size=128, seed=1)


@pytest.fixture(scope="session")
def records(tree) -> list[dict]:
    from vip2scan.model.data.readers import read_dataset

    return [dataclasses.asdict(s) for s in read_dataset(tree)]


@pytest.fixture(scope="session")
def model_config() -> dict:
    from vip2scan.model.config import DetectorConfig

    return DetectorConfig(image_size=IMAGE_SIZE).to_dict()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, records, model_config) -> dict:
    """2 epochs of `--workers 0` training, in-process: {epoch: metrics} and the output root.
    Ray runs and resumed runs are compared against these numbers."""
    from vip2scan.model.training.loop import Session, TrainSettings, train_loop

    out = str(tmp_path_factory.mktemp("reference") / "ckpt")
    seen: dict[int, dict] = {}
    settings = TrainSettings(out=out, records=records, model=model_config, epochs=2)
    train_loop(settings, Session(on_epoch=lambda m: seen.__setitem__(m["epoch"], m)))
    return {"out": out, "epochs": seen}


@pytest.fixture()
def cli():
    """Invoke `vip2scan train|eval ...` on the real app, in-process; returns the Result."""
    from typer.testing import CliRunner

    from vip2scan.jobs.cli import app

    def invoke(*args: str):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke
