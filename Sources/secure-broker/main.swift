print("secure-broker: not yet")
