"""Starting `hsrl serve` processes in tests."""

import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(env: str, port: int, *flags: str) -> list[str]:
    """The command line of `hsrl serve` for `env` on a loopback port."""
    return [sys.executable, "-m", "hsrl.cli", "serve", "--env", env, "--port", str(port), *flags]


def start_serve(env: str, port: int, *flags: str, environ=None, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(serve_command(env, port, *flags), stdout=stdout, stderr=subprocess.STDOUT, env=environ)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server process, and kill it if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
