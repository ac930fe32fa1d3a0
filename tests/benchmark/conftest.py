"""Fixtures of the benchmark tests: the shipped release and surrogates (real data), and the device they share."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwgpt_bench.surrogates_onnx.runtime import read_manifest

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "dataset"
SPACE = "gpt-nano"


def nano_device() -> str:
    """A device with a shipped gpt-nano latency model (the first in the manifest) that the release measured."""
    devices = [m["device"] for m in read_manifest()["models"]
               if m["space"] == SPACE and m["metric"] == "latency_ms" and m.get("default_workload")]
    return devices[0]


@pytest.fixture(scope="session")
def device() -> str:
    return nano_device()


@pytest.fixture(scope="session")
def release() -> Path:
    return RELEASE
