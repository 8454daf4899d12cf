"""Set up a virtual environment when needed, then run a task: ``python3 dev.py TASK [args...]``.

Tasks: ``demo``, ``test``, ``bench``, ``docs`` (the documentation site, in docs/_build/html).

Needs only Python >= 3.11 with pip.  The environment lives in ``.venv`` and is reinstalled when
``pyproject.toml`` changes.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
EXTRAS = {"demo": "", "test": "[test]", "bench": "[test,bench]", "docs": "[docs]"}
DOCS = ROOT / "docs"


def ensure_env(extras):
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".installed{extras or '[]'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print(f"installing ccmc_estim{extras} into {VENV}", flush=True)
        subprocess.run(
            [PY, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}{extras}"], check=True
        )
        stamp.write_text(digest)


def main(argv):
    task = argv[0] if argv else "test"
    if task not in EXTRAS:
        sys.exit(f"usage: python3 dev.py [{'|'.join(EXTRAS)}] [args...]")
    ensure_env(EXTRAS[task])
    rest = argv[1:]
    if task == "demo":
        cmd = [BIN / "ccmc-estim", "demo", *rest]
    elif task == "test":
        cmd = [PY, "-m", "pytest", *rest]
    elif task == "docs":  # offline; warnings are errors; output in docs/_build/html/index.html
        cmd = [PY, "-m", "sphinx", "-W", "--keep-going", "-E", "-b", "html",
               DOCS, DOCS / "_build" / "html", *rest]
    else:
        cmd = [PY, ROOT / "benchmarks" / "bench_fit.py", *rest]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
