"""The runtime needs only ``pip install .``: no torch, no onnx, no pandas, no pyarrow,
and not even onnxruntime.

One test session builds a fresh virtual environment with the package installed without
extras and runs ``pomona predict`` there; another builds one without onnxruntime (the
package with ``--no-deps``, then its other dependencies and the ``serve`` extra from
the registry) and runs ``pomona predict`` and ``pomona serve`` there on the numpy
backend. The others check ``sys.modules`` after importing the runtime in the full
development environment, where torch is installed but must not load, and onnxruntime
is installed but loads only when a model is opened with it.
"""

from __future__ import annotations

import csv
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement

from pomona.runtime.artifacts import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from pomona.runtime.cli import COMMANDS, install_hint
from tests.conftest import REPO, SUBPROCESS_TIMEOUT
from tests.onnx_models import make_linear_onnx, reference_predictions

pytestmark = pytest.mark.slow

HEAVY = ("torch", "onnx", "onnxscript", "pandas", "pyarrow")
IMPORT_RUNTIME = (
    "import json, sys\n"
    "import pomona.runtime\n"
    "from pomona.runtime.predictor import Predictor\n"
    "import pomona.runtime.predict_cli, pomona.runtime.data, pomona.runtime.model_info\n"
    "import pomona.runtime.backends, pomona.runtime.cli, pomona.runtime.onnx_proto\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)
IMPORT_SERVING = (
    "import json, sys\n"
    "import pomona.runtime.serve.app, pomona.runtime.serve.cli\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


def _make_env(root: Path, *installs: list[str]) -> Path:
    """A fresh virtual environment under ``root`` with a copy of the repository's package
    in ``root/src``; each of ``installs`` is one ``pip install`` argument list, where
    ``{src}`` stands for that copy."""
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
    for arguments in installs:
        install = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "-c", str(source / "constraints.txt"),
             *(a.replace("{src}", str(source)) for a in arguments)],
            capture_output=True, text=True, check=False, timeout=SUBPROCESS_TIMEOUT,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout + install.stderr
    return venv


@pytest.fixture(scope="session")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``pip install <repo>`` and nothing else."""
    return _make_env(tmp_path_factory.mktemp("light-env"), ["{src}"])


def _project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _without_onnxruntime(requirements: list[str]) -> list[str]:
    return [r for r in requirements if Requirement(r).name != "onnxruntime"]


@pytest.fixture(scope="session")
def edge_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package and its ``serve`` extra, everything but onnxruntime: as on a platform
    without an onnxruntime wheel."""
    project = _project()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["serve"]]  # type: ignore[index]
    return _make_env(
        tmp_path_factory.mktemp("edge-env"),
        ["--no-deps", "{src}"],
        _without_onnxruntime(wanted),
    )


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


# -- without onnxruntime -------------------------------------------------------------------


def test_runtime_modules_import_no_onnxruntime() -> None:
    """onnxruntime loads only with a model opened on it: never at import."""
    for code in (IMPORT_RUNTIME, IMPORT_SERVING):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True, text=True, check=True, timeout=SUBPROCESS_TIMEOUT,
        )  # fmt: skip
        modules = json.loads(result.stdout)
        assert [m for m in modules if m.split(".")[0] == "onnxruntime"] == [], code


@pytest.mark.parametrize(
    ("environment", "installs_onnxruntime"),
    [
        ({"platform_machine": "x86_64", "sys_platform": "linux"}, True),
        ({"platform_machine": "aarch64", "sys_platform": "linux"}, True),
        ({"platform_machine": "arm64", "sys_platform": "darwin"}, True),
        ({"platform_machine": "AMD64", "sys_platform": "win32"}, True),
        ({"platform_machine": "armv7l", "sys_platform": "linux"}, False),
        ({"platform_machine": "armv6l", "sys_platform": "linux"}, False),
        ({"platform_machine": "wasm32", "sys_platform": "emscripten"}, False),
        ({"platform_machine": "riscv64", "sys_platform": "linux"}, False),
        ({"platform_machine": "x86", "sys_platform": "win32"}, False),
        ({"platform_machine": "x86_64", "platform_python_implementation": "PyPy"}, False),
    ],
)
def test_onnxruntime_is_required_only_where_it_has_wheels(
    environment: dict[str, str], installs_onnxruntime: bool
) -> None:
    found = [Requirement(r) for r in _project()["dependencies"]]  # type: ignore[attr-defined]
    (ort,) = [r for r in found if r.name == "onnxruntime"]
    assert isinstance(ort.marker, Marker)
    full = {"platform_python_implementation": "CPython", **environment}
    assert ort.marker.evaluate(full) is installs_onnxruntime
    assert all(r.marker is None for r in found if r.name != "onnxruntime")


def test_edge_env_predicts_on_numpy(edge_env: Path, tmp_path: Path) -> None:
    python, pomona = edge_env / "bin" / "python", edge_env / "bin" / "pomona"
    result = _run(edge_env, python, "-c", "import onnxruntime")
    assert result.returncode != 0 and "No module named 'onnxruntime'" in result.stderr
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    x = np.random.default_rng(0).integers(-50, 50, size=(200, 3)).astype(np.float32)
    source = tmp_path / "rows.npy"
    np.save(source, x)
    out = tmp_path / "out.npy"
    result = _run(edge_env, pomona, "predict", model, source, "-o", out)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), reference_predictions(x))
    info = _run(edge_env, pomona, "info", model, "--json")
    assert info.returncode == 0, info.stderr
    backend = json.loads(info.stdout)["backend"]
    assert backend["name"] == "numpy"
    assert backend["reason"].startswith("auto: onnxruntime cannot be imported")
    refused = _run(edge_env, pomona, "predict", model, source, "--backend", "onnxruntime")
    assert refused.returncode == 1 and "onnxruntime backend is not available" in refused.stderr
    assert refused.stderr.startswith("Error: ") and "Traceback" not in refused.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def edge_server(edge_env: Path, tmp_path: Path) -> Iterator[int]:
    """``pomona serve`` in the environment without onnxruntime; yields its port."""
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    port, log = _free_port(), tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [str(edge_env / "bin" / "pomona"), "serve", str(model), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=edge_env,
        )  # fmt: skip
    try:
        for _ in range(1200):  # a hang guard: 60 s for the server to answer
            assert proc.poll() is None, log.read_text()
            try:
                if _request(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == 0, log.read_text()
    assert "backend numpy" in log.read_text() and "Traceback" not in log.read_text()


def test_edge_env_serves_on_numpy(edge_server: int) -> None:
    doc = {"inputs": [{"name": INPUT_NAME, "shape": [2, 3], "datatype": "FP32",
                       "data": [1, 2, 3, 4, 5, 6]}]}  # fmt: skip
    status, body = _request(
        edge_server, "POST", "/v2/models/pomona/infer", json.dumps(doc).encode()
    )
    assert status == 200, body
    (output,) = json.loads(body)["outputs"]
    assert output["name"] == OUTPUT_NAME and output["shape"] == [2, 2]
    expected = reference_predictions(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    assert output["data"] == expected.ravel().tolist()
