"""The layers stay apart (read from the source's imports, function-level ones included):
`issue_platform/` is plain Python (no Beam, nothing from the layers above it), `transforms/` are
Beam composites that take plain values (nothing from `pipelines/`), and `pipelines/options.py`
imports from Beam only what declares options."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imports(path: pathlib.Path) -> set:
    """Every module a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
    return found


def _under(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("layer, forbidden", [
    ("issue_platform", ("apache_beam", "transforms", "pipelines")),
    ("transforms", ("pipelines",)),
])
def test_a_layer_imports_nothing_from_above_it(layer, forbidden):
    files = sorted((ROOT / layer).glob("*.py"))
    assert len(files) > 5
    reaching_up = {f"{path.name}: {module}" for path in files for module in imports(path)
                   if _under(module, forbidden)}
    assert reaching_up == set()


def test_options_import_from_beam_only_what_declares_options():
    beam = {m for m in imports(ROOT / "pipelines" / "options.py") if _under(m, ("apache_beam", "transforms"))}
    assert beam == {"apache_beam.options.pipeline_options"}


def test_the_walk_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text("import os\n\ndef f():\n    from apache_beam import pvalue\n")
    assert imports(path) == {"os", "apache_beam"}
