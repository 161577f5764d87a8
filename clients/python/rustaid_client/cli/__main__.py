from rustaid_client.cli import main

raise SystemExit(main())
