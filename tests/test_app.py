"""app.py's flags: safe defaults, and no serving on the network without a password."""
from __future__ import annotations

import app


def test_defaults_are_loopback_and_auto_device():
    args = app.parse_args([])
    assert (args.host, args.port, args.device, args.dtype) == ("127.0.0.1", 7860, "auto", "auto")


def test_non_loopback_host_without_auth_refuses_to_start(capsys):
    assert app.main(["--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--auth" in err and "0.0.0.0" in err


def test_non_loopback_host_with_auth_is_allowed():
    assert app.check_exposure("0.0.0.0", "me:secret") is None
    assert app.check_exposure("localhost", None) is None
