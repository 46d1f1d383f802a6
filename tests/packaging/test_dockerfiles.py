"""Both Dockerfiles, checked without a Docker engine (none runs here; `make kind-e2e` builds them)."""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": ROOT / "Dockerfile.operator", "server": ROOT / "Dockerfile.server"}
ENTRYPOINTS = {"operator": ["python", "-m", "modelship_operator"], "server": ["modelship-server"]}
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|pip install|build-essential)\b")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def _args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), re.M))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_bases_are_pinned(name: str) -> None:
    path = DOCKERFILES[name]
    args = _args(path)
    for stage in stages(path):
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: unpinned base {image}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_is_small_non_root_and_health_checked(name: str) -> None:
    all_stages = stages(DOCKERFILES[name])
    assert len(all_stages) >= 2, "multi-stage: the build stage stays behind"
    final = all_stages[-1]
    kinds = [k for k, _ in final]
    assert not any(BUILD_TOOLS.search(args) for k, args in final if k == "RUN"), "no build tools in the final stage"
    copies = [args for k, args in final if k == "COPY"]
    assert copies and all(c.startswith("--from=build") for c in copies), "only the built venv crosses over"
    (user,) = [args for k, args in final if k == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root user (runAsNonRoot can verify it)"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    (health,) = [args for k, args in final if k == "HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1])  # exec form: no shell in the probe
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    (entry,) = [args for k, args in final if k == "ENTRYPOINT"]
    assert json.loads(entry) == ENTRYPOINTS[name]


def test_health_checks_probe_real_endpoints() -> None:
    server = [a for k, a in stages(DOCKERFILES["server"])[-1] if k == "HEALTHCHECK"][0]
    assert "/v2/health/live" in server
    operator = [a for k, a in stages(DOCKERFILES["operator"])[-1] if k == "HEALTHCHECK"][0]
    main = (ROOT / "operator" / "modelship_operator" / "__main__.py").read_text()
    assert re.search(r'default="http://0\.0\.0\.0:8080/healthz"', main) and "127.0.0.1:8080/healthz" in operator


def test_server_entry_point_is_a_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["modelship-server"].startswith("modelship_server.")


def test_server_image_defaults_to_cuda_torch_and_can_build_for_cpu() -> None:
    text = DOCKERFILES["server"].read_text()
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", text)
    assert "torch==2.13.0" in text and "-c constraints.txt" in text


def _ignored(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(rel, p + "/*")
               for p in patterns)


def _context(name: str, dest: Path) -> Path:
    """The files the build stage COPYs, as Docker would send them (.dockerignore applied)."""
    dest.mkdir(parents=True)
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for kind, args in stages(DOCKERFILES[name])[0]:
        if kind != "COPY":
            continue
        *sources, _ = args.split()
        for source in sources:
            src = ROOT / source.rstrip("/")
            assert src.exists(), f"{name}: COPY {source} does not exist"
            assert not _ignored(source.rstrip("/"), patterns), f"{name}: COPY {source} is excluded by .dockerignore"
            if src.is_dir():
                shutil.copytree(src, dest / source.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(src, dest / source)
    return dest


@pytest.mark.parametrize("name,package", [("operator", "modelship_operator"), ("server", "modelship_server")])
def test_build_stage_context_builds_the_package(name: str, package: str, tmp_path: Path) -> None:
    """The pip install in the build stage, on exactly the copied files (offline: no build isolation)."""
    context = _context(name, tmp_path / "ctx")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{package}/__init__.py" in names and f"{package}/__main__.py" in names
    other = "modelship_server" if package == "modelship_operator" else "modelship_operator"
    assert not any(n.startswith(other + "/") for n in names), "each image carries only its half"
    if package == "modelship_operator":
        assert "modelship_operator/api/crdgen.py" in names  # the CRD is generated from the models
        assert any(n.startswith("modelship_operator/templates/") for n in names)


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "examples/model"} <= set(patterns)
