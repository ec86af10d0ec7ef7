# mesh-controller: the destination service and the proxy-injector webhook.
# Built by docker/build, whose context holds the static (musl) binary; the image
# holds nothing else.
FROM scratch
COPY mesh-controller /mesh-controller
USER 2103:2103
EXPOSE 8086 8443
ENTRYPOINT ["/mesh-controller"]
