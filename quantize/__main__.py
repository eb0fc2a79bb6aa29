from edge_embed.quantize.cli import main

raise SystemExit(main())
