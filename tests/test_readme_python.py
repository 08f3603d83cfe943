"""The README's "Use from Python" example runs as written (on the bundled data)."""
import os
import re

from tests.conftest import ROOT


def readme_python_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_searches_and_retrains(tmp_path, monkeypatch, capsys):
    # Its relative paths (data/, output/) resolve in a scratch folder that sees the data.
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_python_example(), "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["found"]["final_selection"] is True
    assert namespace["final"]["arc"] == namespace["found"]["best_arc"]
    assert 0.0 <= namespace["final"]["test_accuracy"] <= 1.0
    assert (tmp_path / "output" / "py_final" / "model").is_dir()
