"""The command layer: one module per `ddpm-zoo` command; the only place that parses arguments."""
