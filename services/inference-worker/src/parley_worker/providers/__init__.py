"""One module per provider protocol; each maps its SDK's errors to `ProviderError`."""
