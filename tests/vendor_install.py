"""Install a throwaway vendor package with pip into its own target directory (no network, no deps),
exactly as a vendor's package would be built; tests then put the target on sys.path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_install_target(package_dir: Path, target: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package_dir),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target
