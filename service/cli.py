"""`edge-embed`: one console script, a subcommand per tool.

Subcommands import their package lazily so that `edge-embed serve` never imports the export
stack (torch, transformers, optimum), which the runtime install does not carry.
"""

from __future__ import annotations

import importlib
import sys

from edge_embed import __version__

SUBCOMMANDS = {
    "export": ("edge_embed.export.cli",
               "export a Hugging Face / sentence-transformers model to a bundle"),
    "quantize": ("edge_embed.quantize.cli",
                 "quantize a bundle (int8 for CPU, fp16 for GPU) and measure it"),
    "serve": ("edge_embed.service.serve", "serve bundles behind the OpenAI embeddings API"),
    "bench": ("edge_embed.bench.cli", "benchmark the service against baselines"),
    "embed": ("edge_embed.corpus.cli", "embed a whole corpus to Parquet, locally or on Ray"),
}
USAGE = "usage: edge-embed {" + ",".join(SUBCOMMANDS) + "} [options]\n\n" + "\n".join(
    f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()
) + "\n\nRun `edge-embed COMMAND --help` for a command's options.\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"edge-embed {__version__}")
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"edge-embed: unknown command '{name}'\n\n{USAGE}")
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    code: int = module.main(args[1:], prog=f"edge-embed {name}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
