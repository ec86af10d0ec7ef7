# mesh-proxy: the sidecar, and (run as root with NET_ADMIN) its `mesh-proxy init` init
# container. Built by docker/build, whose context holds the static (musl) binary and
# proxy-rootfs/: iptables and the libraries it loads, from Debian's packages.
FROM scratch
COPY proxy-rootfs/ /
COPY mesh-proxy /usr/local/bin/mesh-proxy
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/local/bin/mesh-proxy"]
