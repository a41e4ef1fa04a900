"""`vip2scan submit -- CMD ...` and `vip2scan jobs status|logs ID`: any command as a Ray Job.

Token authentication: when a Ray cluster runs with token auth (Ray >= 2.5x's default for
`ray start --head` once a token exists), Ray's ``JobSubmissionClient`` attaches the
token only when this process has ``RAY_AUTH_MODE=token``. We set that mode when a token
is available from Ray's standard places (``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``) and let Ray's own loader read it; the
token itself never passes through this module and is never printed or logged. An
explicit ``RAY_AUTH_MODE=disabled`` is respected. Sending a token to a cluster without
auth is harmless (the dashboard ignores it).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vip2scan.jobs.config import ConfigOption, parse_key_values, parse_only
from vip2scan.jobs.errors import JobError, UsageError, click, is_secret_name, redact

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")

SUBMIT_EXAMPLE = (
    "Example: vip2scan submit --address http://head:8265 -- scan s3://lake/ "
    "--out s3://bucket/vip2scan --checkpoint s3://bucket/ckpt"
)
STATUS_EXAMPLE = "Example: vip2scan jobs status raysubmit_abc123 --address http://head:8265"
LOGS_EXAMPLE = "Example: vip2scan jobs logs raysubmit_abc123 --follow"

AddressOption = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray dashboard URL (default: $RAY_ADDRESS, else http://127.0.0.1:8265)."),
]


def ray_token_available() -> bool:
    """Whether Ray's standard token sources hold a token (without reading it here)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).expanduser().is_file()
    return (Path.home() / ".ray" / "auth_token").is_file()


def enable_token_auth_if_available() -> None:
    """Put this process in Ray's token mode when a token exists, unless the user chose a mode."""
    if os.environ.get("RAY_AUTH_MODE") or not ray_token_available():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config at import; refresh it so the new mode is seen.
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # an older Ray without this hook reads the env var itself
        pass


DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


def job_client(address: Optional[str]) -> Any:
    """A client of the cluster at ``address``, else $RAY_ADDRESS, else the local dashboard; a
    cluster that does not answer is one line naming the address tried and where it came from."""
    enable_token_auth_if_available()
    from ray.job_submission import JobSubmissionClient

    chosen, how = ((address, "--address") if address else
                   (os.environ["RAY_ADDRESS"], "$RAY_ADDRESS") if os.environ.get("RAY_ADDRESS") else
                   (DEFAULT_DASHBOARD, "the default; set --address or $RAY_ADDRESS"))
    try:
        return JobSubmissionClient(chosen)
    except ConnectionError as exc:
        raise JobError(f"no Ray cluster answers at {chosen} ({how}): {redact(str(exc))}") from None


def check_command_line(root: click.Command, argv: list[str]) -> None:
    """Parse the command to submit with the real CLI (``root``, the group `submit` runs
    under) so a typo fails here, not on the cluster."""
    if not argv:
        raise UsageError("nothing to submit: put the vip2scan command after '--', e.g. -- scan SOURCE ...")
    try:
        ctx = parse_only(root, argv)
    except UsageError as exc:
        raise UsageError(f"the command to submit is invalid: {exc.format_message()}") from None
    options = parse_key_values(ctx.params.get("storage_option") or [])
    refuse_secrets(options, "--storage-option in the submitted command")


def refuse_secrets(values: dict[str, Any], where: str) -> None:
    """A job's entrypoint and runtime_env are stored by the cluster and shown in its dashboard."""
    secret = sorted(k for k in values if is_secret_name(k))
    if secret:
        raise UsageError(f"{where} would store credentials ({', '.join(secret)}) in the cluster's job table; "
                         "give the cluster its own credentials (instance role, Kubernetes Secret, node env)")


def build_runtime_env(env: list[str] | None, working_dir: Optional[str], pip: list[str] | None) -> dict:
    """Ray runtime_env for the job. Its values are visible in the Ray dashboard: no secrets here."""
    env_vars = {"PYTHONUNBUFFERED": "1"}  # so `jobs logs --follow` sees progress as it happens
    extra = parse_key_values(env, what="--env")
    refuse_secrets(extra, "--env")
    env_vars.update({k: str(v) for k, v in extra.items()})
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def _follow(client: Any, job_id: str) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())


def _wait_for_end(client: Any, job_id: str, poll_s: float = 1.0) -> str:
    while True:
        status = str(client.get_job_status(job_id))
        if status.split(".")[-1] in TERMINAL_STATES:
            return status.split(".")[-1]
        time.sleep(poll_s)


def submit(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(metavar="-- COMMAND ...", help="The vip2scan command to run.")],
    address: AddressOption = None,
    env: Annotated[Optional[list[str]], typer.Option(
        "--env", help="KEY=VALUE environment variable for the job (repeatable; visible in the dashboard).")] = None,
    working_dir: Annotated[Optional[str], typer.Option(
        help="Local directory or URI shipped to the cluster as the job's working_dir.")] = None,
    pip: Annotated[Optional[list[str]], typer.Option(
        help="Extra pip requirement installed for the job (repeatable).")] = None,
    job_id: Annotated[Optional[str], typer.Option(help="Submission id to use (default: Ray picks one).")] = None,
    num_cpus: Annotated[Optional[float], typer.Option(help="CPUs reserved for the job's driver.")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the logs until the job ends; exit 0 only if it SUCCEEDED.")] = False,
    config: ConfigOption = None,
) -> None:
    """Submit any vip2scan command to a Ray cluster as a Ray Job and print its id."""
    argv = [a for a in command]
    if argv and argv[0] == "vip2scan":
        argv = argv[1:]
    check_command_line(ctx.find_root().command, argv)
    runtime_env = build_runtime_env(env, working_dir, pip)  # refusals before contacting the cluster
    client = job_client(address)
    submission_id = client.submit_job(
        entrypoint=shlex.join(["vip2scan", *argv]),
        submission_id=job_id,
        runtime_env=runtime_env,
        metadata={"tool": "vip2scan", "command": argv[0]},
        entrypoint_num_cpus=num_cpus,
    )
    typer.echo(submission_id)
    if not wait:
        sys.stderr.write(f"follow it with: vip2scan jobs logs {submission_id} --follow"
                         + (f" --address {address}" if address else "") + "\n")
        return
    _follow(client, submission_id)
    status = _wait_for_end(client, submission_id)
    typer.echo(f"{submission_id}: {status}", err=True)
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def status(
    job_id: Annotated[str, typer.Argument(help="Submission id printed by `vip2scan submit`.")],
    address: AddressOption = None,
    config: ConfigOption = None,
) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    info = job_client(address).get_job_info(job_id)
    state = str(info.status).split(".")[-1]
    message = f"  {info.message}" if info.message else ""
    typer.echo(f"{job_id}\t{state}{message}")


def logs(
    job_id: Annotated[str, typer.Argument(help="Submission id printed by `vip2scan submit`.")],
    address: AddressOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    config: ConfigOption = None,
) -> None:
    """Print a submitted job's logs."""
    client = job_client(address)
    if follow:
        _follow(client, job_id)
    else:
        sys.stdout.write(client.get_job_logs(job_id))


def register(app: typer.Typer) -> None:
    # Everything after `--` belongs to the submitted command, options included.
    app.command(
        "submit",
        epilog=SUBMIT_EXAMPLE,
        context_settings={"allow_interspersed_args": False},
    )(submit)
    jobs_app = typer.Typer(help="Inspect Ray Jobs started with `vip2scan submit`.", no_args_is_help=True,
                           epilog=STATUS_EXAMPLE)
    jobs_app.command("status", epilog=STATUS_EXAMPLE)(status)
    jobs_app.command("logs", epilog=LOGS_EXAMPLE)(logs)
    app.add_typer(jobs_app, name="jobs")
