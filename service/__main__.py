from edge_embed.service.serve import main

raise SystemExit(main())
