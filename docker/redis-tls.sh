#!/bin/sh
# redis-tls.sh DIR NAMES: the certificates of Redis's published TLS port,
# made once (what DIR already holds is kept):
#   ca.crt, ca.key          a CA of this deployment (give ca.crt to the
#                           machines whose workers join: PYRUNNER_REDIS_CA_FILE)
#   redis.crt, redis.key    Redis's certificate, for NAMES (comma-separated
#                           host names and addresses the workers dial)
#   client.crt, client.key  a client certificate the CA signed, for workers
#                           of a Redis that asks for one (PYRUNNER_REDIS_CERT_FILE)
# EC P-256, valid ten years. Used by compose's init and by the tests.
set -eu
dir=$1
names=${2:-localhost}
mkdir -p "$dir"
cd "$dir"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
  key ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=pyrunner redis CA" -out ca.crt
fi
san=
for n in $(echo "$names" | tr ',' ' '); do
  case $n in
    *[!0-9.]*) case $n in *:*) entry=IP:$n ;; *) entry=DNS:$n ;; esac ;;
    *) entry=IP:$n ;;
  esac
  san=${san:+$san,}$entry
done
# sign NAME CN EXTENSIONS: NAME.crt for NAME.key, signed by the CA.
sign() {
  key "$1.key"
  printf '%s\n' "$3" > "$1.ext"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
[ -s redis.crt ] || sign redis redis "subjectAltName=$san
extendedKeyUsage=serverAuth"
[ -s client.crt ] || sign client pyrunner-worker "extendedKeyUsage=clientAuth"
chmod 0444 ca.crt
