"""Submit `aimctl` commands to a Ray cluster as Ray jobs (Jobs API), safely.

What travels with a job
- the project directory as the runtime env's ``working_dir`` (without ``EXCLUDES``), so the cluster runs
  exactly the code you have checked out, dirty edits included;
- the non-secret environment the pipeline needs (``PASSTHROUGH_ENV``: tracking URI, S3 endpoint and
  region) through ``runtime_env.env_vars``, plus what ``--env`` names.

What never travels
- credentials. Names that look like secrets (``is_secret_name``) are refused in ``--env``, values of
  such variables found in the command are refused, URIs with a password in them are refused, and
  everything printed (entrypoints, logs) goes through ``redact``. Workers get S3/MLflow credentials
  from the cluster itself: an instance profile (``infra/aws/cluster.yaml``) or a Kubernetes Secret /
  IRSA service account (``infra/kuberay/``).

Submission ids are ``aim-<command>[-<experiment stem>]-<digest>-<n>``: ``digest`` is the first 8 hex
digits of sha256(argv, git commit, hash of uncommitted changes), so the same command on the same code
always gets the same prefix (find every attempt of it with ``aimctl jobs list --prefix``); ``n`` is the
smallest counter (1, 2, ...) whose id the cluster does not know yet, so resubmitting never collides.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "DRIVER_RESOURCE",
    "PASSTHROUGH_ENV",
    "EXCLUDES",
    "DEFAULT_ADDRESS",
    "SubmitError",
    "JobRequest",
    "is_secret_name",
    "secret_values",
    "redact",
    "check_no_secrets",
    "build_request",
    "submission_base",
    "next_submission_id",
    "resolve_driver_resource",
    "cluster_resources",
    "project_root",
    "git_state",
    "submit",
    "follow",
    "wait",
    "TERMINAL",
]

# Custom resource the cluster configs advertise on the (on-demand) head node only: job entrypoints
# (the `aimctl` process, i.e. the pretrain/sweep driver) request 1 unit so they land there and never on
# a spot GPU node that may vanish. infra/aws/cluster.yaml and infra/kuberay/*.yaml must match this name.
DRIVER_RESOURCE = "TRAIN_DRIVER"

DEFAULT_ADDRESS = "http://127.0.0.1:8265"

# Non-secret variables forwarded to the job when set locally.
PASSTHROUGH_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_DISABLE_TELEMETRY",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)

# Not uploaded with the working directory (gitignore syntax, as Ray's runtime_env `excludes`).
EXCLUDES = [
    ".venv/",
    ".git/",
    "runs/",
    "mlflow.db",
    "mlflow.db-journal",
    "mlartifacts/",
    "mlruns/",
    "reports/",
    "/data/",
    "/demo/",
    "build/",
    "*.egg-info/",
    "__pycache__/",
    ".pytest_cache/",
    "*.pyc",
]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

_SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.IGNORECASE
)
_ALWAYS_SECRET = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PGPASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
}


class SubmitError(ValueError):
    """A submission refused before anything was sent (one-line message for the CLI)."""


def is_secret_name(name: str) -> bool:
    """True for variable / config key names that hold credentials."""
    return name.upper() in _ALWAYS_SECRET or bool(_SECRET_NAME.search(name))


def secret_values(env: dict[str, str] | None = None, min_len: int = 4) -> list[str]:
    """Values of the credential-like variables in `env` (default: os.environ), longest first."""
    env = os.environ if env is None else env
    vals = {v for k, v in env.items() if is_secret_name(k) and v and len(v) >= min_len}
    return sorted(vals, key=len, reverse=True)


def redact(text: str, env: dict[str, str] | None = None) -> str:
    """`text` with every credential value from the environment and every URI password replaced by ***."""
    for v in secret_values(env):
        text = text.replace(v, "***")
    return re.sub(r"(\w+://[^/\s:@]+:)[^@\s/]+@", r"\1***@", text)


def _uri_has_password(value: str) -> bool:
    try:
        return bool(urlsplit(value).password) if "://" in value else False
    except ValueError:
        return False


def check_no_secrets(argv: list[str], env_vars: dict[str, str], env: dict[str, str] | None = None) -> None:
    """Raise SubmitError if the command or the job's env_vars would carry a credential."""
    env = os.environ if env is None else env
    for name in env_vars:
        if is_secret_name(name):
            raise SubmitError(
                f"--env {name}: credentials never travel with a job; give the cluster an "
                "instance role (AWS) or a Kubernetes Secret / service account (KubeRay) instead"
            )
    for name, value in env_vars.items():
        if _uri_has_password(value):
            raise SubmitError(
                f"{name} holds a URI with a password; put the password in the cluster's own "
                "secret store and pass the URI without it"
            )
    secrets = secret_values(env)
    for tok in argv:
        key = tok.partition("=")[0].lstrip("-")
        if "=" in tok and is_secret_name(key.rsplit(".", 1)[-1]):
            raise SubmitError(f"the command sets {key!r}: credentials never go on a job's command line")
        if _uri_has_password(tok.partition("=")[2] or tok):
            raise SubmitError("the command contains a URI with a password; pass it without the password")
        if any(s in tok for s in secrets):
            raise SubmitError(
                "the command contains the value of a credential variable from your environment; "
                "credentials never go on a job's command line"
            )


def project_root() -> Path:
    """The directory holding pyproject.toml and pipelines/ (this checkout)."""
    return Path(__file__).resolve().parent.parent


def git_state(root: Path) -> tuple[str, str]:
    """(commit sha or 'nogit', 'clean' | 'dirty-<12 hex of the uncommitted changes>')."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").decode().strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit", "clean"
    try:
        diff = git("diff", "HEAD", "--binary")
        untracked = git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
    except (OSError, subprocess.SubprocessError):
        return commit, "clean"
    h = hashlib.sha256(diff)
    for name in sorted(u for u in untracked if u):
        p = root / name.decode(errors="replace")
        h.update(name + b"\0")
        try:
            if p.is_file() and p.stat().st_size < 64 * 2**20:
                h.update(hashlib.sha256(p.read_bytes()).digest())
        except OSError:
            pass
    dirty = bool(diff) or any(untracked)
    return commit, (f"dirty-{h.hexdigest()[:12]}" if dirty else "clean")


def _slug(text: str, limit: int = 24) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].strip("-") or "cmd"


def normalize_command(command: list[str]) -> list[str]:
    """Drop a leading 'aimctl' (both `submit -- aimctl pretrain x` and `submit -- pretrain x` work)."""
    command = list(command)
    if command and Path(command[0]).name == "aimctl":
        command = command[1:]
    if not command:
        raise SubmitError("no command given: aimctl submit [OPTIONS] -- COMMAND [ARGS]...")
    if command[0].startswith("-"):
        raise SubmitError(f"the command must start with an aimctl sub-command, not {command[0]!r}")
    if command[0] in ("submit", "jobs"):
        raise SubmitError(f"'aimctl {command[0]}' runs on your machine, not as a job")
    return command


def submission_base(command: list[str], commit: str, dirty: str) -> str:
    """Deterministic id prefix: aim-<command>[-<experiment stem>]-<8 hex of argv + code state>."""
    words = [command[0]]
    if command[0] == "model" and len(command) > 1:
        words = command[:2]
    stem = next((Path(a).stem for a in command[1:] if a.endswith((".yaml", ".yml"))), None)
    name = "-".join(_slug(w, 16) for w in words)
    if stem:
        name += "-" + _slug(stem)
    digest = hashlib.sha256("\0".join([*command, commit, dirty]).encode()).hexdigest()[:8]
    return f"aim-{name}-{digest}"


def next_submission_id(base: str, existing: set[str]) -> str:
    n = 1
    while f"{base}-{n}" in existing:
        n += 1
    return f"{base}-{n}"


@dataclass
class JobRequest:
    """Everything `JobSubmissionClient.submit_job` gets, minus the submission id."""

    command: list[str]
    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    base_id: str
    entrypoint_resources: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def build_request(
    command: list[str],
    *,
    extra_env: list[str] | None = None,
    python: str = "python",
    driver_resource: str | None = DRIVER_RESOURCE,
    root: Path | None = None,
    env: dict[str, str] | None = None,
) -> JobRequest:
    """Validate and assemble a job for `aimctl COMMAND...`. Raises SubmitError before anything is sent.

    `extra_env`: `NAME` (value from the local environment) or `NAME=VALUE` items for --env.
    The entrypoint runs `python -m pipelines.cli` so the uploaded working_dir's code is what runs.
    """
    env = dict(os.environ if env is None else env)
    root = (root or project_root()).resolve()
    command = normalize_command(command)
    env_vars = {k: env[k] for k in PASSTHROUGH_ENV if env.get(k)}
    for item in extra_env or []:
        name, sep, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SubmitError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if is_secret_name(name):
            check_no_secrets([], {name: ""}, env)
        if not sep:
            if name not in env:
                raise SubmitError(f"--env {name}: not set in your environment")
            value = env[name]
        env_vars[name] = value
    check_no_secrets(command, env_vars, env)
    command, warnings = _project_paths(command, root, Path.cwd())
    uri = env_vars.get("MLFLOW_TRACKING_URI", "")
    if not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        warnings.append(
            "MLFLOW_TRACKING_URI is not a tracking server: the job will track into a file on the "
            "node that runs it. Point it at the shared server (see infra/mlflow/README.md)."
        )
    commit, dirty = git_state(root)
    entrypoint = shlex.join([python, "-m", "pipelines.cli", *command])
    runtime_env = {"working_dir": str(root), "excludes": list(EXCLUDES), "env_vars": env_vars}
    metadata = {
        "aim.command": " ".join(command[:2] if command[0] == "model" else command[:1]),
        "aim.git_commit": commit,
        "aim.git_state": dirty,
        "aim.submitted_by": "aimctl submit",
    }
    res = {driver_resource: 1.0} if driver_resource else {}
    return JobRequest(
        command, entrypoint, runtime_env, metadata, submission_base(command, commit, dirty), res, warnings
    )


def cluster_resources(address: str) -> dict[str, float]:
    """Total resources of the cluster's alive nodes, read through the dashboard's State API."""
    from ray.util.state import list_nodes

    total: dict[str, float] = {}
    for n in list_nodes(address=address, detail=True, raise_on_missing_output=False):
        if n.state == "ALIVE":
            for k, v in (n.resources_total or {}).items():
                total[k] = total.get(k, 0.0) + float(v)
    return total


def resolve_driver_resource(address: str, wanted: str | None) -> tuple[str | None, str | None]:
    """('auto' -> DRIVER_RESOURCE if the cluster advertises it, else None), plus a note for the user."""
    if wanted != "auto":
        return (wanted or None), None
    try:
        have = cluster_resources(address)
    except Exception as e:  # noqa: BLE001 - the submission itself will report an unreachable cluster
        return None, f"could not read the cluster's resources ({type(e).__name__}); the driver is not pinned"
    if have.get(DRIVER_RESOURCE, 0) >= 1:
        return DRIVER_RESOURCE, None
    return None, (
        f"the cluster advertises no {DRIVER_RESOURCE} resource (infra/ clusters put it on the head); "
        "the job's driver goes wherever Ray places it"
    )


_QUIET = (
    "ray._private.runtime_env.packaging",
    "ray._private.runtime_env.working_dir",
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
)


def _project_paths(command: list[str], root: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """The job runs in the uploaded project root: make YAML paths relative to it where they can be."""
    out, warnings = [], []
    for arg in command:
        if arg.endswith((".yaml", ".yml")) and "=" not in arg:
            p = Path(arg)
            full = (p if p.is_absolute() else cwd / p).resolve()
            if full.is_relative_to(root) and full.exists():
                arg = str(full.relative_to(root))
            elif p.is_absolute():
                warnings.append(
                    f"{arg} is outside the project: the job sees it only if the cluster shares this "
                    "filesystem (put experiment files under experiments/)"
                )
            elif not (root / p).exists():
                warnings.append(f"{arg} is not in the project directory that is uploaded")
        out.append(arg)
    return out, warnings


def client(address: str):
    import logging

    from ray.job_submission import JobSubmissionClient

    for name in _QUIET:  # per-file "ignoring upload" chatter and websocket notices
        logging.getLogger(name).setLevel(logging.ERROR)

    return JobSubmissionClient(address)


def submit(req: JobRequest, address: str, attempts: int = 5, agent_wait_s: float = 90.0) -> str:
    """Submit under the next free `<base>-<n>` id; returns the submission id.

    Retries (a) with the next counter when another submitter took the id between listing and submitting,
    (b) for up to `agent_wait_s` while the head's job agent is still starting ("No available agent")."""
    import time

    c = client(address)
    existing = {j.submission_id for j in c.list_jobs() if j.submission_id}
    last: Exception | None = None
    deadline = time.monotonic() + agent_wait_s
    tries = 0
    while tries < attempts:
        sid = next_submission_id(req.base_id, existing)
        try:
            return c.submit_job(
                entrypoint=req.entrypoint,
                submission_id=sid,
                runtime_env=req.runtime_env,
                metadata={**req.metadata, "aim.base_id": req.base_id},
                entrypoint_resources=req.entrypoint_resources or None,
            )
        except RuntimeError as e:
            last = e
            if "already exists" in str(e):  # someone took the id: try the next one
                existing.add(sid)
                tries += 1
            elif "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2.0)
            else:
                raise
    raise SubmitError(f"could not find a free submission id after {attempts} tries: {last}")


def follow(address: str, submission_id: str, write=print) -> str:
    """Stream the job's logs (redacted) until it ends; returns the final status name."""
    import asyncio

    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(submission_id):
            write(redact(chunk.rstrip("\n")))

    asyncio.run(tail())
    return wait(address, submission_id, c=c)


def wait(address: str, submission_id: str, timeout_s: float | None = None, c=None) -> str:
    """Poll until the job is SUCCEEDED / FAILED / STOPPED (or `timeout_s` passes); returns the status name."""
    import time

    c = c or client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(c.get_job_status(submission_id).value)
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(1.0)
