import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_usage_runs_as_written(capsys):
    text = README.read_text()
    block = re.search(r"## Usage\s+```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 20
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    rmse = float(re.search(r"RMSE of logits: ([0-9.e-]+)", out).group(1))
    assert rmse < 0.2


def test_quick_start_has_two_commands():
    text = README.read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    assert [ln.split("#")[0].strip() for ln in block.strip().splitlines()] == [
        "python3 dev.py demo",
        "python3 dev.py test",
    ]
