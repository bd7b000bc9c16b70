"""``lms ls | ps | load | unload``: downloaded models and loaded instances.

``ls`` never starts the daemon. With a daemon running it shows the daemon's catalog; without one
it reads the same listing itself (:func:`lms.modelfolder.read_entries`: the same keys, the same
header facts, no loaded instances), so ``lms ls --json`` has one shape either way.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lms import config, limits
from lms.cli import completers, render
from lms.errors import InvalidParameterError
from lms.modelfolder import read_entries
from lms.protocol import InstanceEntry, ModelEntry

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def register(app: typer.Typer, *, rich_help_panel: str) -> None:
    """Add this module's commands to the root app."""
    app.command("ls", rich_help_panel=rich_help_panel)(ls)
    app.command("ps", rich_help_panel=rich_help_panel)(ps)
    app.command("load", rich_help_panel=rich_help_panel)(load)
    app.command("unload", rich_help_panel=rich_help_panel)(unload)


def _announce(text: str) -> None:
    render.note(text)


# --- ls ---------------------------------------------------------------------------------------


def ls(json_output: JsonOption = False) -> None:
    """List downloaded models (never starts the daemon).

    Type, parameters, architecture, quantization, size and, with the daemon running, loaded
    instances.
    """
    from lms import client as control

    daemon = control.try_status()
    models: list[ModelEntry]
    if daemon is not None:
        control.check_version_matches(daemon)
        models = control.ControlClient().models()
    else:
        problems: list[str] = []
        models = read_entries(problems=problems)
        for problem in problems:
            render.warn(problem)
    if json_output:
        render.emit_json(models)
        return
    remote = [m for m in models if m.get("remote")]
    models = [m for m in models if not m.get("remote")]
    if remote:
        _remote_table(remote)
    if not models and remote:
        return
    if not models:
        render.note("you have not downloaded any models yet")
        folder = config.current_models_dir()
        if not folder.is_dir():
            render.warn(f"the models folder {folder} does not exist (setting models.dir)")
        render.say(f"hint: models live in {folder}; bring one in with: lms import FILE")
        return
    total = sum(int(m["size_bytes"]) for m in models)
    noun = "model" if len(models) == 1 else "models"
    render.result(f"You have {len(models)} {noun}, taking up {render.format_size(total)}.")
    render.result()
    rows = [_model_row(m) for m in models]
    render.result(render.table(["MODEL", "TYPE", "PARAMS", "ARCH", "QUANT", "SIZE", ""], rows))


def _remote_table(models: list[ModelEntry]) -> None:
    """Models of remote engines (``lms remote``), listed before the local ones."""
    noun = "model" if len(models) == 1 else "models"
    render.result(f"{len(models)} remote {noun} (lms remote list):")
    render.result()
    rows = [
        [m["key"], m.get("remote", "-"), str(m.get("max_context_length") or "-")] for m in models
    ]
    render.result(render.table(["MODEL", "REMOTE", "CONTEXT"], rows))
    render.result()


def _model_row(model: dict[str, Any] | ModelEntry) -> list[str]:
    loaded = len(model.get("loaded_instances") or [])
    marker = "" if not loaded else ("✓ LOADED" if loaded == 1 else f"✓ LOADED ({loaded})")
    return [
        str(model["key"]),
        str(model.get("type") or "-"),
        str(model.get("params_string") or "-"),
        str(model.get("architecture") or "-"),
        str(model.get("quantization") or "-"),
        render.format_size(model.get("size_bytes")),
        marker,
    ]


# --- ps ---------------------------------------------------------------------------------------


def ps(json_output: JsonOption = False) -> None:
    """List loaded instances: status, queued requests, context, TTL left (starts the daemon)."""
    from lms import client as control
    from lms import starter

    starter.ensure_daemon(announce=_announce)
    instances = sorted(control.ControlClient().instances(), key=lambda i: i["identifier"])
    if json_output:
        render.emit_json(instances)
        return
    if not instances:
        render.note("no model is loaded; to load one, run: lms load MODEL")
        return
    rows = [_instance_row(i) for i in instances]
    headers = ["IDENTIFIER", "MODEL", "MODE", "STATUS", "QUEUED", "SIZE", "CONTEXT", "TTL"]
    render.result(render.table(headers, rows))


def _instance_row(instance: InstanceEntry) -> list[str]:
    return [
        instance["identifier"],
        instance["model_key"],
        "embedding" if instance["type"] == "embedding" else "chat",
        str(instance["status"]).upper(),
        str(instance["queued"]),
        render.format_size(instance.get("size_bytes")),
        str(instance["context_length"]),
        render.format_ttl(instance.get("ttl_left_seconds"), instance.get("ttl_seconds")),
    ]


# --- load / unload ----------------------------------------------------------------------------


def load(
    model: Annotated[
        str,
        typer.Argument(
            help="Model key as lms ls shows it, a loaded instance's identifier, or a prefix of"
            " the model's path in the models folder (any case, with a /).",
            autocompletion=completers.models,
        ),
    ],
    context_length: Annotated[
        int | None,
        typer.Option(
            "--context-length",
            "-c",
            metavar="N",
            min=1,
            help="Context length in tokens (default: models.context_length).",
        ),
    ] = None,
    ttl: Annotated[
        int | None,
        typer.Option(
            "--ttl",
            metavar="SECONDS",
            min=1,
            help="Unload after this many idle seconds (at most 2592000, 30 days).",
        ),
    ] = None,
    identifier: Annotated[
        str | None,
        typer.Option(
            "--identifier",
            metavar="ID",
            help="Name of the instance in the API (default: the key, then <key>:2, <key>:3...);"
            " 1 to 128 printable characters, refused when already in use.",
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            metavar="N",
            min=1,
            max=16,
            help="Requests it serves at once, batched (default: models.parallel); more queue.",
        ),
    ] = None,
    draft_model: Annotated[
        str | None,
        typer.Option(
            "--draft-model",
            metavar="DRAFT",
            help="A model (key, as for MODEL) that guesses tokens for this one (speculative"
            " decoding): requests without their own draft_model use it, unless they turn"
            " speculation off. It must share the model's vocabulary.",
            autocompletion=completers.models,
        ),
    ] = None,
    embedding: Annotated[
        bool,
        typer.Option(
            "--embedding",
            help="Load it in embedding mode (for /v1/embeddings), as a separate instance"
            " named <key>:embedding (then <key>:embedding:2...); an embedding model's instance"
            " is named <key>.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Load a model into memory (starts the daemon); prints the instance identifier.

    With --embedding any model loads in embedding mode (mean pooling); embedding models always do.

    The first instance of a model is named by its key, later ones <key>:2, <key>:3 (the smallest
    number free); an llm in embedding mode is <key>:embedding, <key>:embedding:2.
    """
    from lms import client as control
    from lms import starter

    if ttl is not None:
        limits.check_ttl(ttl, "--ttl")
    if identifier is not None:
        limits.check_identifier(identifier, "--identifier")
    if draft_model is not None:
        limits.check_identifier(draft_model, "--draft-model")
        if embedding:
            raise InvalidParameterError(
                "--draft-model is for chat models; an instance in embedding mode takes none",
                param="--draft-model",
            )
    starter.ensure_daemon(announce=_announce)
    client = control.ControlClient()
    with render.spinner(f"Loading {model}..."):
        instance = client.load(
            model,
            context_length=context_length,
            ttl=ttl,
            identifier=identifier,
            embedding=embedding,
            parallel=parallel,
            draft_model=draft_model,
        )
    if json_output:
        render.emit_json(instance)
        return
    seconds = instance.get("load_time_seconds")
    size = render.format_size(instance.get("size_bytes"))
    render.note(
        f"loaded {instance['model_key']}"
        f"{' in embedding mode' if instance['type'] == 'embedding' else ''}"
        f" in {seconds:.2f} s ({size}, context {instance['context_length']})"
    )
    render.result(instance["identifier"])


def unload(
    identifier: Annotated[
        str | None,
        typer.Argument(
            help="Identifier of the instance (see lms ps).", autocompletion=completers.instances
        ),
    ] = None,
    all_instances: Annotated[
        bool, typer.Option("--all", "-a", help="Unload every loaded instance.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Unload an instance, or all of them (starts the daemon).

    Without an identifier, unloads the only loaded instance; with several loaded, says which.
    """
    from lms import client as control
    from lms import starter

    if identifier is not None and all_instances:
        raise InvalidParameterError("give an identifier or --all, not both")
    starter.ensure_daemon(announce=_announce)
    client = control.ControlClient()
    if identifier is None and not all_instances:
        loaded = [i["identifier"] for i in client.instances()]
        if not loaded:
            raise InvalidParameterError(
                "no model is loaded, so there is nothing to unload",
                hint="see what is loaded with: lms ps",
            )
        if len(loaded) > 1:
            raise InvalidParameterError(
                f"several models are loaded ({', '.join(sorted(loaded))}): say which one",
                hint="lms unload IDENTIFIER, or lms unload --all",
            )
        identifier = loaded[0]
    unloaded = client.unload(identifier, all=all_instances)
    if json_output:
        render.emit_json({"unloaded": unloaded})
        return
    if len(unloaded) == 1:
        render.note(f'unloaded "{unloaded[0]}"')
    elif not unloaded:
        render.note("no model was loaded")
    else:
        render.note(f"unloaded {len(unloaded)} models: {', '.join(unloaded)}")
