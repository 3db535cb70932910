"""The DNS side: wire format, the query chain, cache, upstreams and transports."""
