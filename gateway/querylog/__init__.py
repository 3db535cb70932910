"""The query log (issue #14): off by default, on per network (`query_log:` in the policy),
written off the query path in batches, client addresses only as a salted hash whose salt
changes every day. docs/admin.md describes its privacy design."""
