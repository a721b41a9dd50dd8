"""dvc.yaml declares exactly what each stage reads: its params (the registry's `Stage.params`, checked against
the params the stage's code reads) and its code (every labelsieve module the stage imports), so a change
reruns the stages it affects and no others. And params.yaml lists every param."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from labelsieve.config import ConfigError, Params, load_params
from labelsieve.stages import HOW, STAGES

REPO = Path(__file__).resolve().parents[1]
# Modules whose code cannot change a stage's results: writes, validation, errors, progress bars.
NEUTRAL = {"labelsieve/atomic.py", "labelsieve/config.py", "labelsieve/errors.py", "labelsieve/progress.py"}
# Folders dvc.yaml declares whole instead of file by file.
WHOLE = ("labelsieve/engine", "labelsieve/data")


def _module_path(dotted: str) -> Path | None:
    base = REPO / dotted.replace(".", "/")
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[Path]:
    """The labelsieve modules `path` imports (``from labelsieve.x import y`` may name a module y)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labelsieve"):
            for alias in node.names:
                module = _module_path(f"{node.module}.{alias.name}") or _module_path(node.module)
                if module is not None:
                    found.add(module)
        elif isinstance(node, ast.Import):
            found |= {m for a in node.names if a.name.startswith("labelsieve") if (m := _module_path(a.name))}
    return found


def code_closure(stage: str) -> set[str]:
    """Every labelsieve source file stage `stage` runs (transitively imported), as repo-relative paths."""
    todo, seen = [REPO / "labelsieve" / "stages" / f"{stage}.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [p for p in _imports(path) if p.name != "__init__.py" or p.parent.name != "stages"]
    relative = {str(p.relative_to(REPO)) for p in seen}
    return {p for p in relative if p not in NEUTRAL and not p.endswith("labelsieve/__init__.py")}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(f"{dep}/") for dep in deps)


def params_read(path: Path) -> set[str]:
    """``section`` or ``section.key`` for every ``params.<section>[.<key>]`` the module reads, including
    ``cfg.<key>`` where ``cfg = params.<section>``; ``params.total_epochs`` reads the counts it adds up."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "params"
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    aliases[target.id] = node.value.attr
    sections = {f.name for f in dataclasses.fields(Params)}
    reads: set[str] = set()
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
            continue
        if node.value.id in aliases:
            reads.add(f"{aliases[node.value.id]}.{node.attr}")
        elif node.value.id == "params" and node.attr == "total_epochs":
            reads |= {"warmup.epochs", "ssl_train.epochs"}
            reads |= {"group_regularize.epochs", "group_regularize.schedule"}  # if GRIP continues
        elif node.value.id == "params" and node.attr in sections:
            parent = parents.get(node)
            is_assigned = isinstance(parent, ast.Assign) and parent.value is node
            if isinstance(parent, ast.Attribute) and parent.value is node:
                reads.add(f"{node.attr}.{parent.attr}")
            elif not is_assigned:  # the whole section handed on (a checkpoint key, an optimiser)
                reads.add(node.attr)
    return reads


def _expand(items: set[str] | tuple[str, ...]) -> set[str]:
    """Sections expanded into their keys."""
    out = set()
    for item in items:
        section, _, key = item.partition(".")
        cls = type(getattr(Params(), section))
        out |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)} if not key else {item}
    return out


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_dvc_params_are_the_registry_declaration(dvc_stages, name):
    # `presets` (params.yaml's preset list) first: a preset may change any param of any stage.
    assert dvc_stages[name].get("params", []) == ["presets", *STAGES[name].params]


@pytest.mark.parametrize("name", list(STAGES))
def test_registry_declares_every_param_the_stage_code_reads(name):
    files = [
        REPO / p for p in code_closure(name) if p.startswith(("labelsieve/stages/", "labelsieve/engine/loop"))
    ]
    files = [f for f in files if f.name == f"{name}.py" or f.parent.name == "engine"]
    read = set().union(*(_expand(params_read(f)) for f in files))
    missing = read - _expand(STAGES[name].params) - set(HOW)
    assert not missing, f"{name} reads {sorted(missing)} but neither its Stage.params nor HOW lists them"


@pytest.mark.parametrize("name", list(STAGES))
def test_dvc_code_deps_cover_every_module_the_stage_runs(dvc_stages, name):
    deps = dvc_stages[name]["deps"]
    missing = sorted(p for p in code_closure(name) if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {name} lacks deps {missing}"


def test_eval_batch_size_reruns_no_training_stage_and_precision_reruns_them_all():
    training = ("warmup", "ssl_train", "group_regularize", "retrain")
    for name in training:
        declared = _expand(STAGES[name].params)
        assert "model.eval_batch_size" not in declared and "runtime.precision" in declared


def test_params_yaml_lists_every_param_with_its_default():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Params().to_dict()
    missing = [f"{s}.{k}" for s, keys in defaults.items() for k in keys if k not in raw.get(s, {})]
    assert not missing, f"params.yaml lacks {missing}"
    assert load_params(REPO / "params.yaml") is not None


def test_params_file_presets_are_applied_before_cli_presets(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("presets: []", "presets: [digits]")
    assert text != (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    from_file = load_params(tmp_path / "params.yaml")
    assert from_file == load_params(REPO / "params.yaml", presets=["digits"])
    assert from_file.ingest.source == "digits" != load_params(REPO / "params.yaml").ingest.source
    # --set still wins over the file's presets; a bad list is refused with the key named
    assert load_params(tmp_path / "params.yaml", overrides=["ingest.source=x"]).ingest.source == "x"
    (tmp_path / "bad.yaml").write_text("presets: digits\n")
    with pytest.raises(ConfigError, match="presets: 'digits' must be a list"):
        load_params(tmp_path / "bad.yaml")
