"""voltabuild's local stack: the whole service on one machine, without an AWS account."""
