"""Central block feeds: the signed format, the publisher, and the gateway's client."""
