"""The optional HTTP(S) filtering proxy (issue 5): mitmproxy driven as a library, own process."""
