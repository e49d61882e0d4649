# Stand-in for redis:7.2: Debian's redis-server (7.0) on the Debian stand-in.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
CMD ["redis-server"]
