"""Generated wire contract (package ``data_wire.v1``); the only code client and node share."""
