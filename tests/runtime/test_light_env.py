"""The runtime needs only ``pip install .``: no torch, no onnx, no pandas, no pyarrow.

One test session builds a fresh virtual environment with the package installed without
extras and runs ``pomona predict`` there; the others check ``sys.modules`` after importing
the runtime in the full development environment, where torch is installed but must not load.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pomona.runtime.artifacts import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from pomona.runtime.cli import COMMANDS, install_hint
from tests.conftest import REPO, SUBPROCESS_TIMEOUT
from tests.onnx_models import make_linear_onnx

pytestmark = pytest.mark.slow

HEAVY = ("torch", "onnx", "onnxscript", "pandas", "pyarrow")
IMPORT_RUNTIME = (
    "import json, sys\n"
    "import pomona.runtime\n"
    "from pomona.runtime.predictor import Predictor\n"
    "import pomona.runtime.predict_cli, pomona.runtime.data, pomona.runtime.model_info\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


@pytest.fixture(scope="session")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``pip install <repo>`` and nothing else."""
    root = tmp_path_factory.mktemp("light-env")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("train", "export", "runtime"):
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=SUBPROCESS_TIMEOUT
    )
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "-c", str(source / "constraints.txt"), str(source)],
        capture_output=True, text=True, check=False, timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def _run(venv: Path, *args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", SUBPROCESS_TIMEOUT)
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [str(a) for a in args], capture_output=True, text=True, check=False, cwd=venv, **kwargs
    )


def test_light_env_has_no_torch(light_env: Path) -> None:
    python = light_env / "bin" / "python"
    result = _run(light_env, python, "-c", "import torch")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    result = _run(light_env, python, "-c", IMPORT_RUNTIME)
    assert result.returncode == 0, result.stderr
    assert _heavy(json.loads(result.stdout)) == []


def test_predict_in_light_env_equals_onnxruntime(light_env: Path, tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    x = np.random.default_rng(0).uniform(-50, 50, size=(200, 3)).astype(np.float32)
    source = tmp_path / "rows.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["humidity", "id", "temp", "rainfall"])
        writer.writerows([[repr(float(r[2])), i, repr(float(r[0])), repr(float(r[1]))]
                          for i, r in enumerate(x)])  # fmt: skip
    out = tmp_path / "out.csv"
    pomona = light_env / "bin" / "pomona"
    result = _run(light_env, pomona, "predict", model, source, "-o", out, "--keep", "id")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["id", "apples", "oranges"]
    got = np.array([[float(v) for v in row[1:]] for row in rows[1:]], dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got, session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])

    info = _run(light_env, pomona, "info", model, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["feature_names"] == ["temp", "rainfall", "humidity"]


def test_runtime_imports_nothing_heavy_where_torch_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_RUNTIME],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert _heavy(json.loads(result.stdout)) == []


def test_small_predict_imports_nothing_heavy(tmp_path: Path) -> None:
    """A small file is predicted without pyarrow or pandas (they cost start-up time)."""
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    source = tmp_path / "rows.csv"
    source.write_text("temp,rainfall,humidity\n1,2,3\n")
    code = (
        "import json, sys\n"
        "from pomona.runtime.cli import main\n"
        f"main(['predict', {str(model)!r}, {str(source)!r}, '-o', {str(tmp_path / 'o.csv')!r}],"
        " standalone_mode=False)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert _heavy(json.loads(result.stdout)) == []
    assert (tmp_path / "o.csv").read_text() == "apples,oranges\n3.375,1.25\n"


# Commands whose extra a plain install lacks: all but predict and info.
NEEDING_EXTRAS = sorted(name for name, command in COMMANDS.items() if command.extra)


def _missing_extra_line(name: str, module: str) -> str:
    extra = COMMANDS[name].extra or ""
    return (
        f"Error: 'pomona {name}' needs the '{extra}' extra ({module} is not installed): "
        f"{install_hint(extra)}\n"
    )


@pytest.mark.parametrize("name", NEEDING_EXTRAS)
def test_light_env_names_the_extra_from_the_table(
    light_env: Path, tmp_path: Path, name: str
) -> None:
    assert NEEDING_EXTRAS == ["export", "serve", "train"]
    pomona = light_env / "bin" / "pomona"
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    result = _run(light_env, pomona, name, model)
    assert result.returncode == 1
    assert result.stderr == _missing_extra_line(name, COMMANDS[name].needs[0])
    shown = _run(light_env, pomona, name, "--help")
    hint = install_hint(COMMANDS[name].extra or "")
    assert shown.returncode == 0 and hint in " ".join(shown.stdout.split())  # help is wrapped
    listed = _run(light_env, pomona, "--help")
    assert listed.returncode == 0 and COMMANDS[name].help in listed.stdout


_BLOCK = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == {module!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from pomona.runtime.cli import main\n"
    "main([{command!r}, '--help'])\n"
)


@pytest.mark.parametrize("name", NEEDING_EXTRAS)
def test_each_module_the_table_needs_is_checked(name: str) -> None:
    """Where one needed module is missing (the rest installed), the table's hint is printed."""
    for module in COMMANDS[name].needs:
        code = _BLOCK.format(module=module, command=name)
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=False,
            timeout=SUBPROCESS_TIMEOUT,
        )
        assert result.returncode == 0, result.stderr  # --help still works
        assert install_hint(COMMANDS[name].extra or "") in " ".join(result.stdout.split()), module
        assert "Traceback" not in result.stderr
