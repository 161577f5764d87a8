from rustaid.cli import main

raise SystemExit(main())
