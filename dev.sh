#!/usr/bin/env bash
# callpath's two set-up commands, for a fresh Debian machine as root (see README.md):
#   bash dev.sh run     create .venv, install callpath, start it on the embedded default (SQLite, in-process state)
#   bash dev.sh test    also install the test peers (SIPp, ...) when missing, then run the whole test suite
# Extra arguments after `run` go to `callpath run`; after `test` they go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${CALLPATH_VENV:-.venv}
PY=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}

apt_install() {  # apt_install pkg... : install Debian packages that are missing (needs root)
    local missing=()
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then echo "dev.sh: please install: ${missing[*]}" >&2; return 1; fi
    echo "dev.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_python() {
    if ! command -v "$PY" >/dev/null || ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv python3-dev gcc
    fi
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "dev.sh: Python 3.11+ needed" >&2; exit 1; }
}

ensure_venv() {  # ensure_venv EXTRAS
    ensure_python
    # libopus: the media plane calls it directly (media/opus.py)
    ldconfig -p 2>/dev/null | grep -q "libopus.so.0" || apt_install libopus0
    # a C compiler and Python headers build the optional accelerators (sipcore._scan, media._g711)
    if [ "$PY" = /usr/bin/python3 ]; then
        { command -v gcc >/dev/null && [ -f "$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; } \
            || apt_install gcc python3-dev || echo "dev.sh: no compiler: using the pure-Python paths"
    fi
    # a venv made from another interpreter (say pyenv's, before Debian's PGO+LTO build was preferred) is rebuilt
    if [ -f "$VENV/pyvenv.cfg" ] && ! grep -q "^home = $(dirname "$(readlink -f "$(command -v "$PY")")")\$" "$VENV/pyvenv.cfg"; then
        echo "dev.sh: $VENV was made from another Python: recreating it with $PY"
        rm -rf "$VENV"
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    local stamp="$VENV/.installed$1"
    # reinstall when the metadata or a C accelerator's source changed (the .so files are built in place)
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
            || [ -n "$(find sipcore media \( -name '*.c' -o -name '*.h' \) -newer "$stamp" 2>/dev/null)" ]; then
        "$VENV/bin/pip" install -q -U pip
        "$VENV/bin/pip" install -q -e ".$1"
        touch "$stamp"
    fi
}

case "${1:-}" in
    run)
        shift
        ensure_venv ""
        exec "$VENV/bin/callpath" run "$@"
        ;;
    test)
        shift
        # Test peers: SIPp for the SIP integration tests; Node.js + npm for the JsSIP (browser SIP stack) test;
        # Chromium for the real-browser WebRTC test of the media bridge (tests/browser); coturn as a TURN relay;
        # Kamailio as the SIP carrier of the trunk tests (tests/integration/kamailio/carrier.cfg).
        # baresip and Linphone as real SIP phones (calls with tones checked both ways, transfers).
        command -v sipp >/dev/null || apt_install sip-tester
        { command -v node >/dev/null && command -v npm >/dev/null; } || apt_install nodejs npm
        command -v chromium >/dev/null || apt_install chromium
        command -v turnserver >/dev/null || apt_install coturn     # TURN for the relay-only browser test
        { command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ]; } || apt_install kamailio  # the carrier of the trunk tests
        command -v baresip >/dev/null || apt_install baresip-core # Debian's softphone, no GUI (tests/peers/baresip.py)
        command -v linphonec >/dev/null || apt_install linphone-cli # Linphone's console phone (tests/peers/linphone.py)
        ensure_venv "[test]"
        set +e
        "$VENV/bin/python" -m pytest -ra "$@"
        rc=$?
        set -e
        if [ $rc -eq 5 ]; then echo "dev.sh: pytest collected no tests: that is a failure" >&2; exit 1; fi
        exit $rc
        ;;
    *)
        echo "usage: bash dev.sh run [callpath run options] | bash dev.sh test [pytest options]" >&2
        exit 2
        ;;
esac
