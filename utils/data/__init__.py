"""Data: the LUME benchmark's files (`lume`), the generated mini-LUME (`synthetic`) and how items become
training examples (`tokenization`). Imports only the infrastructure modules at the top of `utils/`."""
