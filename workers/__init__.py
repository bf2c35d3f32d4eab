"""medkit's processes: the Temporal worker, the embedded dev stack, and the client they share."""
