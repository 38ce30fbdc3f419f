"""The package's own files agree with each other: dependencies, entry points, CI."""

import ast
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
# conda-forge spells a few packages differently from PyPI
CONDA_TO_PYPI = {"pytorch": "torch"}


def _split(requirement):
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement.strip()).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return dict(_split(r) for r in requirements)


def _environment_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for item in env["dependencies"]:
        entries = item["pip"] if isinstance(item, dict) else [item]
        for entry in entries:
            if entry.startswith("-e") or entry.split(">")[0].split("=")[0] in ("python", "pip"):
                continue
            name, spec = _split(entry)
            found[CONDA_TO_PYPI.get(name, name)] = spec
    return found


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    pyproject = _pyproject_requirements()
    environment = _environment_requirements()
    assert sorted(set(pyproject) - set(environment)) == [], "missing from environment.yml"
    assert sorted(set(environment) - set(pyproject)) == [], "missing from pyproject.toml"
    for name, spec in pyproject.items():
        assert environment[name] == spec, f"{name}: pyproject {spec!r} vs environment.yml"


def test_console_script_points_at_cli_main():
    from spml_lab import cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["spml-lab"] == "spml_lab.cli:main"
    assert callable(cli.main)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    commands = [
        line for line in ci.splitlines() if line and not line.startswith(("#", "set", "cd"))
    ]
    assert commands == ["make test"]


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert notebook.name in readme, f"README does not list {notebook.name}"


def _package_trees(folders=("spml_lab",)):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text())


def test_no_module_hands_out_names_lazily():
    # a module __getattr__ hides where a name lives: the prefix must name the file to open
    lazy = [
        str(path)
        for path, tree in _package_trees()
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
    ]
    assert lazy == []


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{path}: from {node.module} import {alias.name}"
        for path, tree in _package_trees(("spml_lab", "tests", "benchmarks"))
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spml_lab")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


def test_version_is_written_once_in_the_package():
    # setuptools reads spml_lab.__version__ statically (attr), so it must stay a plain literal;
    # CITATION.cff cannot read it and is checked against it
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "spml_lab.__version__"
    tree = ast.parse((ROOT / "spml_lab" / "__init__.py").read_text())
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert len(versions) == 1 and re.fullmatch(r"\d+\.\d+\.\d+\S*", versions[0])
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == versions[0], "CITATION.cff names another version"


def test_pre_commit_hooks_run_offline():
    # CI reaches PyPI but not GitHub: every hook must come from the installed environment
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert {hook["language"] for hook in config["repos"][0]["hooks"]} == {"system"}


def test_readme_and_docs_link_only_to_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 210, "move detail to docs/"
