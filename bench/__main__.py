from .cli import main

raise SystemExit(main(prog="python -m edge_embed.bench"))
