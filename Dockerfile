# tagstream daemon image. Build: docker build -t tagstream .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /tagstream ./cmd/tagstream && mkdir -p /state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tagstream /tagstream
COPY rules.example.yaml /etc/tagstream/rules.yaml
# The MySQL checkpoint lives here; a volume mounted on it inherits the owner.
COPY --from=build --chown=65532:65532 /state /var/lib/tagstream
ENV TAGSTREAM_LISTEN=0.0.0.0:8080 TAGSTREAM_RULES=/etc/tagstream/rules.yaml TAGSTREAM_STATE_DIR=/var/lib/tagstream
EXPOSE 8080
ENTRYPOINT ["/tagstream"]
CMD ["run"]
