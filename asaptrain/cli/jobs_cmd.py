"""`asaptrain submit JOB` and `asaptrain jobs status|logs|stop|wait ID`: Ray jobs on a cluster.

Only parses and calls :mod:`asaptrain.submit`. The cluster address comes from --address, else
RAY_API_SERVER_ADDRESS / RAY_ADDRESS, else http://127.0.0.1:8265 (the dashboard of a local
`ray start --head`).
"""

from __future__ import annotations

import sys

import click

from asaptrain import submit as sub
from asaptrain.cli.groups import friendly_errors, jobs, main, store_options


def _address_option(fn):
    return click.option(
        "--address", default=None, metavar="URL",
        help="Ray dashboard address [default: $RAY_ADDRESS or http://127.0.0.1:8265].")(fn)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            raise sub.SubmitError("--env takes NAME=VALUE; one value has no '=' (not shown: it may be a secret)")
        name, value = pair.split("=", 1)
        env[name.strip()] = value
    return env


@main.command("submit", context_settings={"max_content_width": 100})
@click.argument("job", type=click.Choice(list(sub.JOB_SCRIPTS)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@_address_option
@store_options
@click.option("--region", default=None, help="S3 region passed to the job (AWS_REGION).")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="Extra non-secret environment variable for the job (repeatable); credentials are refused.")
@click.option("--submission-id", default=None, help="Job id to use instead of Ray's random one.")
@click.option("--entrypoint-gpus", type=click.FloatRange(min=0), default=None,
              help="GPUs reserved for the job's driver itself (Train workers reserve their own).")
@click.option("--python", "python", default="python", show_default=True, metavar="EXE",
              help="The interpreter as the cluster's nodes name it (e.g. /opt/venv/bin/python).")
@click.option("--no-wait", is_flag=True, help="Print the submission id and return without following the logs.")
@friendly_errors
def submit_cmd(job, args, address, store, s3_endpoint, region, env_pairs, submission_id, entrypoint_gpus,
               python, no_wait) -> None:
    """Submit JOB (train | tune | aggregate | experiment) to a Ray cluster and follow its logs.

    Runs `python jobs/SCRIPT.py [--store URI] [--s3-endpoint URL] ARGS...` (train.py,
    tune_hybrid.py, aggregate.py, experiment.py) with this project as the working directory.
    Arguments after `--` go to the job script, e.g.

    \b
        asaptrain submit train --store s3://bucket/asap -- --preset deblurgan-smoke

    S3 credentials are never sent with the job (job metadata is readable by anyone with dashboard
    access): the cluster's nodes must have them (environment, instance role, Kubernetes Secret).
    Exit code 0 only when the job SUCCEEDED.
    """
    address = sub.resolve_address(address)
    job_id = sub.submit(job, list(args), address=address, store=store, s3_endpoint=s3_endpoint,
                        region=region, env=_parse_env(env_pairs), submission_id=submission_id,
                        entrypoint_num_gpus=entrypoint_gpus, python=python)
    click.echo(f"submitted {job_id} to {address}")
    if no_wait:
        click.echo(f"follow: asaptrain jobs logs {job_id} --follow --address {address}")
        return
    _follow_and_exit(job_id, address)


def _follow_and_exit(job_id: str, address: str) -> None:
    try:
        state = sub.follow(job_id, address)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job keeps running. Stop it with: "
                   f"asaptrain jobs stop {job_id} --address {address}", err=True)
        sys.exit(130)
    color = "green" if state == "SUCCEEDED" else "red"
    click.secho(f"job {job_id} {state}", fg=color, err=True)
    sys.exit(0 if state == "SUCCEEDED" else 1)


@jobs.command("status")
@click.argument("job_id", metavar="ID")
@_address_option
@friendly_errors
def status_cmd(job_id, address) -> None:
    """Print the job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    click.echo(sub.status(job_id, address))


@jobs.command("logs")
@click.argument("job_id", metavar="ID")
@_address_option
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends (exit code as `submit`).")
@friendly_errors
def logs_cmd(job_id, address, follow) -> None:
    """Print the job's driver logs."""
    if follow:
        _follow_and_exit(job_id, sub.resolve_address(address))
    click.echo(sub.logs(job_id, address), nl=False)


@jobs.command("stop")
@click.argument("job_id", metavar="ID")
@_address_option
@friendly_errors
def stop_cmd(job_id, address) -> None:
    """Ask Ray to stop the job (its workers and trials are stopped with it)."""
    stopped = sub.stop(job_id, address)
    click.echo(f"stop requested for {job_id}" if stopped else f"{job_id} was not running")


@jobs.command("wait")
@click.argument("job_id", metavar="ID")
@_address_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds to wait before giving up.")
@friendly_errors
def wait_cmd(job_id, address, timeout_s) -> None:
    """Wait for the job to end; print its status; exit 0 only when it SUCCEEDED."""
    state = sub.wait_for_job(job_id, address, timeout_s=timeout_s)
    click.echo(state)
    sys.exit(0 if state == "SUCCEEDED" else 1)
