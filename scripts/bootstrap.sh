# Shared set-up for ./run-tests and ./run-demo: sourced, not run.
# Installs what a fresh Debian machine lacks: memcached (tests only), a
# virtualenv in .venv and this package with the extras the caller asks for.

VENV="${MEMCACHEDLOCK_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"

say() { printf '==> %s\n' "$*" >&2; }

ensure_memcached() {
    if command -v memcached >/dev/null 2>&1; then
        return 0
    fi
    say "memcached not found: installing it from Debian's packages"
    if [ "$(id -u)" != 0 ]; then
        echo "memcached is missing and this is not root: apt-get install memcached" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq memcached >/dev/null
    # Debian starts a system memcached on 127.0.0.1:11211; the tests start their own.
}

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            say "python3-venv missing: installing it from Debian's packages"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    local stamp="$VENV/.installed-$extras"
    if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
        say "installing unimr.memcachedlock[$extras] into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        # setuptools' build backend warns about every editable install of a src/ layout: noise here.
        PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/python" -m pip install -q -e ".[$extras]"
        touch "$stamp"
    fi
}
