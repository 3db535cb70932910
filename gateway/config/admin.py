"""`admin:` the admin page's listener and files (gateway/admin/). Off unless the section is
written: a second web listener is something the operator asks for, never a default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.addresses import Address
from gateway.config.spec import STR, STRINGS, Key, Shape
from gateway.config.web import read_listen
from gateway.config.yamlconf import YDict, error_at, expect_mapping, expect_str

# 8080 is web.listen's default, 9153 metrics', 9154 the proxy's metrics: 8081 is free.
DEFAULT_PORT = 8081
ADMIN = Shape("admin", (
    Key("listen", STRINGS, "the admin page: one host:port or a list (dual stack: each is bound)",
        [f"127.0.0.1:{DEFAULT_PORT}"]),
    Key("password_file", STR, "written by `safegate admin passwd` (scrypt hash)",
        "STATE_DIR/admin.passwd"),
    Key("local_policy", STR, "the policy file the page's allow/deny rules are written to",
        "policies/local.yaml"),
), "the admin page (off unless this section is written; docs/admin.md)")


@dataclass(frozen=True)
class AdminConfig:
    """`admin:`; `password_file` is written by `safegate admin passwd`; the page's allow/deny
    rules go to `local_policy`, which is loaded with the other policy files."""

    listen: tuple[Address, ...]
    password_file: Path
    local_policy: Path


def parse_admin(doc: YDict, rel: Callable[[str], Path], state_dir: Path) -> AdminConfig | None:
    """None when gateway.yaml has no `admin:` section (no admin listener)."""
    if "admin" not in doc:
        return None
    admin = expect_mapping(doc.get("admin"), "admin", doc, "admin")
    ADMIN.check(admin)
    listen: tuple[Address, ...] = (("127.0.0.1", DEFAULT_PORT),)
    if "listen" in admin:
        listen = read_listen(admin["listen"], "admin.listen", admin, "listen", DEFAULT_PORT)
    password = state_dir / "admin.passwd"
    if "password_file" in admin:
        password = rel(expect_str(admin["password_file"], "admin.password_file", admin,
                                  "password_file"))
    local = rel("policies/local.yaml")
    if "local_policy" in admin:
        local = rel(expect_str(admin["local_policy"], "admin.local_policy", admin,
                               "local_policy"))
        if local.suffix not in (".yaml", ".yml"):
            raise error_at("admin.local_policy must name a .yaml file", None, admin,
                           "local_policy")
    return AdminConfig(listen, password, local)
