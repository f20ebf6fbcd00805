"""A real MIT Kerberos KDC for the GSSAPI tests: Debian's ``krb5-kdc`` and ``krb5-admin-server``
(``make setup`` installs them), run as this user in a folder of its own, on a free port, with
its own realm and principals. Nothing of it touches the system's Kerberos configuration: every
tool and every client reads this folder's ``krb5.conf`` through ``KRB5_CONFIG``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REALM = "RISKSTREAM.TEST"


def _tool(name: str) -> str:
    # the KDC's tools live in sbin, which a non-root PATH often lacks
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if path:
        return path
    raise RuntimeError(
        f"`{name}` not found: the Kerberos tests need Debian's krb5-kdc and krb5-admin-server "
        "(`make setup` installs them as root)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalKdc:
    """A KDC for :data:`REALM` on 127.0.0.1 (TCP and UDP on one port); :meth:`principal` adds a
    principal and writes its keytab."""

    def __init__(self, home: Path, *, max_life: str = "1h") -> None:
        self.home = home
        self.port = _free_port()
        self.krb5_conf = home / "krb5.conf"
        self.kdc_conf = home / "kdc.conf"
        self.max_life = max_life
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What every Kerberos tool and client of this realm needs in its environment."""
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf)}

    @property
    def client_env(self) -> dict[str, str]:
        """What a client of this realm needs: the realm's ``krb5.conf``."""
        return {"KRB5_CONFIG": str(self.krb5_conf)}

    def log(self) -> str:
        """The KDC's log: one line per ticket issued (``AS_REQ``, ``TGS_REQ``) or refused."""
        path = self.home / "kdc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> LocalKdc:
        self.home.mkdir(parents=True, exist_ok=True)
        h = self.home
        self.krb5_conf.write_text(
            f"""[libdefaults]
    default_realm = {REALM}
    dns_lookup_realm = false
    dns_lookup_kdc = false
    rdns = false
    dns_canonicalize_hostname = false
    udp_preference_limit = 1
    ticket_lifetime = {self.max_life}
[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{self.port}
    }}
[domain_realm]
    127.0.0.1 = {REALM}
    localhost = {REALM}
"""
        )
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
    kdc_ports = {self.port}
    kdc_tcp_ports = {self.port}
[realms]
    {REALM} = {{
        database_name = {h}/principal
        key_stash_file = {h}/stash
        acl_file = {h}/kadm5.acl
        max_life = {self.max_life}
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}
[logging]
    kdc = FILE:{h}/kdc.log
"""
        )
        (h / "kadm5.acl").write_text("")
        env = {**os.environ, **self.env}
        self._run([_tool("kdb5_util"), "create", "-s", "-r", REALM, "-P", "master-key-for-tests"], env)
        with (h / "krb5kdc.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [_tool("krb5kdc"), "-n", "-r", REALM],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (h / "krb5kdc.out").read_text(errors="replace")
                    self.stop()
                    raise RuntimeError(f"the KDC did not start:\n{log}") from None
                time.sleep(0.1)

    def principal(self, name: str) -> Path:
        """Add ``name`` (``service/host`` or a user) with a random key; return its keytab."""
        keytab = self.home / (name.replace("/", "_") + ".keytab")
        env = {**os.environ, **self.env}
        kadmin = _tool("kadmin.local")
        self._run([kadmin, "-r", REALM, "-q", f"addprinc -randkey {name}@{REALM}"], env)
        self._run([kadmin, "-r", REALM, "-q", f"ktadd -k {keytab} {name}@{REALM}"], env)
        return keytab

    def change_key(self, name: str) -> None:
        """Give ``name`` a new random key: keytabs written before no longer authenticate."""
        env = {**os.environ, **self.env}
        self._run([_tool("kadmin.local"), "-r", REALM, "-q", f"cpw -randkey {name}@{REALM}"], env)

    @staticmethod
    def _run(cmd: list[str], env: dict[str, str]) -> None:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0 or "error" in res.stderr.lower():
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{res.stdout}{res.stderr}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
