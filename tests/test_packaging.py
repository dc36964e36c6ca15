"""Packaging and node conventions that every node of the pack must follow."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import emofeedback2
from emofeedback2.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from emofeedback2.nodes.common import CATEGORY

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_nodes_module_is_installed(tmp_path):
    # From a neutral directory, `import nodes` must fail: ComfyUI owns that module name.
    result = subprocess.run([sys.executable, "-c", "import nodes"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "No module named 'nodes'" in result.stderr


def test_importing_the_folder_as_nodes_explains_itself():
    result = subprocess.run([sys.executable, "-c", "import nodes"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "emofeedback2.nodes" in result.stderr


def test_pyproject_has_registry_metadata_and_console_script():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["emofeedback2"] == "emofeedback2.cli:main"
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    assert not any(dep.startswith(("torch=", "torch>", "torchvision=")) for dep in meta["project"]["dependencies"])


def test_root_module_exposes_the_mappings_comfyui_reads():
    assert emofeedback2.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) <= set(NODE_CLASS_MAPPINGS)


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "emofeedback2.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "emofeedback2" in result.stdout


def _inputs(node_cls):
    spec = node_cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            yield section, name, value


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_every_node_follows_the_v1_conventions(name):
    node_cls = NODE_CLASS_MAPPINGS[name]
    assert node_cls.CATEGORY.startswith(CATEGORY)
    assert callable(getattr(node_cls, node_cls.FUNCTION))
    assert len(node_cls.RETURN_TYPES) == len(getattr(node_cls, "RETURN_NAMES", node_cls.RETURN_TYPES))
    assert len(getattr(node_cls, "OUTPUT_TOOLTIPS", ())) == len(node_cls.RETURN_TYPES), "every output needs a tooltip"
    assert getattr(node_cls, "DESCRIPTION", ""), "nodes describe themselves in the UI"
    assert name in NODE_DISPLAY_NAME_MAPPINGS
    for section, input_name, value in _inputs(node_cls):
        options = value[1] if len(value) > 1 else {}
        assert options.get("tooltip"), f"{name}.{input_name} ({section}) has no tooltip"
        if value[0] in ("FLOAT", "INT"):
            assert options["min"] <= options["default"] <= options["max"], f"{name}.{input_name} default out of range"


def test_training_and_cli_do_not_import_the_node_layer():
    code = "import sys, emofeedback2.training, emofeedback2.cli; print('emofeedback2.nodes' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
