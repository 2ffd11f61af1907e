"""Fixtures: a s3 server on a free loopback port in a temp dir, stopped at the end."""
