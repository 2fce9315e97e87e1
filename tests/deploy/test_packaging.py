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
    packages = [  # every package of the source tree, found on disk
        init.parent.relative_to(ROOT).as_posix()
        for top in ("echocam", "worker", "producer", "echocam_cli")
        for init in (ROOT / top).rglob("__init__.py")
    ]
    assert {"echocam/bucket", "echocam/signal", "echocam/explain", "echocam/run"} <= set(packages)
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    for data in ("templates", "static"):  # the viewer's files
        shipped = {n for n in names if n.startswith(f"echocam/view/{data}/")}
        on_disk = {f.relative_to(ROOT).as_posix() for f in (ROOT / "echocam/view" / data).iterdir()}
        assert shipped == on_disk, data
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "echocam = echocam_cli:entry" in zipfile.ZipFile(wheel).read(entry).decode()
