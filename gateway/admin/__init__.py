"""The admin page (issue #14): its own listener (`admin.listen`), login, status, explain,
allow/deny into policies/local.yaml, block page reports. docs/admin.md says how to use it."""
