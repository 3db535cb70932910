"""Compliance: reports to regulators, RPZ export, self-probe and outside probe."""
