"""What users run beside the proxy: the sender simulator, the demo backend, the outbox and lookup tools, and the
wire builders they share. Only the command line imports this package."""
