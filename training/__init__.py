"""How a model version is made: data → train → evaluate → export → parity → register."""
