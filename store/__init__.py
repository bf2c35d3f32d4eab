"""medkit's memory across incidents: the action ledger that makes side effects idempotent."""
