"""The wheel (as the Docker images install it) holds every package and data file."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_the_colormap_tables_and_every_package(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("echo_cam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"echocam/signal/colormaps/magma.npy", "echocam/signal/colormaps/plasma.npy"} <= names
    for package in ("echocam", "echocam/colormaps", "worker", "producer", "echocam_cli"):
        assert f"{package}/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "echocam = echocam_cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
