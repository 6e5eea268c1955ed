"""`python -m loadgen.bench.gateway_copy <gateway flags>`: one whole gateway that shares its ports with other
whole gateways (SO_REUSEPORT). The workers bench starts two on the same ports as its contender in which
nothing crosses between processes: what splitting the load over processes costs by itself on the machine.
Not a way to serve: each copy compiles every model, batches alone and counts only its own requests."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main(share_ports=True))
