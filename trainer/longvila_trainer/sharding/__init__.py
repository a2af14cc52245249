"""Two-stage MM-SP sharding: frames by count for the vision tower (frames), visual rows
re-sharded by token for the LLM with a gradient-carrying exchange (exchange), and the
globally shifted targets with their exact sharded loss (targets). Pure metadata plus thin
collectives; process groups are always passed in."""
