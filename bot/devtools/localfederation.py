"""Two or three throwaway Synapses that federate with each other over loopback only.

Each server is a ``LocalSynapse`` (client API over plain HTTP, as the rest of the test
suite uses it) plus a TLS federation listener on 127.0.0.1 with a self-signed
certificate. Server names are ``127.0.0.1:PORT``: an IP literal with an explicit port
is contacted directly (no .well-known, no SRV, no DNS), which is what lets Synapse
federate with no network at all. Certificates are not verified, loopback is allowed
(``ip_range_blacklist: []``), keys are fetched from the servers themselves
(``trusted_key_servers: []``), and ``federation_domain_whitelist`` names only the
servers of the group: nothing here contacts an address off this machine.

A server can run with a wrong clock: ``clock_offset_ms`` at start, or
``set_clock_offset`` at any time (it takes effect at the next stamp, no restart). A
``sitecustomize`` put first on that Synapse's ``PYTHONPATH`` shifts
``synapse.util.clock.Clock.time_msec``, which Synapse stamps ``origin_server_ts`` and
receipt ``ts`` with, by the offset in a file of its work directory. That server then behaves as
a remote server with a fast or slow clock: the stamps it makes and the times it compares
them with are wrong together. Twisted's reactor keeps the true time, so timers and
timeouts still work when the offset changes. No system package (faketime) needed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bot.devtools.localsynapse import LocalSynapse, find_free_port
from bot.matrix.files import write_secret

CLOCK_FILE_ENV = "LETHE_TEST_CLOCK_FILE"

# Loaded by the Synapse process at interpreter start: once synapse.util.clock is
# imported, its Clock.time_msec gets the offset (re-read whenever the file changes).
# Clock.time, which rate limiters use, keeps the true time: a clock moved back
# would otherwise make them refuse every request.
_SITECUSTOMIZE = f'''"""Written by bot.devtools.localfederation: shift this Synapse's clock."""
import importlib.abc
import importlib.machinery
import os
import sys

_FILE = os.environ.get("{CLOCK_FILE_ENV}")
_cached = [0, None]  # offset in ms, the file's (inode, mtime) when read


def _offset():
    # A stat per call (microseconds): a new offset counts from the next stamp on, so a
    # test never races a cache.
    try:
        st = os.stat(_FILE)
        mark = (st.st_ino, st.st_mtime_ns)
    except OSError:
        return 0
    if mark != _cached[1]:
        try:
            with open(_FILE) as fh:
                _cached[0] = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            _cached[0] = 0
        _cached[1] = mark
    return _cached[0]


class _ShiftClock(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "synapse.util.clock":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            true_msec = module.Clock.time_msec
            module.Clock.time_msec = lambda self: true_msec(self) + _offset()

        spec.loader.exec_module = patched
        return spec


if _FILE:
    sys.meta_path.insert(0, _ShiftClock())
'''


def _self_signed(cert_path: Path, key_path: Path) -> None:
    """A certificate for 127.0.0.1, valid long before and after now (a server whose
    clock is shifted must still find it valid)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_secret(key_path, key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii"), secure_parent=False)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class FederatedSynapse(LocalSynapse):
    """A LocalSynapse named ``127.0.0.1:FEDPORT`` with a TLS federation listener there.

    ``peers`` (server names) are the only servers it federates with; set them before
    ``start`` (``LocalFederation`` does). ``clock_offset_ms`` shifts its clock."""

    def __init__(
        self,
        workdir: Path,
        *,
        clock_offset_ms: int = 0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.federation_port = find_free_port()
        super().__init__(
            workdir, server_name=f"127.0.0.1:{self.federation_port}", extra_config=extra_config
        )
        self.clock_offset_ms = clock_offset_ms
        self.peers: tuple[str, ...] = ()

    @property
    def _tls_cert_path(self) -> Path:
        return self.workdir / "federation.crt"

    @property
    def _tls_key_path(self) -> Path:
        return self.workdir / "federation.key"

    @property
    def _site_dir(self) -> Path:
        return self.workdir / "clockshift"

    @property
    def _clock_file(self) -> Path:
        return self.workdir / "clock_offset_ms"

    def build_config(self) -> dict[str, Any]:
        config = super().build_config()
        config["listeners"] = [
            *config["listeners"],
            {
                "port": self.federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["federation", "keys"], "compress": False}],
            },
        ]
        config.update(
            {
                "tls_certificate_path": str(self._tls_cert_path),
                "tls_private_key_path": str(self._tls_key_path),
                "federation_verify_certificates": False,
                # Loopback is blocked by default; nothing else is ever contacted.
                "ip_range_blacklist": [],
                "ip_range_whitelist": ["127.0.0.1"],
                "trusted_key_servers": [],
                "federation_domain_whitelist": [self.server_name, *self.peers],
                # Send to a peer again at once after a failure (e.g. while it starts).
                "federation": {
                    "destination_min_retry_interval": 100,
                    "destination_max_retry_interval": 2000,
                },
            }
        )
        config.update(self._extra_config)
        return config

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._tls_cert_path.exists():
            _self_signed(self._tls_cert_path, self._tls_key_path)
        self._site_dir.mkdir(exist_ok=True)
        (self._site_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self._clock_file.write_text(str(self.clock_offset_ms))
        super()._write_config()

    def process_env(self) -> dict[str, str] | None:
        env = dict(os.environ)
        env[CLOCK_FILE_ENV] = str(self._clock_file)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self._site_dir), *filter(None, [env.get("PYTHONPATH")])]
        )
        return env

    def set_clock_offset(self, offset_ms: int) -> None:
        """Shift this server's clock by ``offset_ms`` from now on (0: the true time);
        a running server follows from its next timestamp on."""
        self.clock_offset_ms = offset_ms
        if self.workdir.exists():
            tmp = self._clock_file.with_suffix(".tmp")
            tmp.write_text(str(offset_ms))
            tmp.replace(self._clock_file)  # never a half-written number

    @contextmanager
    def clock_offset(self, offset_ms: int) -> Iterator[None]:
        """``with hs.clock_offset(-60_000):`` this server's clock is 60 s slow inside."""
        before = self.clock_offset_ms
        self.set_clock_offset(offset_ms)
        try:
            yield
        finally:
            self.set_clock_offset(before)


class LocalFederation:
    """``count`` FederatedSynapses that know each other; ``servers[i]`` is server i+1."""

    def __init__(
        self,
        workdir: Path,
        count: int = 2,
        *,
        clock_offsets_ms: Sequence[int] = (),
    ) -> None:
        offsets = [*clock_offsets_ms, *([0] * count)][:count]
        self.servers = [
            FederatedSynapse(Path(workdir) / f"hs{i + 1}", clock_offset_ms=offsets[i])
            for i in range(count)
        ]
        names = tuple(s.server_name for s in self.servers)
        for server in self.servers:
            server.peers = tuple(n for n in names if n != server.server_name)

    def __getitem__(self, index: int) -> FederatedSynapse:
        return self.servers[index]

    def __len__(self) -> int:
        return len(self.servers)

    def start(self, timeout: float = 90.0) -> None:
        """Start every server, in parallel (each takes a few seconds)."""
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(self.servers)) as pool:
            for future in [pool.submit(s.start, timeout) for s in self.servers]:
                future.result()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    @contextmanager
    def running(self) -> Iterator[LocalFederation]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

