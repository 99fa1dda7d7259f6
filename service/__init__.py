"""The HTTP front end of the SDEdit service. Imports no torch: the API container stays small."""
