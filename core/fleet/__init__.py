"""Fleet and federated learning domain: devices, keys, rounds, updates, the model catalog."""
