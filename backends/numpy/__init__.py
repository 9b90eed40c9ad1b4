"""The NumPy backend: the dense reference that every other backend is compared with, op by op."""
