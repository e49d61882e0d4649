# Stand-in for golang:1.26-bookworm (no registry here): the Debian stand-in
# with a C toolchain and the host's Go tree (the build context) copied in.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates git \
    && rm -rf /var/lib/apt/lists/*
COPY . /usr/local/go
ENV PATH=/usr/local/go/bin:/go/bin:$PATH GOPATH=/go
