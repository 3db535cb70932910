"""Shared fixture data: the standard gateway test configuration (policy, lists) that most
end-to-end tests run, smaller variants some modules share, and the ledger schema of the
reports' fixtures. One place, so a test module never imports another test module."""

from __future__ import annotations

POLICY = """\
tiers:
  kids: {block: [adult, gambling], answer: blockpage}
  teens: {block: [adult], answer: nxdomain}
  zero: {block: [adult], answer: "null"}
  staff: {block: []}
networks:
  - {name: kids-v4, cidrs: ["127.0.0.1/32"], tier: kids, deny: ["games.test"],
     allow: ["ok.adult-site.test"]}
  - {name: teens-v6, cidrs: ["::1/128"], tier: teens}
  - {name: zero-net, cidrs: ["127.0.0.3/32"], tier: zero}
  - {name: staff-net, cidrs: ["127.0.0.4/32"], tier: staff}
"""


LISTS = {
    "adult.txt": "# test list\nadult-site.test\nadult.example\n",
    "gambling.hosts": "0.0.0.0 gamble.test\n127.0.0.1 localhost\n",
    "csam.rpz": ("$TTL 60\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"
                 "csam-test.invalid CNAME .\n*.csam-test.invalid CNAME .\n"),
}


LISTS_YAML = """\
categories:
  adult:
    - {path: adult.txt, format: domains}
  gambling:
    - {path: gambling.hosts, format: hosts}
  csam:
    - {path: csam.rpz, format: rpz}
"""



# DoH/DoT tests (test_doh_dot, test_doh_behind_nginx): a token maps DoH clients to a tier.
DOH_POLICY = """\
tiers:
  kids: {block: [adult, gambling], answer: blockpage}
  teens: {block: [adult], answer: nxdomain}
  staff: {block: []}
networks:
  - {name: kids-v4, cidrs: ["127.0.0.1/32"], tier: kids}
  - {name: staff-net, cidrs: ["127.0.0.4/32"], tier: staff}
tokens:
  - {token: "k7f3q9-teen", tier: teens}
"""
DOH_LISTS_YAML = """\
categories:
  adult:
    - {path: adult.txt, format: domains}
  gambling:
    - {path: gambling.txt, format: domains}
"""
DOH_LISTS = {"adult.txt": "adult-site.test\n", "gambling.txt": "gamble.test\n"}
DOH_TOKEN = "k7f3q9-teen"


# Trusted frontends and subscribers (test_frontends_e2e, test_subscribers_feed).
FRONTENDS_POLICY = """\
tiers:
  kids: {block: [adult, gambling], answer: nxdomain}
  teens: {block: [adult], answer: nxdomain}
  staff: {block: []}
networks:
  - {name: frontends, cidrs: ["127.0.0.2/32"], tier: staff}
  - {name: isp, cidrs: ["127.0.8.0/24"], tier: teens}
  - {name: lan, cidrs: ["127.0.0.3/32"], tier: staff}
"""
FRONTENDS_LISTS_YAML = """\
categories:
  adult: [{path: adult.txt, format: domains}]
  gambling: [{path: gambling.txt, format: domains}]
"""
FRONTENDS_LISTS = {"adult.txt": "adult.example\n", "gambling.txt": "gamble.test\n"}
