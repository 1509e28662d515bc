"""Sippy's b2bua_simple with one UDP worker, for the back-to-back comparison in benchmarks/sip/run.py.

Runs in Sippy's own virtualenv (benchmarks/.venv-sippy, made by run.py), not callpath's:

    SIPLOG_BEND=none benchmarks/.venv-sippy/bin/python benchmarks/sip/sippy_b2bua.py \
        -f -l 127.0.0.1 -p PORT -n 127.0.0.1:UAS_PORT

The arguments are b2bua_simple's (-f foreground, -l listen address, -p port, -n next hop: every INVITE
is re-originated there). Two settings differ from running ``b2bua_simple`` as installed:

- ``Udp_server_opts.nworkers = 1`` (Sippy's default is 3 receive/send thread pairs on SO_REUSEPORT
  sockets): with three sender threads the 180 and the 200 of one call leave in either order, and SIPp's
  UAC fails a call that gets its 180 after the 200. One worker keeps the order and mirrors the one UDP
  worker of the Kamailio configuration and callpath's one event loop.
- ``SIPLOG_BEND=none`` (set by run.py, not here): Sippy otherwise writes every SIP message to stderr.
"""
from __future__ import annotations

import os
import sys

from sippy.Udp_server import Udp_server_opts


def main() -> int:
    Udp_server_opts.nworkers = int(os.environ.get("SIPPY_NWORKERS", "1"))
    from sippy.b2bua_simple import main_func

    sys.argv[0] = "b2bua_simple"
    return main_func() or 0


if __name__ == "__main__":
    sys.exit(main())
