# syntax=docker/dockerfile:1
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/fhirgate ./cmd/fhirgate \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fhirgate /fhirgate
COPY --from=build --chown=nonroot:nonroot /out/data /data
USER nonroot:nonroot
ENV FHIRGATE_ADDR=0.0.0.0:8080 FHIRGATE_DATA_DIR=/data
EXPOSE 8080
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/fhirgate", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/fhirgate"]
CMD ["serve"]
