from edge_embed.export.cli import main

raise SystemExit(main())
