"""Cost of one RRL check per reply (µs), the three cases of gateway/dns/rrl.py.

Run: .venv/bin/python bench/rrl_cost.py   (a measurement, not a test: numbers vary by machine)
"""

from __future__ import annotations

import timeit

import dns.message
import dns.rrset

from gateway.config.limits import RrlLimits
from gateway.dns.rrl import Rrl


def main(n: int = 200_000) -> None:
    out = dns.message.make_response(dns.message.make_query("www.example.test", "A"))
    out.answer.append(dns.rrset.from_text("www.example.test.", 60, "IN", "A", "192.0.2.1"))
    wire_out = out.to_wire()

    def cost(rrl: Rrl) -> float:
        return min(timeit.repeat(lambda: rrl.check("10.1.2.3", wire_out), number=n,
                                 repeat=5)) / n * 1e6

    cases = {
        "under the shared gate": Rrl(RrlLimits(responses_per_second=10**9,
                                               errors_per_second=10**9)),
        "counted per answer": Rrl(RrlLimits(responses_per_second=10**9, errors_per_second=1)),
        "disabled": Rrl(RrlLimits(enabled=False)),
    }
    for name, rrl in cases.items():
        print(f"RRL check, {name}: {cost(rrl):.2f} µs")


if __name__ == "__main__":
    main()
