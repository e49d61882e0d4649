# Stand-in for debian:bookworm-slim: the debootstrapped root (ROOTFS_IMAGE)
# with this machine's CA certificates, which its Go module proxy and
# Debian mirror are reached through. Context: the host's CA files.
ARG ROOTFS_IMAGE
FROM ${ROOTFS_IMAGE}
COPY local/ /usr/local/share/ca-certificates/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
