"""A small SSH transport over the system OpenSSH client.

Host-key checking always stays on (``StrictHostKeyChecking=yes``, never ``no`` or
``accept-new``), authentication is non-interactive, and every word of a remote command is quoted
with :func:`shlex.quote` before it reaches the remote shell.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgecnn.errors import RemoteError

# (stderr fragment, problem, fix) for ssh's exit status 255, most specific first
SSH_FAILURES = (
    ("Host key verification failed", "unknown or changed host key",
     "add the device's key to --known-hosts (ssh-keyscan); host-key checking stays on"),
    ("host key for", "unknown or changed host key", "check --known-hosts"),
    ("Permission denied", "authentication failed", "check --identity and the user name"),
    ("Connection refused", "connection refused", "is sshd running, and is --port right?"),
    ("timed out", "connection timed out", "check the address, network and --timeout"),
    ("Could not resolve hostname", "host unreachable (name does not resolve)",
     "check the host name"),
    ("No route to host", "host unreachable", "check the address and network"),
    ("Network is unreachable", "host unreachable", "check the address and network"),
)


@dataclass(frozen=True)
class SSHConfig:
    host: str  # [user@]host
    port: int | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise RemoteError(f"--host {self.host!r} is not a valid [user@]host")
        for option, value in (("--identity", self.identity), ("--known-hosts", self.known_hosts),
                              ("--ssh-config", self.ssh_config)):
            if value is not None:
                refuse_option_like(option, str(value))
        if self.timeout is not None and not 0 < self.timeout < float("inf"):
            raise RemoteError(f"--timeout {self.timeout:g}: give a number of seconds above 0")


def refuse_option_like(option: str, value: str) -> None:
    """ssh, scp and remote programs read a word starting with '-' as an option: refuse it."""
    if value.startswith("-") or "\n" in value or "\0" in value:
        raise RemoteError(f"{option} {value!r} could be read as an option or breaks the command "
                          "line; give a value that does not start with '-' (e.g. ./"
                          f"{value.lstrip('-')})")


class SSHClient:
    def __init__(self, config: SSHConfig) -> None:
        if shutil.which("ssh") is None:
            raise RemoteError("no ssh client on this machine; install OpenSSH (openssh-client)")
        self.config = config

    def base_args(self) -> list[str]:
        c = self.config
        args = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={max(1, int(c.timeout))}", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=2", "-o", "LogLevel=ERROR"]
        if c.ssh_config:
            args += ["-F", str(c.ssh_config)]
        if c.port:
            args += ["-p", str(c.port)]
        if c.identity:
            args += ["-i", str(c.identity), "-o", "IdentitiesOnly=yes"]
        if c.known_hosts:
            args += ["-o", f"UserKnownHostsFile={c.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        return args + ["--", c.host]  # nothing after the host is read as an ssh option

    def run(self, words: list[str], stdin: bytes | None = None, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run a remote command given as words; each word is shell-quoted."""
        command = " ".join(shlex.quote(w) for w in words)
        limit = timeout or self.config.timeout
        try:
            done = subprocess.run([*self.base_args(), command], input=stdin, capture_output=True,
                                  timeout=limit)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.config.host}: timed out after {limit:g} s "
                              "(raise --timeout if the device is slow)") from None
        if done.returncode == 255:
            raise self.failure(done.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise RemoteError(f"{self.config.host}: `{words[0]}` failed with status "
                              f"{done.returncode} ({detail[-1][:200] if detail else 'no output'})")
        return done

    def failure(self, stderr: str) -> RemoteError:
        for fragment, problem, fix in SSH_FAILURES:
            if fragment.lower() in stderr.lower():
                return RemoteError(f"{self.config.host}: {problem}; {fix}")
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed"
        return RemoteError(f"{self.config.host}: {last[:200]}")

    def upload(self, data: bytes, remote_path: str) -> None:
        """Copy bytes to a remote file through the SSH channel (no scp/sftp needed)."""
        self.run(["sh", "-c", 'cat > "$1"', "sh", remote_path], stdin=data)
