"""The files under cluster/ and the job upload rules (.rayignore), checked without a network,
a cloud or a Ray instance: they parse, say what the docs promise (GPU workers, token
authentication from a Secret, the image the Dockerfile builds, sweeps that validate) and
agree with the installed Ray."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

import ray

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay"
RAY_MAJOR_MINOR = ".".join(ray.__version__.split(".")[:2])


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _built_image() -> str:
    """The tag cluster/Dockerfile says it is built as (`docker build ... -t TAG .`)."""
    tags = re.findall(r"docker build -f cluster/Dockerfile -t (\S+) \.", (CLUSTER / "Dockerfile").read_text())
    assert len(tags) == 1, "cluster/Dockerfile must say once how it is built: docker build -f cluster/Dockerfile -t TAG ."
    return tags[0]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _ray_pod_templates(cluster_spec: dict) -> list[tuple[str, dict]]:
    out = [("head", cluster_spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster_spec["workerGroupSpecs"]]
    return out


def _assert_token_from_secret(env: list[dict], where: str) -> None:
    by_name = {e["name"]: e for e in env}
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    token = by_name.get("RAY_AUTH_TOKEN")
    assert token is not None, f"{where}: RAY_AUTH_TOKEN missing"
    assert "value" not in token and "secretKeyRef" in token.get("valueFrom", {}), (
        f"{where}: RAY_AUTH_TOKEN must come from a Secret (valueFrom.secretKeyRef), not inline")


def _no_inline_secrets(obj, where: str) -> None:
    """No env var named like a secret carries a literal value, and no value holds a
    user:password@ URI."""
    if isinstance(obj, dict):
        name = obj.get("name")
        if isinstance(name, str) and "value" in obj:
            assert not re.search(r"(^|_)(TOKEN|PASSWORD|SECRET)(_|$)", name), f"{where}: {name} has an inline value"
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(obj["value"])), f"{where}: {name} has credentials"
        for k, v in obj.items():
            _no_inline_secrets(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _no_inline_secrets(v, f"{where}[{i}]")


# --------------------------------------------------------------------------- all YAML


def test_every_yaml_in_cluster_parses():
    files = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))
    assert LAUNCHER in files and (CLUSTER / "runtime_env.yaml") in files
    for f in files:
        docs = _docs(f)
        assert docs and all(isinstance(d, dict) for d in docs), f"{f}: no mapping"
        _no_inline_secrets(docs, f.name)


# --------------------------------------------------------------------------- launcher


def test_launcher_yaml_has_required_fields_and_gpu_workers():
    cfg = yaml.safe_load(LAUNCHER.read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in cfg, f"cluster launcher YAML lacks {key}"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node has no GPUs"
    gpu_workers = [t for name, t in types.items()
                   if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) > 0]
    assert gpu_workers, "no GPU worker node type"
    for t in gpu_workers:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    # The dashboard (and job API) on loopback, reached through `ray dashboard` port-forwarding.
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    # Token authentication on every node, with the token of the submitting machine.
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    # torch is installed before the package (which would otherwise pull PyPI's default build).
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if re.search(r"\btorch\b", c))
    pkg_at = next(i for i, c in enumerate(setup) if "~/xalign" in c)
    assert torch_at < pkg_at and "download.pytorch.org" in setup[torch_at]


def test_launcher_yaml_validates_against_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.exists():
        pytest.skip("this ray does not ship the launcher schema")
    cfg = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(cfg, json.loads(schema_path.read_text()))
    # And as `ray up` sees it: the provider's defaults filled in, then Ray's own checks
    # (Ray's internal API: if a Ray release moves it, this test fails and must follow it).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


# --------------------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest(name, kind):
    (doc,) = _docs(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert ".".join(str(spec["rayVersion"]).split(".")[:2]) == RAY_MAJOR_MINOR, (
        f"rayVersion {spec['rayVersion']} != installed ray {ray.__version__}")
    image = _built_image()
    assert f"ray{ray.__version__}" in image, f"image {image} should name its Ray version"
    for group, template in _ray_pod_templates(spec):
        for c in _containers(template):
            assert c["image"] == image, f"{name} {group}: image {c['image']} is not {image}"
            _assert_token_from_secret(c.get("env", []), f"{name} {group}")
    head = _containers(spec["headGroupSpec"]["template"])[0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
                         for c in _containers(g["template"]))]
    assert gpu_groups, f"{name}: no worker group with nvidia.com/gpu limits"
    for g in gpu_groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_rayjob_entrypoint_is_a_valid_sweep_and_submitter_has_the_token():
    from xalign.config.sweep import load_sweep

    (job,) = _docs(KUBERAY / "rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["xalign", "sweep"], argv
    sweep, overrides = argv[2], argv[3:]
    assert re.fullmatch(r"configs/sweeps/[\w.-]+\.yaml", sweep) and (REPO / sweep).exists(), sweep
    load_sweep(REPO / sweep, overrides)  # raises ConfigError listing every problem
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= ray.runtime_env.RuntimeEnv.known_fields
    (submitter,) = _containers(job["spec"]["submitterPodTemplate"])
    assert submitter["image"] == _built_image()
    _assert_token_from_secret(submitter["env"], "rayjob submitter")


def test_mlflow_deployment_takes_its_database_from_a_secret():
    deployment = next(d for d in _docs(KUBERAY / "mlflow.yaml") if d["kind"] == "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert c["command"][0].endswith("cluster/mlflow_server.sh") and c["image"] == _built_image()


# --------------------------------------------------------------------------- runtime_env


def test_runtime_env_keys_are_rays_and_name_the_tracking_server():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    RuntimeEnv(**env)  # Ray's own validation of each field
    assert env["working_dir"] == "."
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_the_manifests_image_with_torch_then_the_package():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-") and base.endswith("gpu"), base
    torch_at = re.search(r"pip install[^\n]*TORCH_SPEC", text).start()
    pkg_at = re.search(r"pip install --no-cache-dir \. ", text).start()
    assert torch_at < pkg_at, "torch must be installed before the package"
    assert re.search(r"^ARG TORCH_SPEC=torch", text, re.M)
    assert _built_image() in (CLUSTER / "README.md").read_text()


# --------------------------------------------------------------------------- README commands


def _code_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", markdown, re.S)
    indented = re.findall(r"(?m)^(?: {4}|\t)(\S.*)$", markdown)
    lines = [ln.strip() for b in blocks for ln in b.splitlines()] + [ln.strip() for ln in indented]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_readme_commands_name_files_that_exist():
    readme = (CLUSTER / "README.md").read_text()
    lines = _code_lines(readme)
    assert any(ln.startswith("xalign sweep") or " xalign sweep " in ln for ln in lines)
    checked = 0
    for line in lines:
        words = line.split()
        for i, w in enumerate(words):
            w = w.strip("'\"")
            in_xalign_command = "xalign" in words[:i]
            names_a_repo_file = re.fullmatch(r"(cluster|configs|tests)/[\w./-]+", w)
            if "<" in w or not (names_a_repo_file or (in_xalign_command and w.endswith((".yaml", ".yml")))):
                continue
            assert (REPO / w).exists(), f"cluster/README.md: `{line}` names {w}, which does not exist"
            checked += 1
    assert checked >= 5


def test_readme_sweep_commands_validate():
    from xalign.config.sweep import load_sweep

    validated = []
    for line in _code_lines((CLUSTER / "README.md").read_text()):
        m = re.search(r"xalign sweep (configs/sweeps/[\w.-]+\.yaml)((?: [\w.]+=\S+)*)", line)
        if m:
            load_sweep(REPO / m.group(1), m.group(2).split())
            validated.append(m.group(1))
    # the README's sweep commands were found (a changed path or pattern would otherwise check nothing)
    assert {"configs/sweeps/demo.yaml", "configs/sweeps/xglm-564m-sweep.yaml"} <= set(validated), validated


# --------------------------------------------------------------------------- mlflow_server.sh


def _fake_mlflow(tmp_path: Path) -> dict:
    """PATH with an `mlflow` that prints what it was given instead of serving."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text('#!/bin/sh\necho "ARGV: $*"\necho "ENV: $MLFLOW_BACKEND_STORE_URI"\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_mlflow_server_script_keeps_the_password_out_of_argv_and_logs(tmp_path):
    env = _fake_mlflow(tmp_path)
    env["MLFLOW_BACKEND_STORE_URI"] = "postgresql://mlflow:s3cr3t@db.internal:5432/mlflow"
    out = subprocess.run([str(CLUSTER / "mlflow_server.sh"), "--artifacts", str(tmp_path / "art")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = next(ln for ln in out.stdout.splitlines() if ln.startswith("ARGV:"))
    assert "s3cr3t" not in argv and "s3cr3t" not in out.stderr
    assert "postgresql://mlflow:***@db.internal:5432/mlflow" in out.stderr
    assert f"ENV: {env['MLFLOW_BACKEND_STORE_URI']}" in out.stdout  # handed over in the environment
    for option in ("--host 127.0.0.1", "--port 5000", "--workers 4", "--serve-artifacts",
                   f"--artifacts-destination {tmp_path / 'art'}"):
        assert option in argv, (option, argv)


def test_mlflow_server_script_defaults_to_sqlite_and_passes_extra_options(tmp_path):
    env = _fake_mlflow(tmp_path)
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    out = subprocess.run([str(CLUSTER / "mlflow_server.sh"), "--port", "5123", "--", "--allowed-hosts", "mlflow"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"ENV: sqlite:///{tmp_path}/mlflow.db" in out.stdout
    assert "--workers 1" in out.stdout and out.stdout.rstrip().splitlines()[0].endswith("--allowed-hosts mlflow")
    bad = subprocess.run([str(CLUSTER / "mlflow_server.sh"), "--port", "x"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--port must be a number" in bad.stderr


# --------------------------------------------------------------------------- working_dir upload


def _package(root: Path, out: Path, excludes=()) -> dict[str, int]:
    """What `ray job submit --working-dir ROOT` uploads: Ray's own packaging function with
    Ray's default excludes, .gitignore and .rayignore. {path in the zip: size}."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    create_package(str(root), out, include_gitignore=True,
                   excludes=ray_constants.get_runtime_env_default_excludes() + list(excludes))
    with zipfile.ZipFile(out) as z:
        return {i.filename: i.file_size for i in z.infolist()}


def test_working_dir_upload_is_small_and_has_the_package(tmp_path):
    files = _package(REPO, tmp_path / "pkg.zip")
    zipped = (tmp_path / "pkg.zip").stat().st_size
    assert zipped < 5 * 2**20, f"the job upload is {zipped / 2**20:.1f} MiB"
    for needed in ("pyproject.toml", "xalign/cli.py", "configs/sweeps/demo.yaml", "configs/runs/afp-synthetic.yaml",
                   "cluster/runtime_env.yaml"):
        assert needed in files, f"{needed} missing from the upload"
    tops = {name.split("/")[0] for name in files}
    assert not tops & {".git", ".venv", "venv", "worlds", "mlruns", "mlartifacts", "ray_results", "mlflow.db"}
    # runtime_env.yaml's excludes leave out more (and keep what a sweep reads).
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    slim = _package(REPO, tmp_path / "slim.zip", env.get("excludes", []))
    assert "xalign/cli.py" in slim and not any(n.startswith("tests/") for n in slim)


def test_rayignore_leaves_out_run_outputs_caches_and_environments(tmp_path):
    root = tmp_path / "repo"
    kept_files = ("pyproject.toml", "xalign/cli.py", "configs/sweeps/demo.yaml", "configs/runs/afp-synthetic.yaml",
                  "notebooks/compare_runs.ipynb")
    for kept in kept_files:
        (root / kept).parent.mkdir(parents=True, exist_ok=True)
        (root / kept).write_text("x")
    left_out = [".venv/lib/big.so", "worlds/w/model.safetensors", "mlruns/0/meta.yaml", "mlflow.db",
                "ray_results/demo/state.json", "runs/demo/step_0000003/model.bin", "mlartifacts/1/a.bin", "xalign/__pycache__/cli.cpython-311.pyc",
                "notebooks/.ipynb_checkpoints/compare_runs-checkpoint.ipynb", ".pytest_cache/v/x",
                "eval_results/run/records.jsonl", ".git/objects/pack/p.pack", "xalign.egg-info/PKG-INFO"]
    for name in left_out:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\0" * 1000)
    (root / ".rayignore").write_text((REPO / ".rayignore").read_text())
    # Ray's default excludes off: .rayignore alone must do it (RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES="").
    from ray._private.runtime_env.packaging import create_package

    create_package(str(root), tmp_path / "p.zip", include_gitignore=False, excludes=[])
    with zipfile.ZipFile(tmp_path / "p.zip") as z:
        names = set(z.namelist())
    assert set(kept_files) <= names
    leaked = [n for n in left_out if n in names]
    assert not leaked, f".rayignore lets these through: {leaked}"

