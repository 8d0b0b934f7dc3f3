"""infra/ and prefect.yaml: what can be checked without Docker, Kubernetes or GPUs.

Every file parses; the compose file renders when a compose client is installed; the DeepSpeed
hostfile, config, launch script and Kubernetes Job agree with each other and with `gvr train`'s
launcher (down to DeepSpeed's own runner); the work-pool template and prefect.yaml are accepted
by a real Prefect server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gvr.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)$")  # DeepSpeed's hostfile format


def _hosts(text: str) -> dict[str, int]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert all(HOST_LINE.match(ln) for ln in lines), lines
    return {m.group(1): int(m.group(2)) for m in map(HOST_LINE.match, lines)}


def _k8s(name: str) -> dict[str, dict]:
    docs = list(yaml.safe_load_all((INFRA / "k8s" / name).read_text()))
    return {d["kind"]: d for d in docs}


def test_every_file_parses():
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yml", ".yaml", ".json")) + [REPO / "prefect.yaml"]
    assert len(files) >= 5
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert list(yaml.safe_load_all(path.read_text())), path


def test_compose_services_are_wired():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "prefect", "mlflow", "worker"} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        image = svc.get("image", "")
        assert "build" in svc or re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), \
            f"{name}: pull images by an explicit version tag"
    mlflow_cmd = services["mlflow"]["command"]
    assert "postgresql+psycopg://" in mlflow_cmd and "--artifacts-destination s3://mlflow" in mlflow_cmd
    assert "postgresql+asyncpg://" in services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    init = (INFRA / "postgres" / "init.sql").read_text()
    assert "CREATE DATABASE prefect" in init and "CREATE DATABASE mlflow" in init


def _compose_client() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [shutil.which("docker-compose")] if shutil.which("docker-compose") else None


def test_compose_renders(tmp_path):
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client installed")
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    if client[0].endswith("docker-compose"):
        compose.pop("name")  # compose v1 predates the top-level project name
    for sub in ("mlflow", "postgres"):
        shutil.copytree(INFRA / sub, tmp_path / sub)
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(compose, sort_keys=False))
    res = subprocess.run([*client, "--profile", "worker", "config"], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "MINIO_"))})
    assert res.returncode == 0, res.stderr
    rendered = yaml.safe_load(res.stdout)
    assert "gvr:gvr@postgres:5432/mlflow" in str(rendered["services"]["mlflow"]["command"])  # defaults filled in


def test_hostfile_job_and_deepspeed_config_agree_on_2x8():
    hosts = _hosts((INFRA / "deepspeed" / "hostfile").read_text())
    assert list(hosts.values()) == [8, 8]
    k8s = _k8s("train-job.yaml")
    assert _hosts(k8s["ConfigMap"]["data"]["hostfile"]) == hosts
    job = k8s["Job"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == len(hosts)
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NUM_NODES"] == str(len(hosts)) and env["GPUS_PER_NODE"] == "8"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    # pod 0 is the master: <job>-0.<subdomain>, and the headless Service carries the subdomain
    assert env["MASTER_ADDR"] == f"{k8s['Job']['metadata']['name']}-0.{pod['subdomain']}"
    assert k8s["Service"]["metadata"]["name"] == pod["subdomain"] and k8s["Service"]["spec"]["clusterIP"] == "None"
    assert {"mountPath": "/job/hostfile", "name": "hostfile", "subPath": "hostfile"} in container["volumeMounts"]
    assert env["HOSTFILE"] == "/job/hostfile"

    from gvr.train.deepspeed_config import deepspeed_config

    ds = json.loads((INFRA / "deepspeed" / "ds_config_2x8.json").read_text())
    world = sum(hosts.values())
    assert ds == deepspeed_config(Params().train, world_size=world, cuda=True, dtype="bfloat16")
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == ds["train_batch_size"] == 32


def _launch(tmp_path: Path, mode: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    """Run launch.sh with a stand-in `gvr` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gvr"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(tmp_path / 'args.json')!r}, 'w'))\n")
    fake.chmod(0o755)
    (tmp_path / "params.yaml").write_text("{}\n")
    base = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MASTER_ADDR", "JOB_COMPLETION_INDEX")}
    res = subprocess.run([str(INFRA / "deepspeed" / "launch.sh"), mode, "stage2", "--params", str(tmp_path / "params.yaml")],
                         cwd=REPO, env={**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
                         capture_output=True, text=True)
    args_file = tmp_path / "args.json"
    return res, json.loads(args_file.read_text()) if args_file.exists() else None


def _launcher_command(argv: list[str]) -> list[str]:
    """What `gvr train` does with these arguments: the deepspeed command line it would run."""
    from gvr.cli import build_parser
    from gvr.train.launch import launcher_command

    args = build_parser().parse_args(argv)
    params = load_params(args.params, overrides=args.set)
    return launcher_command(params, args.stage, Path("resolved.yaml"), resume=True)


def test_launch_script_no_ssh_mode(tmp_path):
    res, argv = _launch(tmp_path, "no-ssh", {"JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "gvr-train-0.gvr-train"})
    assert res.returncode == 0, res.stderr
    cmd = " ".join(_launcher_command(argv))
    assert "--no_ssh --node_rank 1" in cmd and "--num_nodes 2" in cmd and "--num_gpus 8" in cmd
    assert "--master_addr gvr-train-0.gvr-train" in cmd and cmd.endswith("--module gvr.cli train --stage stage2 "
                                                                         "--params resolved.yaml")


def test_launch_script_ssh_mode(tmp_path):
    res, argv = _launch(tmp_path, "ssh", {})
    assert res.returncode == 0, res.stderr
    cmd = " ".join(_launcher_command(argv))
    assert "--hostfile infra/deepspeed/hostfile --num_nodes 2" in cmd and "--no_ssh" not in cmd


@pytest.mark.parametrize("mode, env, error", [
    ("no-ssh", {"MASTER_ADDR": "x"}, "NODE_RANK"),
    ("no-ssh", {"NODE_RANK": "0"}, "MASTER_ADDR"),
    ("sideways", {}, "usage"),
])
def test_launch_script_refuses_incomplete_setups(tmp_path, mode, env, error):
    res, argv = _launch(tmp_path, mode, env)
    assert res.returncode == 2 and argv is None
    assert error in res.stderr or "infra/deepspeed/launch.sh" in res.stderr


def test_deepspeed_runner_accepts_the_no_ssh_command(tmp_path, monkeypatch):
    """DeepSpeed's own runner builds the per-node launch from our command (process start stubbed)."""
    pytest.importorskip("deepspeed")
    from deepspeed.launcher import runner

    res, argv = _launch(tmp_path, "no-ssh", {"NODE_RANK": "1", "MASTER_ADDR": "gvr-train-0.gvr-train",
                                              "HOSTFILE": str(INFRA / "deepspeed" / "hostfile")})
    cmd = _launcher_command(argv)
    started = []

    class Started:
        returncode = 0

        def __init__(self, cmd, env=None):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", Started)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    runner.main(cmd[3:])
    (launch,) = started
    assert "--node_rank=1" in launch and "--master_addr=gvr-train-0.gvr-train" in launch


def test_work_pool_template_declares_and_renders_every_variable():
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads((INFRA / "k8s" / "work-pool-template.json").read_text())
    props = template["variables"]["properties"]
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= set(props), used - set(props)
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update(name="flow-run-1", command="python -m prefect.engine")
    config = apply_values(template["job_configuration"], values)
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "gvr:latest" and container["args"] == "python -m prefect.engine"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "workspace", "mountPath": "/workspace"} in container["volumeMounts"]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "gvr-workspace"}} in pod["volumes"]
    assert "serviceAccountName" not in pod  # no default: left out, not "None"


def test_prefect_yaml_deploys_to_the_work_pool(prefect_server, tmp_path):
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]
    pool = spec["work_pool"]["name"]
    env = {**os.environ, **prefect_server.env()}
    prefect = str(Path(sys.executable).with_name("prefect"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([prefect, "--no-prompt", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)

    # the Prefect server validates the template against its variables
    res = cli("work-pool", "create", pool, "--type", "kubernetes", "--base-job-template",
              str(INFRA / "k8s" / "work-pool-template.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        res = cli("deploy", "--name", spec["name"])
        # Known Prefect 3.8.8 + fastapi 0.154 mismatch: after saving the deployment, `prefect deploy`
        # asks for the pool's online workers with `"limit": null`, which this server rejects (422).
        known = "workers/filter" in res.stderr and "422" in res.stderr
        assert res.returncode == 0 or known, res.stdout + res.stderr
        dep = prefect_server.deployment(f"gvr/{spec['name']}")
        try:
            assert dep["entrypoint"] == "flows/pipeline.py:gvr_pipeline" and dep["work_pool_name"] == pool
            assert dep["parameters"] == {"workspace": "/workspace"}
            assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/gvr"}}]
            assert dep["global_concurrency_limit"]["limit"] == 1
            assert set(dep["parameter_openapi_schema"]["properties"]) == {"workspace", "profile", "overrides",
                                                                         "use_dvc", "stages"}
        finally:  # leave the name free for served deployments of other tests
            prefect_server.api("DELETE", f"deployments/{dep['id']}")
    finally:
        cli("work-pool", "delete", pool)
