# mesh-identity: the CA that issues the proxies' mTLS certificates.
# Built by docker/build, whose context holds the static (musl) binary; the image
# holds nothing else.
FROM scratch
COPY mesh-identity /mesh-identity
USER 2103:2103
EXPOSE 8080 9990
ENTRYPOINT ["/mesh-identity"]
