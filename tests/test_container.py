"""The container, end to end, on a real Docker engine.

Builds the CPU image through harness.container (the SDK, classic builder) once per
session, then runs bench in it with no network. Needs the engine and the base image from
`scripts/docker-setup.sh`; without them these tests FAIL saying so. Set
BENCH_SKIP_DOCKER=1 to skip them on purpose.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import __version__, container, provenance
from harness.errors import InputError
from harness.matrix import load_matrix
from harness.runfolder import read_cell, read_run

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
SETUP = (
    "run `sudo scripts/docker-setup.sh` (installs Docker, starts dockerd, builds the base image)"
)

if os.environ.get("BENCH_SKIP_DOCKER") == "1":
    pytest.skip("BENCH_SKIP_DOCKER=1: Docker tests skipped on request", allow_module_level=True)


@pytest.fixture(scope="session")
def client() -> Iterator[object]:
    try:
        docker_client = container.connect()
    except container.DockerUnavailable as exc:
        pytest.fail(f"{exc.message}; or set BENCH_SKIP_DOCKER=1 to skip these tests", False)
    yield docker_client
    docker_client.close()


@pytest.fixture(scope="session")
def cpu_image(client: object) -> container.BuiltImage:
    """transfer-bench:cpu built from this checkout (layer cache makes rebuilds quick)."""
    try:
        return container.build_image(container.BuildConfig(tf="cpu", context=ROOT), client=client)
    except InputError as exc:
        pytest.fail(f"{exc.message} — {SETUP}", False)


# Who the containers run as by default: the caller, or (the caller being root, as on CI
# machines) the owner of the reports folder, which the fixtures make a non-root user.
CALLER = (os.getuid(), os.getgid()) if os.getuid() != 0 else (4321, 4321)


@pytest.fixture
def workdirs(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder holding this checkout's manifest (+ shipped weights) and an empty reports,
    both belonging to :data:`CALLER`."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy2(ROOT / "data" / "manifest.json", data / "manifest.json")
    if (ROOT / "data" / "weights").is_dir():
        shutil.copytree(ROOT / "data" / "weights", data / "weights")
    reports = tmp_path / "reports"
    reports.mkdir()
    if os.getuid() == 0:
        for path in (data, *data.rglob("*"), reports):
            os.chown(path, *CALLER)
    return data, reports


def _run(
    image: container.BuiltImage,
    args: list[str],
    data: Path,
    reports: Path,
    client: object,
    user: str | None = None,
) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    config = container.RunConfig(
        image=image.tag, gpus=False, data_dir=data, reports_dir=reports, user=user
    )
    code = container.run_in_container(args, config, client=client, stdout=out, stderr=err)
    return code, out.getvalue().decode(), err.getvalue().decode()


def test_image_is_built_from_the_requested_base(cpu_image: container.BuiltImage, client) -> None:
    image = client.images.get(cpu_image.tag)
    assert image.id == cpu_image.image_id
    assert image.labels["io.transfer-bench.tf"] == "cpu"
    assert image.labels["org.opencontainers.image.base.name"] == container.DEFAULT_BASE_IMAGE
    # Built FROM that base: the base's filesystem layers are the first layers of the image.
    base_layers = client.images.get(container.DEFAULT_BASE_IMAGE).attrs["RootFS"]["Layers"]
    assert image.attrs["RootFS"]["Layers"][: len(base_layers)] == base_layers
    assert image.attrs["Config"]["Entrypoint"] == ["bench"]
    assert image.attrs["Config"]["User"] == "bench"


def test_bench_version_runs_in_the_container(cpu_image, client, workdirs) -> None:
    code, out, err = _run(cpu_image, ["--version"], *workdirs, client)
    assert (code, out.strip()) == (0, f"transfer-bench {__version__}"), err


def test_exit_code_and_stderr_come_back(cpu_image, client, workdirs) -> None:
    code, out, err = _run(cpu_image, ["no-such-command"], *workdirs, client)
    assert code == 2
    assert "invalid choice: 'no-such-command'" in err
    assert out == ""


def test_data_list_reads_the_mounted_manifest(cpu_image, client, workdirs) -> None:
    data, reports = workdirs
    code, out, err = _run(cpu_image, ["data", "list", "--json"], data, reports, client)
    assert code == 0, err
    names = {entry["name"] for entry in json.loads(out)}
    manifest = json.loads((data / "manifest.json").read_text())
    assert set(manifest["datasets"]) <= names


def test_container_has_no_network_but_loopback(cpu_image, client, workdirs) -> None:
    options = container.container_options(
        container.RunConfig(
            image=cpu_image.tag, gpus=False, data_dir=workdirs[0], reports_dir=workdirs[1]
        ),
        client=client,
    )
    assert options["network_mode"] == "none"
    assert options["device_requests"] is None
    probe = (
        "import socket, json; names = [n for _, n in socket.if_nameindex()]\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('1.1.1.1', 443)); reach = True\n"
        "except OSError:\n    reach = False\n"
        "print(json.dumps({'ifaces': names, 'reach': reach}))"
    )
    output = client.containers.run(
        entrypoint=["python", "-c", probe], remove=True, stdout=True, stderr=False, **options
    )
    result = json.loads(output)
    assert result == {"ifaces": ["lo"], "reach": False}


def test_provenance_and_image_id_reach_the_fingerprint(cpu_image, client, workdirs) -> None:
    # As an arbitrary non-root uid (compose's default is 1000; CI runners use others).
    code, out, err = _run(
        cpu_image, ["docker", "info", "--json"], *workdirs, client, user="4321:4321"
    )
    assert code == 0, err
    info = json.loads(out)
    assert info["where"] == "container"
    assert info["image_id"] == cpu_image.image_id
    build = info["build"]
    assert build["tf_extra"] == "cpu"
    assert build["harness_version"] == __version__
    assert build["base_image_id"] == cpu_image.build_args["BASE_IMAGE_ID"]
    assert build["git_commit"] == cpu_image.build_args["GIT_COMMIT"]
    assert len(build["pip_freeze_sha256"]) == 64
    # The baked package list is the image's real one: tensorflow-cpu, no CUDA wheels.
    freeze = client.containers.run(
        cpu_image.tag,
        entrypoint=["cat", str(provenance.IMAGE_JSON)],
        remove=True,
        network_mode="none",
    )
    names = {
        line.split("==")[0].replace("_", "-").lower() for line in json.loads(freeze)["pip_freeze"]
    }
    assert {"tensorflow-cpu", "keras"} <= names
    assert any(name.startswith("transfer-bench") for name in names)  # the harness itself
    assert not any(name.startswith(("nvidia-", "tensorflow-cuda")) for name in names)


def test_writes_to_mounted_data_belong_to_the_caller(cpu_image, client, workdirs) -> None:
    data, reports = workdirs
    code, _, err = _run(
        cpu_image, ["data", "prepare", "synth-xray", "--image-size", "32"], data, reports, client
    )
    assert code == 0, err
    written = [p for p in (data / "prepared").rglob("*") if p.is_file()]
    assert any(p.name == "meta.json" for p in written)
    assert {p.stat().st_uid for p in written} == {CALLER[0]}


def test_missing_image_names_the_build_command(client, workdirs) -> None:
    config = container.RunConfig(image="transfer-bench:cuda-missing-test", data_dir=workdirs[0])
    with pytest.raises(InputError, match="not found; build it with `bench docker build`"):
        container.run_in_container(["--version"], config, client=client)


def test_ca_bundle_is_staged_in_an_ignored_folder(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    staged = container.stage_ca_bundle(tmp_path, bundle)
    assert staged == tmp_path / ".docker-ca" / "ca-certificates.crt"
    assert staged.read_text() == bundle.read_text()
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", ".docker-ca/ca-certificates.crt"],
        check=False,
    )
    assert ignored.returncode == 0, ".docker-ca/ must be git-ignored"


def _compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    pytest.fail(f"neither docker-compose nor `docker compose` found — {SETUP}", False)


def test_compose_files_validate(client) -> None:
    base = [*_compose(), "-f", str(ROOT / "compose.yaml")]
    plain = subprocess.run([*base, "config"], capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr
    assert "network_mode: none" in plain.stdout
    assert "capabilities" not in plain.stdout  # no GPU reservation without the override
    gpu = subprocess.run(
        [*base, "-f", str(ROOT / "compose.gpu.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert gpu.returncode == 0, gpu.stderr
    assert "driver: nvidia" in gpu.stdout


def test_compose_run_uses_the_image(cpu_image, client, workdirs) -> None:
    data, reports = workdirs
    env = {
        **os.environ,
        "BENCH_TF": "cpu",
        "BENCH_UID": str(CALLER[0]),
        "BENCH_GID": str(CALLER[1]),
        "BENCH_DATA": str(data),
        "BENCH_REPORTS": str(reports),
        "BENCH_IMAGE_ID": cpu_image.image_id,
    }
    cmd = [*_compose(), "-f", str(ROOT / "compose.yaml"), "run", "--rm", "-T", "bench"]
    version = subprocess.run(
        [*cmd, "--version"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().endswith(f"transfer-bench {__version__}")
    info = subprocess.run(
        [*cmd, "docker", "info", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["image_id"] == cpu_image.image_id


@pytest.mark.slow
def test_a_training_cell_runs_in_the_container(cpu_image, client, workdirs) -> None:
    """A real smoke cell (scratch: needs no pretrained weights) trains with no network, its
    data prepared first by `bench data prepare` (the one command that may write data/)."""
    data, reports = workdirs
    cell = "synth-few/scratch/float32/s0"
    code, out, err = _run(
        cpu_image, ["data", "prepare", "synth-few", "--image-size", "32"], data, reports, client
    )
    assert code == 0, err
    code, out, err = _run(
        cpu_image,
        ["all", "--profile", "smoke", "--only", cell, "--run-id", "in-container"],
        data,
        reports,
        client,
    )
    run_dir = reports / "runs" / "in-container"
    assert code == 0, f"{out[-2000:]}\n{err[-2000:]}"
    result = read_cell(run_dir / "cells" / "synth-few__scratch__float32__s0.json")
    assert (result.cell_id, result.status) == (cell, "ok")
    assert (
        len(result.history)
        == load_matrix(str(ROOT / "benchmarks" / "smoke.toml")).cell(cell).epochs
    )
    info = read_run(run_dir)
    assert info.environment["container"]["image_id"] == cpu_image.image_id
    assert info.environment["container"]["build"]["tf_extra"] == "cpu"
    assert {p.stat().st_uid for p in run_dir.rglob("*")} == {CALLER[0]}


def test_bench_docker_run_cli_passes_args_and_exit_code(cpu_image, client, workdirs) -> None:
    data, reports = workdirs
    base = [sys.executable, "-m", "harness.cli", "docker", "run", "--no-gpus"]
    base += ["--image", cpu_image.tag, "--data", str(data), "--reports", str(reports), "--"]
    ok = subprocess.run([*base, "--version"], capture_output=True, text=True, timeout=300)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"transfer-bench {__version__}"), ok.stderr
    bad = subprocess.run(
        [*base, "list", "--profile", "no-such-profile"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2
    assert "no-such-profile" in bad.stderr


def test_gpus_on_request(cpu_image, client, workdirs) -> None:
    """With GPUs the container sees them; without, asking for them is a one-line input error."""
    config = container.RunConfig(
        image=cpu_image.tag, gpus=True, data_dir=workdirs[0], reports_dir=workdirs[1]
    )
    if container.gpus_available(client):
        assert container.run_in_container(["--version"], config, client=client) == 0
    else:
        with pytest.raises(InputError, match="NVIDIA container toolkit"):
            container.run_in_container(["--version"], config, client=client)


# --- lock-down (issue 13) ----------------------------------------------------------------

# Run inside the container: what this process may do, as JSON.
PROBE = r"""
import json, os
def attempt(path, mode="a"):
    try:
        with open(path, mode) as fh:
            fh.write("")
        return "ok"
    except OSError as exc:
        return os.strerror(exc.errno)
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if line.startswith(("Cap", "NoNewPrivs")))
home = os.environ["HOME"]
print(json.dumps({
    "uid": os.getuid(),
    "caps": {k: int(v, 16) for k, v in status.items() if k.startswith("Cap")},
    "no_new_privs": int(status["NoNewPrivs"]),
    "manifest": attempt("/workspace/data/manifest.json"),
    "data": attempt("/workspace/data/new-file", "w"),
    "prepared": attempt("/workspace/data/prepared/probe", "w"),
    "archives": attempt("/workspace/data/archives/probe", "w"),
    "root_fs": attempt("/opt/venv/probe", "w"),
    "etc": attempt("/etc/transfer-bench/image.json"),
    "workspace": attempt("/workspace/probe", "w"),  # world-writable in the image itself
    "tmp": attempt("/tmp/probe", "w"),
    "home": attempt(os.path.join(home, "probe"), "w"),
    "reports": attempt("/workspace/reports/probe", "w"),
}))
"""


def _owned_folder(path: Path) -> None:
    path.mkdir()
    if os.getuid() == 0:
        os.chown(path, *CALLER)


def _probe(client: object, options: dict) -> dict:
    output = client.containers.run(  # type: ignore[attr-defined]
        entrypoint=["python", "-c", PROBE], remove=True, stdout=True, stderr=True, **options
    )
    return json.loads(output)


def test_default_user_is_never_root(tmp_path, monkeypatch) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "getgid", lambda: 0)
    with pytest.raises(InputError, match=r"does not run as uid 0 unless asked; pass --user"):
        container.default_user(reports, environ={})
    assert container.default_user(reports, environ={"SUDO_UID": "1001", "SUDO_GID": "1002"}) == (
        "1001:1002"
    )
    if os.geteuid() == 0:  # chown needs root
        os.chown(reports, 4321, 4322)
        assert container.default_user(reports, environ={}) == "4321:4322"
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "getgid", lambda: 1000)
    assert container.default_user(reports, environ={}) == "1000:1000"


def test_bench_docker_run_as_root_without_user_is_refused(cpu_image, tmp_path) -> None:
    if os.getuid() != 0:
        pytest.skip("only a root caller could start a root container")
    data, reports = tmp_path / "data", tmp_path / "reports"
    data.mkdir()
    reports.mkdir()
    shutil.copy2(ROOT / "data" / "manifest.json", data / "manifest.json")
    base = [sys.executable, "-m", "harness.cli", "docker", "run", "--no-gpus"]
    base += ["--image", cpu_image.tag, "--data", str(data), "--reports", str(reports)]
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
    refused = subprocess.run([*base, "--", "--version"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "pass --user UID:GID" in refused.stderr
    asked = subprocess.run(
        [*base, "--user", "0:0", "--", "--version"], capture_output=True, text=True, env=env
    )
    assert (asked.returncode, asked.stdout.strip()) == (0, f"transfer-bench {__version__}")


def test_container_is_locked_down(cpu_image, client, workdirs) -> None:
    """No capabilities, no new privileges, a read-only root and read-only data/: writing the
    manifest from inside fails; only /tmp, $HOME and reports/ are writable."""
    data, reports = workdirs
    _owned_folder(data / "prepared")
    _owned_folder(data / "archives")
    config = container.RunConfig(
        image=cpu_image.tag, gpus=False, data_dir=data, reports_dir=reports
    )
    options = container.container_options(config, client=client)
    assert options["user"] == f"{CALLER[0]}:{CALLER[1]}"
    assert options["cap_drop"] == ["ALL"] and options["read_only"] is True
    assert options["security_opt"] == ["no-new-privileges:true"]
    seen = _probe(client, options)
    assert seen["uid"] == CALLER[0]
    assert seen["caps"]["CapEff"] == 0 and seen["caps"]["CapPrm"] == 0
    assert seen["caps"]["CapBnd"] == 0 and seen["no_new_privs"] == 1
    ro = "Read-only file system"
    for place in ("manifest", "data", "prepared", "archives", "root_fs", "workspace"):
        assert seen[place] == ro, (place, seen)
    assert (seen["tmp"], seen["home"], seen["reports"]) == ("ok", "ok", "ok")
    manifest = (data / "manifest.json").read_bytes()
    assert manifest == (ROOT / "data" / "manifest.json").read_bytes()

    # Even root, asked for explicitly, has no capabilities and cannot write the manifest.
    as_root = container.container_options(dataclasses.replace(config, user="0:0"), client=client)
    seen = _probe(client, as_root)
    assert seen["uid"] == 0 and seen["caps"]["CapEff"] == 0
    assert seen["root_fs"] == seen["etc"] == ro
    assert seen["manifest"] != "ok"  # read-only, and root lacks CAP_DAC_OVERRIDE too


def test_only_prepare_gets_writable_prepared_and_archives(cpu_image, client, workdirs) -> None:
    data, reports = workdirs
    config = container.RunConfig(
        image=cpu_image.tag, gpus=False, data_dir=data, reports_dir=reports
    )
    assert container.writes_data(["--debug", "data", "prepare", "synth-few"])
    assert not container.writes_data(["all", "--profile", "smoke"])
    assert not container.writes_data(["data", "fetch", "x"])
    options = container.container_options(config, client=client, writable_data=True)
    seen = _probe(client, options)
    assert (seen["prepared"], seen["archives"]) == ("ok", "ok")
    assert seen["manifest"] == seen["data"] == "Read-only file system"
    assert (data / "prepared" / "probe").stat().st_uid == CALLER[0]


def test_compose_is_locked_down_like_bench_docker_run(cpu_image, client, workdirs) -> None:
    data, reports = workdirs
    env = {
        **os.environ,
        "BENCH_TF": "cpu",
        "BENCH_UID": str(CALLER[0]),
        "BENCH_GID": str(CALLER[1]),
        "BENCH_DATA": str(data),
        "BENCH_REPORTS": str(reports),
    }
    for folder in ("prepared", "archives"):  # as compose.yaml says: created by the user
        _owned_folder(data / folder)
    compose = [*_compose(), "-f", str(ROOT / "compose.yaml")]
    config = subprocess.run([*compose, "config"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert config.returncode == 0, config.stderr
    for service in ("bench", "prepare"):
        probe = subprocess.run(
            [*compose, "run", "--rm", "-T", "--entrypoint", "python", service, "-c", PROBE],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=300,
        )
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert seen["uid"] == CALLER[0] and seen["caps"]["CapEff"] == 0, seen
        assert seen["no_new_privs"] == 1
        assert seen["manifest"] == seen["root_fs"] == "Read-only file system", seen
        assert (seen["tmp"], seen["home"], seen["reports"]) == ("ok", "ok", "ok")
        writable = "ok" if service == "prepare" else "Read-only file system"
        assert seen["prepared"] == seen["archives"] == writable, (service, seen)
