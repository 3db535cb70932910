"""Central block feeds, the gateway side: client, manager, ledger, stats."""
