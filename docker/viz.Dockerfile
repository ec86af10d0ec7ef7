# mesh-viz: golden metrics per edge, workload and route: API and dashboard.
# Built by docker/build, whose context holds the static (musl) binary; the image
# holds nothing else.
FROM scratch
COPY mesh-viz /mesh-viz
USER 2103:2103
EXPOSE 8084
ENTRYPOINT ["/mesh-viz"]
