"""voltabuild's domain, packaged with every Lambda."""
