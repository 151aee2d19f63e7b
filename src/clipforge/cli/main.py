"""``clipforge <command> ...``: one command for every entry point.

    clipforge --help                                  # the commands
    clipforge train experiment=clip_demo trainer.max_epochs=2
    clipforge train --help                            # Hydra's own help: config groups, --cfg job, -m ...
    clipforge cra --encoder <run>/encoder --data captions.json --val_fraction 0.2

Each command is a module of :mod:`clipforge.cli` with a ``main``; only the chosen one is imported, so listing the
commands loads no model library. Hydra commands (``train``, ``eval``, ``generate``, ``pipeline``) take Hydra's
override syntax exactly as before (``key=value``, ``group=option``, ``-m``, ``--cfg job``); the others take
their own flags. ``clipforge <command> --help`` is the command's own help.

The former console scripts (``clipforge-train``, ``clipforge-eval`` with its ``cra`` form, ``clipforge-generate``,
``clipforge-pipeline``, ``clipforge-data``, ``clipforge-aitqe``, ``clipforge-cli``, ``clipforge-export-cli``)
stay for one release as aliases of their command (:data:`ALIASES`): same arguments, a one-line note on stderr.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["ALIASES", "COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """A ``clipforge`` command: the module whose ``main`` runs it and a one-line summary.

    Attributes:
        module: module under :mod:`clipforge.cli` holding ``main``.
        summary: the line ``clipforge --help`` shows.
        hydra: a Hydra application (``main()`` reads ``sys.argv``); otherwise ``main(argv)`` takes the arguments.
    """

    module: str
    summary: str
    hydra: bool = False


COMMANDS: dict[str, Command] = {
    "train": Command("train", "fit, then evaluate the best checkpoint", hydra=True),
    "eval": Command("eval", "validate or test a checkpoint on any dataset", hydra=True),
    "generate": Command("generate", "captions, scores, embedding caches: resumable sharded jobs", hydra=True),
    "pipeline": Command("pipeline", "recap -> enhance -> llm2clip -> train -> eval -> report", hydra=True),
    "data": Command("data", "inspect a source (rows, captions, bad input); split a COCO file by image id"),
    "cra": Command("cra", "caption retrieval accuracy of a text encoder on caption groups"),
    "aitqe": Command("aitqe", "score one image-caption pair with an AITQE-format model (the seed's flags)"),
    "eval-pairs": Command("eval_pairs", "true / negative caption pairs of a source, to measure an enhancer"),
    "longtext": Command("longtext", "a long-caption benchmark (ShareGPT4V-1k, Urban-1k, DOCCI) as JSONL"),
    "classnames": Command("classnames", "LLM class-name embeddings for zero-shot classification"),
    "convert": Command("convert", "released LLM2CLIP checkpoints -> clipforge weights / encoder folders"),
    "cli": Command("lightning_cli", "LightningCLI over the same classes (fit --config run.cli.yaml)"),
    "export-cli": Command("export_cli", "write the LightningCLI YAML of a Hydra composition"),
}
"""Every command, in the order ``clipforge --help`` lists them."""

ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "clipforge-train": ("train", {}),
    "clipforge-eval": ("eval", {"cra": "cra"}),
    "clipforge-generate": ("generate", {}),
    "clipforge-pipeline": ("pipeline", {}),
    "clipforge-data": ("data", {}),
    "clipforge-aitqe": ("aitqe", {}),
    "clipforge-cli": ("cli", {}),
    "clipforge-export-cli": ("export-cli", {}),
}
"""Former console scripts -> ``(command, {first argument: command it selected})``; kept for one release."""


def usage() -> str:
    """The text of ``clipforge --help``."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: clipforge <command> [arguments]",
        "",
        "Turn noisy web image-text data into better vision-language models (recap, enhance, llm2clip).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()),
        "",
        "Hydra commands (train, eval, generate, pipeline) take overrides: key=value, group=option, -m, --cfg job.",
        "`clipforge <command> --help` shows a command's own options.",
    ]
    return "\n".join(lines)


def _exit_status(result: object) -> int:
    """A ``main``'s result as an exit status: its integer, else 0 (it returned normally)."""
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run(name: str, argv: Sequence[str]) -> int:
    """Run command ``name`` with the arguments after it; returns the exit status.

    Raises:
        KeyError: ``name`` is not a command.
    """
    command = COMMANDS[name]
    module = importlib.import_module(f"clipforge.cli.{command.module}")
    prog = f"clipforge {name}"
    saved = sys.argv
    sys.argv = [prog, *argv]  # Hydra parses sys.argv; argparse takes its usage line from sys.argv[0]
    try:
        return _exit_status(module.main() if command.hydra else module.main(list(argv)))
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> int:
    """``clipforge <command> [arguments]``; returns the exit status (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from clipforge import __version__

        print(f"clipforge {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean `clipforge {close[0]}`?" if close else ""
        print(f"error: unknown command {name!r}{hint} (`clipforge --help` lists them)", file=sys.stderr)
        return 2
    return run(name, rest)


def alias(script: str) -> Callable[[], int]:
    """The console entry of a former script: its command, with a note on stderr naming the new form."""
    command, by_first_argument = ALIASES[script]

    def entry() -> int:
        argv = sys.argv[1:]
        name, rest = command, argv
        if argv and argv[0] in by_first_argument:
            name, rest = by_first_argument[argv[0]], argv[1:]
            old = f"{script} {argv[0]}"
        else:
            old = script
        print(
            f"note: `{old}` is now `clipforge {name}`; the old name goes in the next release", file=sys.stderr
        )
        return run(name, rest)

    entry.__name__ = entry.__qualname__ = script.replace("-", "_")
    return entry


clipforge_train = alias("clipforge-train")
clipforge_eval = alias("clipforge-eval")
clipforge_generate = alias("clipforge-generate")
clipforge_pipeline = alias("clipforge-pipeline")
clipforge_data = alias("clipforge-data")
clipforge_aitqe = alias("clipforge-aitqe")
clipforge_cli = alias("clipforge-cli")
clipforge_export_cli = alias("clipforge-export-cli")


if __name__ == "__main__":
    raise SystemExit(main())
