"""What the tests share; no test module imports another test module.

`wait` is the one way to wait for an event (wait_for / async_wait_for); `builders` makes the
Profile and Resolver objects unit tests need; `data` holds the shared gateway test
configuration (policy, lists) and fixture data; `certs` makes throwaway certificates.
Real servers on loopback: `unbound` starts Debian's unbound with known test data; `procs`
allocates ports, writes gateway.yaml and runs SafeGate as a real process; `publisher`,
`dnsdist`, `monitoring` (Prometheus, alert names) and `origin` (the proxy tests' web origin)
do the same for their parts; `feeds`, `hotline`, `cli`, `feedschema`, `fuzzing`, `dnssec` and
`dashboards` hold what the tests of one part share.
"""
