"""What producer and consumer share: schemas, settings, the backend contract, both backends."""
