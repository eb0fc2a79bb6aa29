from service.serve import main

raise SystemExit(main())
