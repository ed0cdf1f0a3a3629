"""EKAGen's expert knowledge base: prior (PKS), retrieved (RKS) and instance-level knowledge."""
