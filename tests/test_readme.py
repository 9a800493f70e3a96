from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = ROOT.joinpath("README.md").read_text()
    block = readme.split("<!-- ci:test -->", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    ci_lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [block]
    assert "pytest" in block
