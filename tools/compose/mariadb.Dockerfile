# Stand-in for mariadb:11.4: Debian's MariaDB (10.11) on the Debian stand-in,
# with an entrypoint that does what the official one does with
# MARIADB_ROOT_PASSWORD and MARIADB_DATABASE.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends mariadb-server mariadb-client \
    && rm -rf /var/lib/apt/lists/* /var/lib/mysql && mkdir -p /var/lib/mysql
COPY mariadb-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
