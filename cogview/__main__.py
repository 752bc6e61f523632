from cogview.cli import main

raise SystemExit(main())
