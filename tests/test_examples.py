"""Every script in examples/ runs to completion (on a temporary default store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.children import REPO_ROOT

EXAMPLES = sorted((Path(REPO_ROOT) / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_the_example_runs(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}

    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip(), "the example printed nothing"
    assert "Traceback" not in completed.stderr
    assert (tmp_path / "dashpersist" / "dashpersist.db").exists()
