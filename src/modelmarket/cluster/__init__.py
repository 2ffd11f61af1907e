"""Scale-out on real engines, all on loopback from one home: the servers the platform runs on (PostgreSQL, NATS
JetStream, SeaweedFS's S3, Envoy) and `modelmarket cluster up|status|down|chaos`."""
