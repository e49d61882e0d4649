#!/usr/bin/env bash
# Installs what pyrunner needs on a fresh Debian machine, from Debian's
# packages: a Python with numpy/pandas/matplotlib (for /usr/bin/python3),
# pytest, bubblewrap, redis-server, PyJWT (for the auth tests) and
# chromium (headless, for the dashboard's tests). It does
# nothing when everything is already there.
set -euo pipefail
need=()
/usr/bin/python3 -c 'import numpy, pandas, matplotlib, scipy' 2>/dev/null || need+=(python3-numpy python3-pandas python3-matplotlib python3-scipy)
/usr/bin/python3 -c 'import pytest' 2>/dev/null || need+=(python3-pytest)
/usr/bin/python3 -c 'import jwt' 2>/dev/null || need+=(python3-jwt)
command -v redis-server >/dev/null || need+=(redis-server)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v chromium >/dev/null || need+=(chromium)   # the dashboard's browser tests
# clients/python's tests: installed into a virtualenv offline, a notebook run by nbclient
/usr/bin/python3 -c 'import requests, setuptools, wheel, venv, ensurepip' 2>/dev/null || need+=(python3-requests python3-setuptools python3-wheel python3-venv)
/usr/bin/python3 -c 'import ipykernel, jupyter_client, nbclient, nbformat' 2>/dev/null || need+=(python3-ipykernel python3-jupyter-client python3-nbclient python3-nbformat)
if [ "${1:-}" = bench ]; then # make bench's baselines: a Jupyter kernel, pandas.read_sql on MariaDB
  /usr/bin/python3 -c 'import ipykernel, jupyter_client' 2>/dev/null || need+=(python3-ipykernel python3-jupyter-client)
  /usr/bin/python3 -c 'import pymysql' 2>/dev/null || need+=(python3-pymysql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
