"""Bookkeeping of the camera benchmark (tools/bench_camera.py): its photo sets are real camera-shaped JPEGs the
board turns upright, one folder per class, disjoint by seed; `make bench` keeps its `camera` object."""

from __future__ import annotations

import json

from PIL import Image

import bench_report
import bench_camera


def test_camera_sets_are_upright_640x480_jpegs_per_class(tmp_path):
    from autlearn.intake.imaging import decode

    files = bench_camera.make_set(tmp_path / "s", 2, seed=7)
    assert len(files) == 2 * len(bench_camera.CLASS_NAMES)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [str(c) for c in range(6)]
    for path, c in files:
        assert path.parent.name == str(c) and path.name.startswith(bench_camera.CLASS_NAMES[c])
        raw = Image.open(path)
        assert raw.format == "JPEG"
        assert decode(path.read_bytes(), path.name, 1 << 24).size == bench_camera.PHOTO_SIZE  # turned upright
    again = bench_camera.make_set(tmp_path / "t", 2, seed=7)
    assert [p.read_bytes() for p, _ in again] == [p.read_bytes() for p, _ in files]  # deterministic
    other = bench_camera.make_set(tmp_path / "u", 2, seed=8)
    assert not {p.read_bytes() for p, _ in other} & {p.read_bytes() for p, _ in files}


def test_make_bench_keeps_the_camera_object(tmp_path, monkeypatch):
    (tmp_path / "bench.json").write_text(json.dumps({"camera": {"round_over_floor": 1.2}, "old": 1}))
    monkeypatch.setattr(bench_report, "bench_markdown", lambda r: "")
    monkeypatch.setattr(bench_report, "plot_cost", lambda r, p: None)
    monkeypatch.setattr(bench_report, "plot_curve", lambda r, p: None)
    bench_report.write_reports({"new": 2}, tmp_path)
    out = json.loads((tmp_path / "bench.json").read_text())
    assert out == {"new": 2, "camera": {"round_over_floor": 1.2}}
