#!/bin/sh
# The official mariadb image's first start, reduced to what compose.yaml
# uses: root's password (from anywhere) and one database, set up by a
# server that listens on no TCP port, so that the healthcheck passes only
# once the real server is up.
set -eu
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld /var/lib/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
  mariadbd --user=mysql --skip-networking --socket=/run/mysqld/setup.sock &
  pid=$!
  for _ in $(seq 1 60); do mariadb-admin --socket=/run/mysqld/setup.sock ping --silent 2>/dev/null && break; sleep 1; done
  mariadb --socket=/run/mysqld/setup.sock -uroot <<SQL
CREATE USER 'root'@'%' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE}\`;
SQL
  kill "$pid"
  wait "$pid" || true
fi
exec mariadbd --user=mysql --bind-address=0.0.0.0
