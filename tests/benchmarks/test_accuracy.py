"""The accuracy benchmark's runner: parallel runs, a deadline, and the GPU table's own block."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import accuracy

ONE_SET = ["--datasets", "nuclei2d", "--annotations", "points", "--densities", "sparse"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_parallel_runs_write_every_record_once_and_the_report(tmp_path):
    results, markdown = tmp_path / "results.jsonl", tmp_path / "benchmarks.md"
    argv = [*ONE_SET, "--methods", "rf", "--seeds", "0", "1", "--jobs", "2", "--results", str(results)]
    assert accuracy.main([*argv, "--markdown", str(markdown), "--plot", ""]) == 0
    records = _records(results)
    assert sorted(r["key"] for r in records) == ["nuclei2d|points/sparse|rf|0", "nuclei2d|points/sparse|rf|1"]
    assert all(0.5 < r["dice"]["any"] <= 1.0 for r in records)
    # The forest is seeded: its Dice does not depend on the process it ran in.
    serial = tmp_path / "serial.jsonl"
    accuracy.main(
        [
            *ONE_SET,
            "--methods",
            "rf",
            "--seeds",
            "1",
            "--results",
            str(serial),
            "--markdown",
            "",
            "--plot",
            "",
        ]
    )
    by_key = {r["key"]: r for r in records}
    assert _records(serial)[0]["dice"] == by_key["nuclei2d|points/sparse|rf|1"]["dice"]
    text = markdown.read_text()
    assert accuracy.MARKERS[0] in text and "ilastik-equivalent RF" in text
    assert accuracy.GPU_MARKERS[0] not in text


def test_stop_after_starts_no_more_runs_and_empty_paths_write_nothing(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    plot = accuracy.ROOT / "docs" / "accuracy.png"
    before = plot.stat().st_mtime_ns if plot.exists() else None
    argv = [*ONE_SET, "--methods", "rf", "--seeds", "0", "1", "2", "--stop-after", "0.001"]
    assert accuracy.main([*argv, "--results", str(results), "--markdown", "", "--plot", ""]) == 0
    assert (plot.stat().st_mtime_ns if plot.exists() else None) == before  # '' = no plot
    assert len(_records(results)) <= 1  # the first may start before the clock runs out
    assert "--stop-after" in capsys.readouterr().out


def test_gpu_results_go_to_their_own_block_and_name_the_hardware(tmp_path):
    record = {
        "dataset": "nuclei2d",
        "annotation": "points/sparse",
        "seed": 0,
        "labelled_percent": 0.05,
        "threads": 2,
        "wall": 31.0,
        "seconds": 30.0,
        "hardware": "one NVIDIA H200 and 2 CPU threads",
    }
    lines = [
        record | {"key": "a", "method": "rf", "dice": {"any": 0.78}, "seconds": 1.0},
        record | {"key": "b", "method": "pce", "dice": {"10": 0.80, "30": 0.82}},
        record | {"key": "c", "method": "defaults", "dice": {"10": 0.86, "30": 0.90}},
    ]
    results, markdown = tmp_path / "gpu.jsonl", tmp_path / "benchmarks.md"
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    markdown.write_text(f"# Benchmarks\n\n{accuracy.MARKERS[0]}\nthe CPU table\n{accuracy.MARKERS[1]}\n")
    argv = ["--device", "cuda", "--report-only", "--results", str(results), "--markdown", str(markdown)]
    assert accuracy.main([*argv, "--plot", str(tmp_path / "gpu.png")]) == 0
    text = markdown.read_text()
    assert "the CPU table" in text  # the CPU block is left alone
    gpu_block = text[text.index(accuracy.GPU_MARKERS[0]) :]
    assert "training on one NVIDIA H200 and 2 CPU threads" in gpu_block
    assert "Dice @ 10 s | Dice @ 30 s" in gpu_block and "| 0.900 |" in gpu_block
    assert (tmp_path / "gpu.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where there is no GPU")
def test_cuda_without_a_gpu_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        accuracy.main([*ONE_SET, "--device", "cuda", "--results", str(tmp_path / "r.jsonl")])
    assert "torch sees no CUDA device" in capsys.readouterr().err
